"""One contract, three real backends: a local folder, S3 (MinIO on loopback) and HDFS (MiniDFSCluster)."""

import uuid

import pytest
from services import post_form

from ml_platform.stores import LocalStore, StorageError, open_store


@pytest.fixture(params=["local", "s3", "hdfs"])
def any_store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "data")
    if request.param == "s3":
        m = request.getfixturevalue("minio")
        return open_store(f"s3://platform/t-{uuid.uuid4().hex[:8]}", endpoint_url=m.endpoint)
    h = request.getfixturevalue("hdfs")
    return open_store(f"{h.root}/t-{uuid.uuid4().hex[:8]}", http_port=h.http_port, user="root")


def test_store_contract(any_store):
    s = any_store
    assert s.list_files("landing/used_cars") == []
    assert s.read_text("nothing/here.json") is None and not s.exists("nothing/here.json")
    s.write_text("landing/used_cars/a.csv", "id,price\n1,2\n")
    s.write_text("landing/used_cars/b.csv", "id,price\n")
    s.write_json("landing/used_cars/sub/c.json", {"k": 1})  # a nested file is not listed as a file of the folder
    files = {f.name: f for f in s.list_files("landing/used_cars")}
    assert set(files) == {"a.csv", "b.csv"} and files["a.csv"].size == len("id,price\n1,2\n")
    assert files["a.csv"].mtime_ns > 1_600_000_000 * 10**9
    with s.open_read("landing/used_cars/a.csv") as f:
        assert f.read(3) == b"id," and f.read() == b"price\n1,2\n"
    assert s.read_head("landing/used_cars/a.csv", 2) == b"id"
    assert s.read_json("landing/used_cars/sub/c.json") == {"k": 1}

    s.move("landing/used_cars/a.csv", "quarantine/used_cars/files/a.csv")
    assert not s.exists("landing/used_cars/a.csv") and s.exists("quarantine/used_cars/files/a.csv")
    assert s.exists("quarantine/used_cars/files")  # a folder, as Spark writes them
    # exactly one writer wins; the loser gets the winner's text back
    assert s.create_exclusive("bronze/used_cars/_hashes/abc", "batch-1") is None
    assert s.create_exclusive("bronze/used_cars/_hashes/abc", "batch-2") == "batch-1"
    s.write_text("silver/used_cars/batch=1/part-0.parquet", "x")
    s.write_text("silver/used_cars/batch=1/_SUCCESS", "")
    s.delete_tree("silver/used_cars/batch=1")
    assert not s.exists("silver/used_cars/batch=1") and s.list_files("silver/used_cars/batch=1") == []
    with pytest.raises(ValueError, match="escapes"):
        s.uri("../outside")


def test_uris_are_what_spark_reads(minio, hdfs):
    assert open_store("s3://platform/p", endpoint_url=minio.endpoint).uri("silver/x") == "s3a://platform/p/silver/x"
    assert open_store(f"{hdfs.root}/p", http_port=hdfs.http_port).uri("a") == f"{hdfs.root}/p/a"
    with pytest.raises(StorageError, match="ML_PLATFORM_DATA"):
        open_store("gs://bucket/x")


def test_s3_errors_name_the_setting(minio, monkeypatch):
    import socket

    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist.*ML_PLATFORM_DATA"):
        open_store("s3://no-such-bucket/x", endpoint_url=minio.endpoint).check()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError, match="credentials were refused.*AWS_ACCESS_KEY_ID") as e:
        open_store("s3://platform/x", endpoint_url=minio.endpoint).check()
    assert "wrong-secret" not in str(e.value) and minio.secret_key not in str(e.value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(StorageError, match="no AWS credentials found; set AWS_ACCESS_KEY_ID"):
        open_store("s3://platform/x", endpoint_url=minio.endpoint).check()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", minio.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", minio.secret_key)
    # a server that accepts the connection and never answers: a timeout, named as such
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        store = open_store("s3://platform/x", endpoint_url=f"http://127.0.0.1:{port}")
        store.client = _fast(store)
        with pytest.raises(StorageError, match="cannot reach the S3 endpoint.*ML_PLATFORM_S3_ENDPOINT"):
            store.check()


def _fast(store):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=store.endpoint_url, region_name="us-east-1",
                        config=Config(connect_timeout=1, read_timeout=1, retries={"max_attempts": 1},
                                      s3={"addressing_style": "path"}))


def test_s3_access_denied_names_the_permissions():
    from botocore.exceptions import ClientError

    from ml_platform.stores.s3 import explain

    e = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                     "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    msg = str(explain(e, "platform", None, "writing landing/x.csv"))
    assert "access denied" in msg and "s3:PutObject" in msg and "AWS_ACCESS_KEY_ID" in msg


def test_hdfs_permission_denied_names_the_user(hdfs):
    root = open_store(f"{hdfs.root}/locked", http_port=hdfs.http_port, user="root")
    root.write_text("a.txt", "x")
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{hdfs.http_port}/webhdfs/v1/locked?op=SETPERMISSION&permission=700&user.name=root",
        method="PUT")).close()
    other = open_store(f"{hdfs.root}/locked", http_port=hdfs.http_port, user="mallory")
    with pytest.raises(StorageError, match="permission denied for user 'mallory'.*ML_PLATFORM_HDFS_USER"):
        other.write_text("b.txt", "y")
    assert root.read_text("a.txt") == "x"


def test_presigned_upload_is_one_key_capped_and_expiring(minio):
    import time

    store = open_store("s3://platform/up", endpoint_url=minio.endpoint)
    grant = store.presigned_upload("landing/used_cars/batch_1.csv", max_bytes=100, expires_seconds=3)
    assert minio.secret_key not in grant.url + str(grant.fields)
    assert post_form(grant.url, grant.fields, b"id,price\n1,2\n") == 204
    assert store.read_text("landing/used_cars/batch_1.csv") == "id,price\n1,2\n"
    assert post_form(grant.url, grant.fields, b"x" * 101) == 400  # over the cap: EntityTooLarge
    other = dict(grant.fields, key="up/landing/used_cars/evil.csv")
    assert post_form(grant.url, other, b"id\n") == 403  # another key: the signed policy does not match
    assert not store.exists("landing/used_cars/evil.csv")
    time.sleep(4)
    assert post_form(grant.url, grant.fields, b"id,price\n") == 403  # expired
    assert store.read_text("landing/used_cars/batch_1.csv") == "id,price\n1,2\n"
    with pytest.raises(ValueError):
        store.presigned_upload("landing/x.csv", max_bytes=0, expires_seconds=10)


def test_upload_url_command(minio, capsys, tmp_path):
    import json

    from ml_platform.cli import main

    root = f"s3://platform/cli-{uuid.uuid4().hex[:8]}"
    assert main(["upload-url", "used_cars", "batch-7.csv", "--data-root", root, "--s3-endpoint", minio.endpoint,
                 "--max-mb", "0.001", "--expires", "60"]) == 0
    grant = json.loads(capsys.readouterr().out)
    assert grant["max_bytes"] == 1048 and grant["key"].endswith("landing/used_cars/batch-7.csv")
    assert "batch-7.csv" in grant["curl"] and minio.secret_key not in json.dumps(grant)
    assert post_form(grant["url"], grant["fields"], b"id,price\n1,2\n") == 204
    assert post_form(grant["url"], grant["fields"], b"x" * 2000) == 400
    assert main(["upload-url", "used_cars", "../escape.csv", "--data-root", root]) == 2
    assert main(["upload-url", "used_cars", "b.csv", "--data-root", str(tmp_path)]) == 2
    assert "need the store on S3" in capsys.readouterr().err


def test_writers_of_one_table_take_turns_on_s3(minio):
    """Delta on S3 assumes one writing driver: the store's commit lock makes processes take turns per table, and a
    lock left by a writer that died expires."""
    import json
    import threading
    import time

    store = open_store(f"s3://platform/lock-{time.time_ns()}", endpoint_url=minio.endpoint)
    assert store.delta_excludes_writers is False
    inside, overlaps, done = [], [], []

    def writer(n):
        with store.commit_lock("silver/x/rows"):
            inside.append(n)
            if len(inside) > 1:
                overlaps.append(list(inside))
            time.sleep(0.3)
            inside.remove(n)
        done.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(done) == [0, 1, 2] and overlaps == [] and not store.exists("_locks/silver/x/rows.lock")
    # a dead writer's lock: taken over once it expires, refused with its owner named while it holds
    store.write_text("_locks/silver/x/rows.lock", json.dumps({"owner": "gone:1", "expires": time.time() - 1}))
    with store.commit_lock("silver/x/rows"):
        pass
    store.write_text("_locks/silver/x/rows.lock", json.dumps({"owner": "busy:2", "expires": time.time() + 60}))
    with pytest.raises(StorageError, match="busy:2"):
        with store.commit_lock("silver/x/rows", wait_s=0.5):
            pass
