"""The prediction store (DynamoDB's API, served here by dynalite) and its Kafka writer, on real services."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, namedtuple

import pytest
from conftest import ROOT
from store_service import Dynalite, dynalite  # noqa: F401  (the session fixture)

from ml_platform.serve.messages import topic
from ml_platform.serve.store import PredictionStore, StoreUnavailable, actual_item, prediction_item
from ml_platform.serve.store_writer import Status, write_records

Record = namedtuple("Record", "topic partition offset value")
SHA = "0123456789abcdef" * 4


def pred(rid: str, version: str = "3", prediction: float = 1234.5, scored_at: str = "2026-01-01T00:00:01.000Z",
         **kw) -> dict:
    return {"request_id": rid, "prediction": prediction, "probability": None, "model_name": "used_cars",
            "model_version": version, "event_time": "2026-01-01T00:00:00.000Z", "scored_at": scored_at,
            "input_sha256": SHA, **kw}


def actual(rid: str, value: float = 999.0) -> dict:
    return {"request_id": rid, "event_time": "2026-01-01T00:05:00.000Z", "actual": value}


@pytest.fixture
def pstore(dynalite, request):  # noqa: F811
    s = dynalite.store("t_" + request.node.name[:60].replace("[", "_").replace("]", ""))
    yield s
    s.close()


def test_items_are_validated_with_clear_errors():
    ok = prediction_item("used_cars", {k: v for k, v in pred("r1").items() if k != "input_sha256"})
    assert ok["input_sha256"] == {"NULL": True} and ok["sk"] == {"S": "served#used_cars#3"}  # absent hash: null
    assert prediction_item("used_cars", pred("r1", input_sha256=SHA.upper()))["input_sha256"] == {"S": SHA}
    cases = [(pred("r1", prediction=math.nan), "prediction"), (pred("r1", prediction=1e300), "prediction"),
             (pred("a b"), "request_id"), (pred("r1", input_sha256="abc"), "input_sha256"),
             (pred("r1", model_version=""), "model_version"), (pred("r1", probability="0.5"), "probability")]
    for msg, field in cases:
        with pytest.raises(ValueError, match=field):
            prediction_item("used_cars", msg)
    with pytest.raises(ValueError, match="dataset"):
        actual_item("used#cars", actual("r1"))
    with pytest.raises(ValueError, match="actual"):
        actual_item("used_cars", actual("r1", value=math.inf))


def test_upsert_is_idempotent_and_first_write_wins(pstore):
    m = pred("r1")
    assert pstore.put_predictions("ds", [m, m]) == 1  # a duplicate inside one batch
    first = list(pstore.items("ds"))
    assert pstore.put_predictions("ds", [m]) == 0  # the same message replayed
    # the same request re-scored by a replayed micro-batch: later scored_at, same key -> nothing changes
    assert pstore.put_predictions("ds", [pred("r1", scored_at="2026-01-01T00:09:00.000Z")]) == 0
    assert list(pstore.items("ds")) == first and len(first) == 1
    assert first[0]["scored_at"] == "2026-01-01T00:00:01.000Z" and first[0]["prediction"] == 1234.5


def test_actual_before_and_after_its_prediction(pstore):
    assert pstore.put_actuals("ds", [actual("early", 10.0)]) == 1
    early = pstore.lookup("ds", "early")
    assert early["predictions"] == [] and early["actual"] == 10.0 and early["actual_at"] == "2026-01-01T00:05:00.000Z"
    pstore.put_predictions("ds", [pred("early"), pred("late")])
    assert pstore.lookup("ds", "early")["actual"] == 10.0 and len(pstore.lookup("ds", "early")["predictions"]) == 1
    assert pstore.lookup("ds", "late")["actual"] is None
    pstore.put_actuals("ds", [actual("late", 20.0), actual("late", 21.0)])  # the first actual stays
    assert pstore.lookup("ds", "late")["actual"] == 20.0


def test_lookup_shape(pstore):
    pstore.put_predictions("ds", [pred("r9", prediction=1, probability=0.25)])
    shadow = pred("r9", version="4", prediction=0.0, probability=1e-7, input_sha256=None)
    pstore.put_predictions("ds", [shadow], served=False)
    pstore.put_actuals("ds", [actual("r9", 1)])
    got = pstore.lookup("ds", "r9")
    assert json.loads(json.dumps(got)) == got  # plain JSON types only (no Decimal)
    assert got == {"request_id": "r9", "dataset": "ds", "actual": 1.0, "actual_at": "2026-01-01T00:05:00.000Z",
                   "predictions": [
                       {"model_version": "3", "model_name": "used_cars", "prediction": 1.0, "probability": 0.25,
                        "served": True, "scored_at": "2026-01-01T00:00:01.000Z",
                        "event_time": "2026-01-01T00:00:00.000Z", "input_sha256": SHA},
                       {"model_version": "4", "model_name": "used_cars", "prediction": 0.0, "probability": 1e-7,
                        "served": False, "scored_at": "2026-01-01T00:00:01.000Z",
                        "event_time": "2026-01-01T00:00:00.000Z", "input_sha256": None}]}
    assert type(got["predictions"][0]["prediction"]) is float
    assert pstore.lookup("ds", "never-sent") is None and pstore.lookup("other", "r9") is None
    with pytest.raises(ValueError, match="request_id"):
        pstore.lookup("ds", "has space")


def test_bad_messages_are_skipped_and_counted(pstore, tmp_path):
    ds = "bads"
    bad = [b"not json", b'{"request_id": "x"}', json.dumps(pred("n1", prediction=math.nan)).encode(),
           json.dumps(pred("s1", input_sha256="zz")).encode(), b"\xff\xfe", json.dumps(actual("a b")).encode()]
    good = [json.dumps(pred(f"g{i}")).encode() for i in range(5)] + [json.dumps(actual("g0")).encode()]
    records = [Record(f"{ds}.predictions", 0, i, v) for i, v in enumerate(bad[:5] + good[:5])]
    records += [Record(f"{ds}.actuals", 1, 7, bad[5]), Record(f"{ds}.actuals", 1, 8, good[5]),
                Record(f"{ds}.shadow", 0, 3, good[1])]
    status = Status(tmp_path / "s.json", ds)
    assert write_records(pstore, ds, records, status) == (7, 6)
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["consumed"], s["stored"], s["bad"], s["repeated"]) == (13, 7, 6, 0)
    assert s["last_bad"]["where"] == f"{ds}.actuals[1]@7" and "request_id" in s["last_bad"]["reason"]
    assert sorted(i["sk"] for i in pstore.items(ds)) == ["actual"] + ["served#used_cars#3"] * 5 + [
        "shadow#used_cars#3"]


# --- the writer process on a real broker -----------------------------------------------------------------------

def start_writer(ds, kafka, server, table, status, log, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ml_platform.serve.store_writer", ds, "--bootstrap", kafka.bootstrap,
         "--status", str(status), *extra], cwd=ROOT, env=server.env(table), stdout=open(log, "ab"),
        stderr=subprocess.STDOUT, start_new_session=True)


def read_status(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(what, ok, proc, log, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not ok():
        assert proc is None or proc.poll() is None, f"writer exited awaiting {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not within {seconds} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def create_topic(bootstrap: str, name: str) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 2, 1)])
    except TopicAlreadyExistsError:  # ensure_topics makes it once messages.KINDS has "shadow"
        pass
    finally:
        admin.close()


def test_kill_9_mid_stream_then_restart_stores_each_request_once(kafka, dynalite, tmp_path):  # noqa: F811
    from ml_platform.serve.kafka_io import ensure_topics, producer

    ds, table, n, shadows = "killds", "t_kill", 2000, 100
    ensure_topics(kafka.bootstrap, ds)
    create_topic(kafka.bootstrap, f"{ds}.shadow")
    sent = {f"k{i:05d}": pred(f"k{i:05d}", prediction=float(i)) for i in range(n)}
    rids = list(sent)
    status1, status2, log = tmp_path / "w1.json", tmp_path / "w2.json", tmp_path / "writer.log"
    p = producer(kafka.bootstrap)

    def send(rids_, **change):
        for rid in rids_:
            p.send(topic(ds, "predictions"), key=rid, value=json.dumps(sent[rid] | change).encode())
        p.flush()

    send(rids[:100])
    writer = start_writer(ds, kafka, dynalite, table, status1, log, "--max-records", "100")
    wait_for("the writer's first batch", lambda: read_status(status1).get("stored", 0) >= 100, writer, log)
    done = threading.Event()

    def produce():  # paced, so the writer is killed while messages are still arriving
        for i in range(100, n, 100):
            send(rids[i:i + 100])
            if i == 1000:  # a replayed micro-batch: 200 identical, 100 re-scored later with the same model
                send(rids[500:700])
                send(rids[700:800], scored_at="2026-01-01T09:00:00.000Z")
                for raw in (b"garbage", b'{"request_id": "k00001"}', json.dumps(pred("x y")).encode()):
                    p.send(topic(ds, "predictions"), key="bad", value=raw)
            time.sleep(0.2)
        for rid in rids[:shadows]:
            p.send(f"{ds}.shadow", key=rid, value=json.dumps(sent[rid] | {"model_version": "4"}).encode())
        p.flush()
        done.set()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    wait_for("400 stored", lambda: read_status(status1).get("stored", 0) >= 400, writer, log)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(10)
    at_kill = read_status(status1)
    assert 400 <= at_kill["stored"] < n, at_kill  # some but not all
    assert not done.is_set(), "the producer had finished before the kill: not mid-stream"
    t.join(60)
    assert done.is_set()
    p.close()

    writer = start_writer(ds, kafka, dynalite, table, status2, log, "--max-records", "100")
    store = dynalite.store(table)
    try:
        wait_for("every message stored", lambda: sum(1 for _ in store.items(ds)) >= n + shadows, writer, log, 120)
        time.sleep(2)  # anything still to come would be a duplicate item
        items = list(store.items(ds))
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
        store.close()
    assert read_status(status2)["state"] == "stopped"
    served = [i for i in items if i["served"]]
    shadow = [i for i in items if i["served"] is False]
    assert len(items) == n + shadows
    assert Counter(i["request_id"] for i in served) == Counter(rids)  # every one sent, exactly once
    assert sorted(i["request_id"] for i in shadow) == rids[:shadows] and {i["model_version"] for i in shadow} == {"4"}
    for i in served:
        m = sent[i["request_id"]]
        assert (i["prediction"], i["scored_at"], i["model_version"], i["input_sha256"]) == (
            m["prediction"], m["scored_at"], "3", SHA)  # the first write, not the re-scored replay
    s1, s2 = read_status(status1), read_status(status2)
    assert s1["stored"] + s2["stored"] == n + shadows
    assert s1["repeated"] + s2["repeated"] >= 300 and s1["bad"] + s2["bad"] >= 3


def test_writer_survives_the_store_going_down(kafka, tmp_path):
    from ml_platform.serve.kafka_io import ensure_topics, producer

    ds, table = "downds", "t_down"
    server = Dynalite(tmp_path / "dyn")
    ensure_topics(kafka.bootstrap, ds)  # no shadow topic: the writer does without it
    status, log = tmp_path / "w.json", tmp_path / "writer.log"
    writer = start_writer(ds, kafka, server, table, status, log)
    p = producer(kafka.bootstrap)
    try:
        for i in range(50):
            p.send(topic(ds, "predictions"), key=f"d{i}", value=json.dumps(pred(f"d{i}")).encode())
        p.flush()
        wait_for("50 stored", lambda: read_status(status).get("stored") == 50, writer, log)
        server.stop()
        for i in range(50, 150):
            p.send(topic(ds, "predictions"), key=f"d{i}", value=json.dumps(pred(f"d{i}")).encode())
        p.send(topic(ds, "actuals"), key="d0", value=json.dumps(actual("d0")).encode())
        p.flush()
        wait_for("failing", lambda: read_status(status).get("state") == "failing", writer, log)
        time.sleep(3)
        s = read_status(status)
        assert writer.poll() is None and s["state"] == "failing" and s["stored"] == 50
        assert "Could not connect" in s["last_error"], s["last_error"]
        # the store API itself says "retry later" while the server is down
        with pytest.raises(StoreUnavailable, match=table):
            PredictionStore(table, server.endpoint).put_predictions(ds, [pred("d0")])
        server.start()
        wait_for("151 stored", lambda: read_status(status).get("stored") == 151, writer, log)
        assert read_status(status)["state"] == "running"
        writer.send_signal(signal.SIGTERM)
        assert writer.wait(30) == 0 and read_status(status)["state"] == "stopped"
        store = server.store(table)
        assert sum(1 for _ in store.items(ds)) == 151 and store.lookup(ds, "d0")["actual"] == 999.0
        store.close()
    finally:
        p.close()
        if writer.poll() is None:
            writer.kill()
        server.stop()
