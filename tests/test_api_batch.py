"""CSV batch predictions through the REST API on the real serving path (Spark, score_batch, a PipelineModel):
a small file answered at once equals POST /predict, a large one runs as a job in chunks to a result file with one
row per input row, bad rows get reasons and unreadable files a 422 naming the line."""

import csv
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from test_serving import year_model

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.watcher import ChampionWatcher

KEY = {"X-API-Key": "test-key"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Raw used_cars rows as the simulator writes them (strings, messy formats), without the target."""
    d = tmp_path_factory.mktemp("batch-sim")
    path = write_batch(SimConfig("used_cars", 40, test_share=0.0, broken_share=0.0, seed=5), 1, d, None)
    with open(path, newline="", encoding="utf-8") as f:
        # one line per row, so the test knows each row's line number (multi-line fields are read fine too)
        out = [{k: v.replace("\n", " ") for k, v in r.items() if k != "price"} for r in csv.DictReader(f)]
    return [r for r in out if r["year"].strip()][:12]


def _client(spark, tmp_path, **kw) -> TestClient:
    settings = ApiSettings(data_root=str(tmp_path / "data"), home=tmp_path / "home", publish=False,
                           key_hashes=frozenset({key_hash("test-key")}), datasets=("used_cars",),
                           wait_seconds=600, **kw)  # a loaded 2-core machine can take minutes per Spark call
    model = year_model(1.0)  # prediction = the cleaned year
    platform = Platform(settings, spark=spark,
                        watcher_for=lambda spec: ChampionWatcher(lambda: "4", lambda v: model, poll_seconds=60))
    return TestClient(create_app(settings, platform), headers=KEY)


def _ready(c: TestClient) -> None:
    deadline = time.monotonic() + 60
    while c.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, c.get("/ready").text
        time.sleep(0.1)


def _csv(rows: list[dict], ragged_at: int | None = None) -> bytes:
    cols = list(rows[0])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for i, r in enumerate(rows):
        w.writerow([r.get(c, "") for c in cols][:-3] if i == ragged_at else [r.get(c, "") for c in cols])
    return buf.getvalue().encode()


def _post(c, body: bytes, **headers):
    return c.post("/datasets/used_cars/predict/batch", content=body, headers={"Content-Type": "text/csv", **headers})


def test_small_file_is_answered_at_once_as_predict_answers(spark, tmp_path, rows):
    sample = [dict(r) for r in rows[:5]]
    for i, r in enumerate(sample):
        r["request_id"] = f"r-{i}" if i % 2 == 0 else ""  # rows 1 and 3 get ids from the call
    sample[2]["year"] = "nineteen"
    with _client(spark, tmp_path) as c:
        # unreadable files and wrong bodies: refused before any scoring, naming the line
        for body, says in [(b"", "line 1: no header row"), (b"a,b\n1,2\n", "line 1: no column of used_cars"),
                           (b"year,year\n1,2\n", "duplicate header columns ['year']"),
                           (b"year,mileage\n2015,10\n2016,\x0012\n", "line 3: a NUL byte"),
                           (b"year,mileage\n2015,10\n\"2016,12\n", "line 3: not readable as CSV"),
                           (b"year,mileage\n2015,10\n\"20\"16,12\n", "line 3: not readable as CSV"),
                           (b"year,mileage\n2015,10\n2016,\xff\xfe\n", "not UTF-8")]:
            r = _post(c, body)
            assert r.status_code == 422 and says in r.json()["detail"], (body, r.text)
        r = c.post("/datasets/used_cars/predict/batch", files={"file": ("a.csv", b"year\n2015\n")})
        assert r.status_code == 415 and "--data-binary" in r.json()["detail"]
        assert c.post("/datasets/nope/predict/batch", content=b"year\n1\n").status_code == 404
        _ready(c)

        body = _csv(sample, ragged_at=4)
        r = _post(c, body)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
        got = list(csv.DictReader(io.StringIO(r.text)))
        assert list(got[0]) == ["request_id", "prediction", "probability", "model_version", "status", "reason"]
        assert len(got) == 5 and got[0]["request_id"] == "r-0" and got[1]["request_id"].endswith("-2")
        assert got[1]["request_id"].startswith("batch-") and got[4]["reason"].startswith("line 6: ")

        as_json = _post(c, body, Accept="application/json").json()
        assert (as_json["rows"], as_json["scored"], as_json["rejected"]) == (5, 3, 2)
        direct = c.post("/datasets/used_cars/predict", json={"rows": [
            dict(r, request_id=f"p-{i}") for i, r in enumerate(sample[:4])]}).json()["results"]
        for csv_row, json_row, want in zip(got, as_json["results"], direct, strict=False):
            assert csv_row["status"] == json_row["status"] == want["status"]
            if want["status"] == "scored":
                assert float(csv_row["prediction"]) == json_row["prediction"] == want["prediction"]
                assert csv_row["model_version"] == json_row["model_version"] == want["model_version"] == "4"
            else:  # the scorer's own reason, as /predict gives it
                assert csv_row["reason"] == json_row["reason"] == want["reason"] and "year" in want["reason"]


def test_large_file_runs_as_a_job_in_chunks(spark, tmp_path, rows):
    sample = [dict(r) for r in rows]
    for i, r in enumerate(sample):
        r["request_id"] = "dup" if i in (0, 3) else ""  # one id twice: both rows are scored, as on Kafka
    sample[5]["year"] = "--"
    with _client(spark, tmp_path, batch_direct_rows=5, max_rows=8) as c:
        _ready(c)
        r = _post(c, _csv(sample, ragged_at=9))
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["rows_total"] == 12 and job["status"] in ("queued", "running")
        url = f"/datasets/used_cars/predict/batch/{job['job_id']}"
        assert r.headers["location"] == url
        deadline = time.monotonic() + 300
        while (status := c.get(url).json())["status"] not in ("done", "failed"):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status["status"] == "done", status
        assert (status["rows_done"], status["scored"], status["rejected"]) == (12, 10, 2)
        assert status["result_url"] == f"{url}/result"
        r = c.get(status["result_url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        got = list(csv.DictReader(io.StringIO(r.text)))
        assert len(got) == 12  # result rows = input rows, in order
        assert got[0]["request_id"] == got[3]["request_id"] == "dup"
        assert got[1]["request_id"] == f"{job['job_id']}-2" and got[11]["request_id"] == f"{job['job_id']}-12"
        assert "year" in got[5]["reason"] and got[9]["reason"].startswith("line 11: ")
        for i, row in enumerate(got):
            if i not in (5, 9):
                assert row["status"] == "scored" and float(row["prediction"]) == float(sample[i]["year"])
        assert not (tmp_path / "home" / "batch" / job["job_id"] / "input.csv").exists()

        # a job an earlier API process left unfinished reads as failed, not as running forever
        old = tmp_path / "home" / "batch" / "batch-00000000000000aa"
        old.mkdir()
        (old / "status.json").write_text(json.dumps(dict(job, job_id=old.name, status="running")))
        stale = c.get(f"/datasets/used_cars/predict/batch/{old.name}").json()
        assert stale["status"] == "failed" and "interrupted" in stale["error"]
        r = c.get(f"/datasets/used_cars/predict/batch/{old.name}/result")
        assert r.status_code == 409 and "failed" in r.json()["detail"]
        assert c.get("/datasets/used_cars/predict/batch/batch-0000000000000000").status_code == 404
        assert c.get("/datasets/used_cars/predict/batch/..%2Fx").status_code in (404, 422)
