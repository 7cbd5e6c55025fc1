"""The REST API against a real MLflow server and registry: readiness, predictions through the serving core with
per-row DLQ reasons, a swap under load, a champion that fails to load while the old one keeps serving, API keys
(never logged), body/row limits and the rate limit."""

import dataclasses
import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from ml_platform.local.loadgen import stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.train.registry import Tracker
from tests.test_serving import register, year_model

KEY, OTHER_KEY = "test-key-0123456789", "second-key-abcdef"


def wait_for(cond, seconds=60.0, what="condition"):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"{what} not met in {seconds:.0f} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(spark, specs, mlflow_server, tmp_path_factory):
    """A dataset `t_api` (the used_cars spec) with champion v1 = 2 * year, in a real MLflow registry."""
    home = tmp_path_factory.mktemp("api")
    spec = dataclasses.replace(specs["used_cars"], name="t_api",
                               serving=dataclasses.replace(specs["used_cars"].serving, poll_seconds=0.3))
    tracker = Tracker(mlflow_server.uri)
    v1 = register(spark, tracker, spec.name, year_model(2.0))
    write_batch(SimConfig("used_cars", 40, test_share=0.5, broken_share=0.0, seed=5), 1, home / "land",
                home / "test")
    rows = [r for _, r in stream_rows(home / "test")][:6]
    return spec, tracker, v1, rows, home


def make_client(spark, served, mlflow_server, **overrides):
    spec, tracker, _, _, home = served
    settings = ApiSettings(data_root=str(home / "data"), home=home, tracking_uri=mlflow_server.uri,
                           key_hashes=frozenset({key_hash(KEY), key_hash(OTHER_KEY)}), publish=False,
                           **overrides)
    return TestClient(create_app(settings, Platform(settings, spark=spark, specs={spec.name: spec})))


@pytest.fixture(scope="module")
def client(spark, served, mlflow_server):
    with make_client(spark, served, mlflow_server) as c:
        c.headers["X-API-Key"] = KEY
        wait_for(lambda: c.get("/ready").status_code == 200, what="/ready")
        yield c


def test_health_ready_and_datasets(client, served):
    spec, _, v1, _, _ = served
    assert client.get("/health", headers={"X-API-Key": ""}).json()["status"] == "ok"
    ready = client.get("/ready").json()
    assert ready == {"ready": True, "datasets": {spec.name: {"ready": True, "model_version": v1, "error": None}}}
    # a readiness probe (Kubernetes, a load balancer) has no key: it gets the answer alone; a wrong key is refused
    keyless = client.get("/ready", headers={"X-API-Key": ""})
    assert (keyless.status_code, keyless.json()) == (200, {"ready": True})
    assert client.get("/ready", headers={"X-API-Key": "not-a-key"}).status_code == 401
    assert client.get("/datasets").json() == [{"name": spec.name, "task": "regression", "target": "price",
                                              "ready": True, "model_version": v1}]
    assert "/datasets/{dataset}/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_cleans_raw_text_and_gives_dlq_reasons_per_row(client, served):
    spec, _, v1, rows, _ = served
    good = [dict(r, request_id=f"p-{i}") for i, r in enumerate(rows[:3])]
    bad_year = dict(rows[3], request_id="p-bad-year", year="not a year")
    bad_id = dict(rows[4], request_id="has space")
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": good + [bad_year, bad_id]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["scored"], body["rejected"]) == (3, 2)
    for i, res in enumerate(body["results"][:3]):
        assert res["status"] == "scored" and res["request_id"] == f"p-{i}" and res["model_version"] == v1
        assert res["prediction"] == pytest.approx(2.0 * float(rows[i]["year"]))
    year_reason, id_reason = body["results"][3], body["results"][4]
    assert year_reason["status"] == "rejected" and year_reason["row"] == 3
    assert "year" in year_reason["reason"] and year_reason["dlq_record"]["reason"] == year_reason["reason"]
    assert id_reason["row"] == 4 and id_reason["reason"].startswith("invalid request_id 'has space'")
    # rows without a request_id or event_time get them
    bare = {k: v for k, v in rows[5].items() if k not in ("request_id", "event_time")}
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": [bare]})
    only = r.json()["results"][0]
    assert only["request_id"].startswith("rest-") and only["prediction"] == pytest.approx(2.0 * float(bare["year"]))


def test_bad_input_is_a_clear_4xx(client, served):
    spec = served[0]
    r = client.post("/datasets/nope/predict", json={"rows": [{"year": "2011"}]})
    assert r.status_code == 404 and "unknown dataset 'nope'" in r.json()["detail"]
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": [{"year": "2011"}, "not an object"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows", 1]
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": []})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows"]
    r = client.post(f"/datasets/{spec.name}/predict", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": [{"request_id": "a"}, {"request_id": "a"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows", 1, "request_id"]


def test_api_keys_are_required_and_never_logged(client, capsys, caplog):
    wrong = "wrong-key-" + "z" * 20
    failures = auth_failures(client)
    assert client.get("/datasets", headers={"X-API-Key": ""}).status_code == 401
    r = client.get("/datasets", headers={"X-API-Key": wrong})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "ApiKey" and wrong not in r.text
    assert client.get("/datasets", headers={"X-API-Key": OTHER_KEY}).status_code == 200
    out = capsys.readouterr()
    logged = out.out + out.err + caplog.text
    assert wrong not in logged and KEY not in logged and OTHER_KEY not in logged
    assert auth_failures(client) == failures + 2 and wrong not in client.get("/metrics").text


def auth_failures(client) -> float:
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith("ml_platform_auth_failures_total"))
    return float(line.split()[-1])


def test_limits_give_413_and_the_rate_limit_429(spark, served, mlflow_server):
    spec = served[0]
    with make_client(spark, served, mlflow_server, max_rows=2, max_body_bytes=2000, rate_per_minute=5) as c:
        c.headers["X-API-Key"] = KEY
        r = c.post(f"/datasets/{spec.name}/predict", json={"rows": [{"year": "2011"}] * 3})
        assert r.status_code == 413 and "at most 2" in r.json()["detail"]
        r = c.post(f"/datasets/{spec.name}/predict", json={"rows": [{"year": "2011", "x": "y" * 3000}]})
        assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
        codes = [c.get("/datasets").status_code for _ in range(8)]
        assert codes[:3] == [200] * 3 and codes[-1] == 429, codes
        r = c.get("/datasets")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # another key has its own bucket
        assert c.get("/datasets", headers={"X-API-Key": OTHER_KEY}).status_code == 200


def test_a_swap_under_load_fails_no_request_and_a_broken_champion_keeps_the_old_serving(spark, client, served,
                                                                                       mlflow_server):
    spec, tracker, v1, rows, _ = served
    results, failures = [], []

    def caller(n):
        for j in range(3):
            r = client.post(f"/datasets/{spec.name}/predict",
                            json={"rows": [dict(rows[0], request_id=f"load-{n}-{j}")]})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                results.append(r.json()["results"][0])

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    v2 = register(spark, tracker, spec.name, year_model(3.0))
    for t in threads:
        t.join()
    assert not failures, failures
    year = float(rows[0]["year"])
    for res in results:  # each response names the version that scored it, and that version's answer
        k = {v1: 2.0, v2: 3.0}[res["model_version"]]
        assert res["prediction"] == pytest.approx(k * year)
    wait_for(lambda: client.post(f"/datasets/{spec.name}/predict", json={"rows": [rows[1]]})
             .json()["results"][0]["model_version"] == v2, what="v2 serving")
    assert client.get("/ready").json()["datasets"][spec.name]["model_version"] == v2
    assert "ml_platform_model_swaps_total" in client.get("/metrics").text

    # v3's artifacts are gone: it cannot load; /ready says 503 and v2 keeps answering
    v3 = register(spark, tracker, spec.name, year_model(4.0), promote=False)
    source = tracker.client.get_model_version(spec.name, v3).source
    _break_artifacts(mlflow_server, source)
    tracker.promote(spec.name, v3)
    wait_for(lambda: client.get("/ready").status_code == 503, what="/ready 503")
    body = client.get("/ready").json()["datasets"][spec.name]
    assert body["ready"] is False and body["model_version"] == v2 and f"version {v3} failed to load" in body["error"]
    r = client.post(f"/datasets/{spec.name}/predict", json={"rows": [rows[1]]})
    assert r.status_code == 200 and r.json()["results"][0]["model_version"] == v2
    tracker.promote(spec.name, v2)  # back to a loadable champion for the other tests
    wait_for(lambda: client.get("/ready").status_code == 200, what="/ready 200 again")


def _break_artifacts(mlflow_server, source: str) -> None:
    """Delete a version's files in the server's artifact store (mlflow-artifacts:/ is its local folder)."""
    import shutil

    folder = mlflow_server.artifacts / source.split("mlflow-artifacts:", 1)[1].lstrip("/")
    assert folder.is_dir(), folder
    shutil.rmtree(folder)
