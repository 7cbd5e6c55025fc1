"""A new dataset from the web app, below the browser: the draft a CSV becomes, the task a target implies, the spec
the choices compose, and creation, which leaves nothing half-made when it is refused and lets exactly one of two
simultaneous creators of a name win."""

from __future__ import annotations

import io
import threading
from collections import Counter

import pytest
import yaml

from api.web.create import Choice, Refused, create, draft_of, expire_staged, new_upload_id
from ml_platform.layout import staged_file
from ml_platform.spec import parse_spec
from ml_platform.spec_draft import DraftError, compose, draft, implied_task, target_counts
from ml_platform.spec_infer import InferError
from ml_platform.stores.local import LocalStore

CSV = ("shop_id,price,size,made,colour,note,kind\n"
       + "".join(f"s{i},\"${1000 + i * 7:,}\",{i % 5} cm,2024-0{i % 9 + 1}-1{i % 9},"
                 f"{['red', 'blue', 'green'][i % 3]},{'' if i % 4 else 'N/A'},{'a' if i % 3 else 'b'}\n"
                 for i in range(40)))


def _stage(store: LocalStore, text: str = CSV, name: str = "shop.csv") -> str:
    upload = new_upload_id()
    p = store.path(staged_file(upload, name))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return upload


def test_a_draft_has_each_column_s_type_reason_samples_and_missing_share(tmp_path):
    f = tmp_path / "shop.csv"
    f.write_text(CSV)
    d = {c.name: c for c in draft(f).columns}
    assert draft(f).key == "shop_id" and d["shop_id"].parse == "string" and not d["shop_id"].feature
    assert (d["price"].parse, d["price"].strip, d["price"].feature) == ("number", "$", True)
    assert (d["size"].parse, d["size"].unit) == ("unit", "cm")
    assert (d["made"].parse, d["made"].format) == ("date", "yyyy-MM-dd") and not d["made"].feature
    assert d["colour"].parse == "category" and d["colour"].samples == ["red", "blue", "green"]
    assert d["note"].null_share == 1.0 and d["note"].parse == "drop"  # '' and 'N/A' are both missing
    assert all(c.why for c in d.values())


@pytest.mark.parametrize("content,said", [(b"", "empty"), (b"\x00\x01binary", "binary"), (b"a,b\n", "header only"),
                                          (b"a,b,a\n1,2,3\n", "duplicate column names"),
                                          (b"one\n1\n", "1 column")])
def test_files_that_are_no_usable_csv_are_refused_with_the_reason(tmp_path, content, said):
    f = tmp_path / "x.csv"
    f.write_bytes(content)
    with pytest.raises(InferError, match=said):
        draft(f)


def test_the_target_implies_the_task_over_the_whole_file():
    def task(values):
        text = io.StringIO("y\n" + "".join(f"{v}\n" for v in values))
        return implied_task("y", *target_counts(text, "y"))

    assert task(["1.5", "2", "3", "4"])["task"] == "regression"
    assert task(["0", "1", "1"]) | {"why": ""} == {"task": "classification", "parse": "number", "label_range": [0, 1],
                                                  "why": ""}
    assert task(["no", "yes", "no", "no"])["classes"] == ["no", "yes"]  # the rarer is the positive class
    assert task(["a", "b", "c", "b"])["task"] == "multiclass"
    # the class that only shows after the sample is still found: the whole file is read
    assert task(["x"] * 5000 + ["y"])["classes"] == ["x", "y"]
    with pytest.raises(DraftError, match="single value"):
        task(["x", "x", ""])
    with pytest.raises(DraftError, match="no value"):
        task(["", "NA", "null"])


def test_compose_writes_a_spec_that_loads_and_refuses_bad_choices(tmp_path):
    f = tmp_path / "shop.csv"
    f.write_text(CSV)
    d = draft(f)
    implied = implied_task("kind", Counter({"a": 26, "b": 14}), 40, 0)
    text = compose("shop", d.columns, "kind", implied, {"logistic": {"regParam": [0.1]}}, key="shop_id")
    spec = parse_spec(yaml.safe_load(text))
    assert spec.task == "classification" and spec.classes == ("a", "b") and spec.key == "shop_id"
    assert set(spec.algorithms) == {"logistic"}
    for name, algos, said in (("shop-1", {"logistic": {}}, "dataset name"), ("shop", {}, "at least one algorithm"),
                              ("shop", {"linear": {"regParam": [1]}}, "do not train a classification model"),
                              ("shop", {"logistic": {"regParam": "x"}}, None)):
        if said is None:  # a single value is taken as a list of one
            compose(name, d.columns, "kind", implied, algos)
            continue
        with pytest.raises(DraftError, match=said):
            compose(name, d.columns, "kind", implied, algos)
    no_features = [c.__class__(**{**c.__dict__, "feature": False}) for c in d.columns]
    with pytest.raises(DraftError, match="no feature left"):
        compose("shop", no_features, "kind", implied, {"logistic": {}})


def _choice(name="shop", **kw) -> Choice:
    return Choice(name=name, target="kind", columns=kw.pop("columns", {"price": {"feature": False}}),
                  algorithms=kw.pop("algorithms", {"logistic": {"regParam": [0.1]}}))


def test_create_writes_the_spec_and_lands_the_file_or_leaves_nothing(tmp_path):
    store, specs = LocalStore(tmp_path / "data"), tmp_path / "specs"
    upload = _stage(store)
    with pytest.raises(Refused) as e:
        create(specs, store, upload, _choice(algorithms={"linear": {}}), set(), "shop.csv")
    assert e.value.status == 422
    assert not specs.exists() or not list(specs.iterdir())
    assert not store.path("landing").exists()
    assert store.path(staged_file(upload, "shop.csv")).exists()  # the upload stays for a corrected try
    spec, landed = create(specs, store, upload, _choice(), set(), "shop.csv")
    assert spec.training.exclude == ("price",) and landed == "landing/shop/shop.csv"
    assert store.path(landed).read_text() == CSV and not store.list_files("staging")
    assert [p.name for p in specs.iterdir()] == ["shop.yaml"]
    with pytest.raises(Refused) as e:  # the name is taken now
        create(specs, store, _stage(store), _choice(), set(), "shop.csv")
    assert e.value.status == 409


def test_two_creators_of_one_name_at_once_one_wins_the_other_is_told(tmp_path):
    store, specs = LocalStore(tmp_path / "data"), tmp_path / "specs"
    uploads = [_stage(store), _stage(store)]
    start, out = threading.Barrier(2), {}

    def run(i):
        start.wait()
        try:
            out[i] = create(specs, store, uploads[i], _choice("race"), set(), "shop.csv")[0].name
        except Refused as e:
            out[i] = (e.status, str(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [v for v in out.values() if v == "race"]
    lost = [v for v in out.values() if v != "race"]
    assert len(won) == 1 and len(lost) == 1, out
    assert lost[0][0] == 409 and "race" in lost[0][1]
    assert [p.name for p in specs.iterdir()] == ["race.yaml"]
    assert [f.name for f in store.list_files("landing/race")] == ["shop.csv"]


def test_a_bad_staged_file_is_deleted_and_old_uploads_expire(tmp_path):
    store = LocalStore(tmp_path / "data")
    bad = _stage(store, "just one column\n1\n")
    with pytest.raises(Refused, match="column"):
        draft_of(store, bad)
    assert not store.list_files("staging")
    _stage(store)
    assert expire_staged(store) == 0
    assert expire_staged(store, now=__import__("time").time() + 25 * 3600) == 1
    assert not store.list_files("staging")


def test_on_s3_the_browser_posts_straight_to_the_bucket_and_the_dataset_lands_there(tmp_path, minio):
    """The page's calls, keyed by its session cookie and CSRF token, against real MinIO: a presigned POST for the
    staged file, the draft read from the bucket, and creation landing the file under the dataset's prefix."""
    import re
    import uuid

    import httpx
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.platform import Platform
    from api.settings import ApiSettings, key_hash
    from ml_platform.serve.watcher import ChampionWatcher

    prefix = f"web-{uuid.uuid4().hex[:8]}"
    settings = ApiSettings(data_root=f"s3://platform/{prefix}", home=tmp_path, key_hashes=frozenset({key_hash("k")}),
                           specs_dir=str(tmp_path / "specs"), s3_endpoint=minio.endpoint, publish=False,
                           dagster_url="http://127.0.0.1:9", max_upload_bytes=100_000)
    platform = Platform(settings, watcher_for=lambda spec: ChampionWatcher(lambda: None, lambda v: None, 60))
    s3 = minio.client()
    with TestClient(create_app(settings, platform), follow_redirects=False) as c:
        assert c.post("/app/login", data={"key": "k", "next": "/app/new"}).status_code == 303
        csrf = {"X-CSRF-Token": re.search(r'name="csrf-token" content="([^"]+)"', c.get("/app/new").text).group(1)}
        assert c.post("/app/api/uploads", json={"filename": "shop.csv", "bytes": 200_000},
                      headers=csrf).status_code == 413
        grant = c.post("/app/api/uploads", json={"filename": "shop.csv", "bytes": len(CSV)}, headers=csrf).json()
        assert grant["method"] == "POST" and grant["fields"]["key"].startswith(f"{prefix}/staging/")
        too_big = httpx.post(grant["url"], data=grant["fields"], files={"file": ("shop.csv", b"x" * 100_001)})
        assert too_big.status_code == 400 and "EntityTooLarge" in too_big.text  # S3's own signed limit
        ok = httpx.post(grant["url"], data=grant["fields"], files={"file": ("shop.csv", CSV.encode())})
        assert ok.status_code in (200, 201, 204), ok.text
        checked = c.post(f"/app/api/uploads/{grant['upload_id']}/check", headers=csrf)
        assert checked.status_code == 200 and checked.json()["columns"] == 7, checked.text
        assert "shop_id" in c.get(checked.json()["editor"]).text
        made = c.post("/app/api/datasets", headers=csrf, json={
            "upload_id": grant["upload_id"], "name": "shop_s3", "target": "kind", "columns": {},
            "algorithms": {"logistic": {"regParam": [0.1]}}})
        assert made.status_code == 201, made.text  # no Dagster here: its reload is asked for in the background
    landed = s3.get_object(Bucket="platform", Key=f"{prefix}/landing/shop_s3/shop.csv")["Body"].read()
    assert landed == CSV.encode()
    assert s3.list_objects_v2(Bucket="platform", Prefix=f"{prefix}/staging/").get("KeyCount", 0) == 0
    assert (tmp_path / "specs" / "shop_s3.yaml").exists()
