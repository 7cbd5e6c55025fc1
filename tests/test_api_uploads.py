"""Uploads into the landing zone through the REST API: a local PUT streamed by a real uvicorn server (the partial
file is never a batch the sensor would take), limits and names, and S3 presigned POSTs against real MinIO (the
size limit is S3's own policy)."""

import threading
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
from conftest import free_port
from fastapi.testclient import TestClient

from api.app import create_app
from api.platform import Platform
from api.settings import ApiSettings, key_hash
from api.uploads import name_problem
from ml_platform.data.landing import Cursor, plan_landing
from ml_platform.layout import batch_record_path
from ml_platform.serve.watcher import ChampionWatcher
from ml_platform.stores import LocalStore

KEY = {"X-API-Key": "test-key"}


def _app(tmp_path: Path, data_root: str, **kw):
    settings = ApiSettings(data_root=data_root, home=tmp_path / "home", key_hashes=frozenset({key_hash("test-key")}),
                           datasets=("used_cars",), publish=False, **kw)
    # uploads never score: a watcher with no champion keeps Spark out of these tests
    platform = Platform(settings, watcher_for=lambda spec: ChampionWatcher(lambda: None, lambda v: None, 60))
    return create_app(settings, platform)


class Server:
    """The app on uvicorn on a free loopback port, in a thread: bodies really arrive in chunks."""

    def __init__(self, app):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1]),
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def test_local_put_lands_only_complete_files(tmp_path, specs, used_cars_csv):
    store = LocalStore(tmp_path / "data")
    landing = store.path("landing/used_cars")
    data = used_cars_csv.encode()
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    assert len(chunks) >= 3
    seen_partial = []

    def body():
        yield chunks[0]
        # the server has the first chunk on disk before the rest is sent: streamed, not read whole
        deadline = time.monotonic() + 10
        while not [p for p in landing.glob("*") if p.stat().st_size > 0] and time.monotonic() < deadline:
            time.sleep(0.02)
        listing = store.list_files("landing/used_cars")
        plan = plan_landing(specs["used_cars"], Cursor(), listing, set(), time.time_ns() + 10**12,
                            store.read_head, settle_seconds=0)
        seen_partial.append(([f.name for f in listing], plan))
        yield from chunks[1:]

    app = _app(tmp_path, str(tmp_path / "data"))
    with Server(app) as srv, httpx.Client(base_url=srv.url, headers=KEY, timeout=60) as c:
        grant = c.post("/datasets/used_cars/uploads", json={"filename": "batch 1.csv"})
        assert grant.status_code == 200, grant.text
        assert grant.json()["method"] == "PUT" and grant.json()["url"] == "/datasets/used_cars/uploads/batch%201.csv"
        r = c.put(grant.json()["url"], content=body(), headers={"Content-Type": "text/csv"})
        assert r.status_code == 201, r.text
        assert r.json()["bytes"] == len(data) and r.json()["key"] == "landing/used_cars/batch 1.csv"
        names, plan = seen_partial[0]
        # mid-upload: only the hidden partial file, which the sensor's own decision leaves waiting
        assert len(names) == 1 and names[0].startswith(".upload-") and plan.new == [] and plan.waiting == names
        assert [p.name for p in landing.iterdir()] == ["batch 1.csv"]  # no temporary file left behind
        assert (landing / "batch 1.csv").read_bytes() == data
        again = c.put(grant.json()["url"], content=data)
        assert again.status_code == 409 and "already in the used_cars landing zone" in again.json()["detail"]
        assert c.post("/datasets/used_cars/uploads", json={"filename": "batch 1.csv"}).status_code == 409


def test_limits_names_and_headers(tmp_path, specs, used_cars_csv):
    store = LocalStore(tmp_path / "data")
    landing = store.path("landing/used_cars")
    header = used_cars_csv.split("\n", 1)[0] + "\n"
    app = _app(tmp_path, str(tmp_path / "data"), max_upload_bytes=5000)
    with TestClient(app, headers=KEY) as c:
        for name, says in [("../x.csv", "path separator"), (".hidden.csv", "never picks it up"),
                           ("x.csv.part", "not a .csv"), ("notes.txt", "not a .csv"), ("a\x07.csv", "control")]:
            assert says in name_problem(name)  # the landing rules, and the schema's pattern before them
            r = c.post("/datasets/used_cars/uploads", json={"filename": name})
            assert r.status_code == 422 and "filename" in r.text, (name, r.text)
        assert c.post("/datasets/nope/uploads", json={"filename": "a.csv"}).status_code == 404
        # over the limit: refused by Content-Length before reading, and counted when streamed without one
        assert c.put("/datasets/used_cars/uploads/big.csv", content=b"x" * 6000).status_code == 413
        r = c.put("/datasets/used_cars/uploads/big.csv", content=iter([header.encode()] + [b"1,2,3\n" * 200] * 5))
        assert r.status_code == 413 and r.json()["detail"] == "file over the upload limit of 5000 bytes"
        # a file the sensor would quarantine is refused with the sensor's reason
        r = c.put("/datasets/used_cars/uploads/semi.csv", content=b"price;year;listing_id\n1;2;3\n")
        assert r.status_code == 422 and "semicolon" in r.json()["detail"]
        r = c.put("/datasets/used_cars/uploads/empty.csv", content=b"")
        assert r.status_code == 422 and "empty file" in r.json()["detail"]
        # a name whose batch was ingested already would be skipped by the sensor: refused
        store.write_json(batch_record_path(specs["used_cars"], "old"), {"rows": 1})
        r = c.put("/datasets/used_cars/uploads/old.csv", content=header.encode())
        assert r.status_code == 409 and "already ingested" in r.json()["detail"]
        r = c.put("/datasets/used_cars/uploads/header-only.csv", content=header.encode())
        assert r.status_code == 422 and "no data rows" in r.json()["detail"]
        one_row = "\n".join(used_cars_csv.split("\n")[:2]) + "\n"
        assert c.put("/datasets/used_cars/uploads/ok.csv", content=one_row.encode()).status_code == 201
    assert sorted(p.name for p in landing.iterdir()) == ["ok.csv"]


def test_s3_presigned_post_into_the_landing_prefix(tmp_path, minio, used_cars_csv):
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    app = _app(tmp_path, f"s3://platform/{prefix}", s3_endpoint=minio.endpoint, max_upload_bytes=len(used_cars_csv))
    s3 = minio.client()
    with TestClient(app, headers=KEY) as c:
        r = c.post("/datasets/used_cars/uploads", json={"filename": "batch-7.csv"})
        assert r.status_code == 200, r.text
        grant = r.json()
        assert grant["method"] == "POST" and grant["key"] == f"{prefix}/landing/used_cars/batch-7.csv"
        assert grant["expires_seconds"] == 900 and "file=@batch-7.csv" in grant["curl"]
        # the API's own PUT is for local roots only
        put = c.put("/datasets/used_cars/uploads/batch-7.csv", content=b"a,b\n")
        assert put.status_code == 409 and "presigned" in put.json()["detail"]
        # one byte over the signed limit: S3 refuses it
        big = httpx.post(grant["url"], data=grant["fields"], files={"file": ("f.csv", used_cars_csv.encode() + b"x")})
        assert big.status_code == 400 and "EntityTooLarge" in big.text
        assert s3.list_objects_v2(Bucket="platform", Prefix=prefix).get("KeyCount", 0) == 0
        ok = httpx.post(grant["url"], data=grant["fields"], files={"file": ("f.csv", used_cars_csv.encode())})
        assert ok.status_code in (200, 201, 204), ok.text
        body = s3.get_object(Bucket="platform", Key=grant["key"])["Body"].read()
        assert body == used_cars_csv.encode()
        # landed now: a second grant for the name is refused
        assert c.post("/datasets/used_cars/uploads", json={"filename": "batch-7.csv"}).status_code == 409

