"""What an operator sees of the scorer, against a real broker and registry: the status file (waiting with a
heartbeat, serving as soon as a model is taken, swaps in ISO-8601, stopped), `ml-platform tail` (waiting line,
DLQ lines, a summary on exit) and the broker's own log."""

import io
import json
import threading
import time
from datetime import UTC, datetime

from ml_platform.serve.kafka_io import ensure_topics, producer, read_topic, scorer_state, send, tail
from ml_platform.serve.messages import request, topic
from spark_streaming.scorer import serve
from tests.test_serving import _send, _watcher, register, served, year_model  # noqa: F401 (served: a fixture)


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_status_waits_with_a_heartbeat_then_serves_at_once_with_iso_swaps(spark, served, kafka):  # noqa: F811
    spec, tracker, rows, status, tmp = served

    def now():
        try:
            return json.loads(status.path.read_text())
        except (OSError, ValueError):
            return {}

    watcher = _watcher(spec, tracker, [])
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(spark, spec, watcher, kafka.bootstrap, tmp / "state", status, stop),
                         kwargs={"metrics": False, "heartbeat_seconds": 1.0})
    t.start()
    try:
        _wait(lambda: now().get("state") == "waiting", 30, "the waiting state")
        first = now()["updated_at"]
        _wait(lambda: now().get("updated_at") != first, 10, "a heartbeat while waiting")
        assert now()["state"] == "waiting" and _ts(now()["updated_at"]) > _ts(first)
        v = register(spark, tracker, spec.name, year_model(1.0))
        _wait(lambda: now().get("state") == "serving", 60, "serving")
        s = now()
        assert s["model_version"] == v and s["requests"] == 0  # serving before any request came
        [[old, new, at]] = s["swaps"]
        assert old is None and new == v and abs((_ts(at) - datetime.now(UTC)).total_seconds()) < 120
        _send(kafka.bootstrap, spec, [("o1", json.dumps(request(spec, "o1", rows[0])).encode())])
        _wait(lambda: now().get("predictions") == 1, 120, "the first prediction")
        beat = now()["updated_at"]
        _wait(lambda: now().get("updated_at") != beat, 10, "a heartbeat while serving without traffic")
    finally:
        stop.set()
        t.join(90)
    assert not t.is_alive() and now()["state"] == "stopped"
    assert [m["key"] for m in read_topic(kafka.bootstrap, topic(spec, "predictions"))] == ["o1"]


def test_tail_says_it_waits_shows_dlq_lines_and_a_summary(kafka, tmp_path):
    name = "t_tail"
    ensure_topics(kafka.bootstrap, name)
    status_path = tmp_path / f"scorer-{name}.json"
    status_path.write_text(json.dumps({"state": "waiting", "updated_at": "2026-11-24T10:00:00Z"}))
    out, stop, counts = io.StringIO(), threading.Event(), []
    th = threading.Thread(target=lambda: counts.append(tail(kafka.bootstrap, name, out, status_path,
                                                            from_beginning=True, stop=stop, say_every=0.5)))
    th.start()
    try:
        _wait(lambda: "waiting: no predictions yet; scorer waiting" in out.getvalue(), 30, "the waiting line")
        p = producer(kafka.bootstrap)
        send(p, name, "dlq", "bad-1", {"raw": "{\"request_id\": \"bad-1\"} xyz", "raw_bytes": 27,
                                       "raw_sha256": "a" * 64, "raw_truncated": False, "topic": f"{name}.requests",
                                       "partition": 0, "offset": 7, "reason": "not a single JSON object: text after",
                                       "dlq_at": "2026-11-24T10:00:01Z"})
        send(p, name, "predictions", "ok-1", {"request_id": "ok-1", "prediction": 2019.0, "probability": None,
                                              "model_name": name, "model_version": "4",
                                              "event_time": "2026-11-24T10:00:00Z",
                                              "scored_at": "2026-11-24T10:00:01Z", "input_sha256": "b" * 64})
        p.flush()
        p.close()
        _wait(lambda: "pred ok-1 -> 2019.0 (v4)" in out.getvalue(), 30, "the prediction line")
        time.sleep(1.5)  # long enough for a waiting line, which must not come once predictions flow
    finally:
        stop.set()
        th.join(30)
    text = out.getvalue()
    dlq_line = next(line for line in text.splitlines() if line.startswith("DLQ "))
    assert "not a single JSON object" in dlq_line and "xyz" in dlq_line and "offset 7" in dlq_line
    assert "waiting" not in text.split("pred ok-1")[1]
    assert text.rstrip().endswith("summary: metrics=0  dlq=1  predictions=1")
    assert counts == [{"metrics": 0, "dlq": 1, "predictions": 1}]
    assert "no scorer status at" in scorer_state(tmp_path / "missing.json")


def test_the_broker_writes_its_log(kafka):
    """The broker used to log through log4j's default (errors only): its log stayed empty under `make run`."""
    text = kafka.log.read_text(errors="replace")
    assert "Transition from STARTING to STARTED" in text and "(kafka.server.BrokerServer)" in text


def test_the_scorer_creates_its_topics_for_a_new_dataset(spark, served, kafka):  # noqa: F811
    """A user's dataset has no load generator to create its topics; the scorer must, or its queries fail at once
    and restart forever (seen under `make run` with a spec from ML_PLATFORM_SPECS)."""
    import dataclasses

    from kafka import KafkaAdminClient

    from ml_platform.serve.messages import KINDS

    spec, tracker, rows, status, tmp = served
    fresh = dataclasses.replace(spec, name=f"{spec.name}_fresh")
    register(spark, tracker, fresh.name, year_model(1.0))
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        assert not {topic(fresh, k) for k in KINDS} & set(admin.list_topics())
        stop = threading.Event()
        t = threading.Thread(target=serve, args=(spark, fresh, _watcher(fresh, tracker, []), kafka.bootstrap,
                                                 tmp / "fresh", status, stop), kwargs={"heartbeat_seconds": 1.0})
        t.start()
        try:
            _wait(lambda: status.data.get("state") == "serving", 60, "serving")
            assert {topic(fresh, k) for k in KINDS} <= set(admin.list_topics())
            _send(kafka.bootstrap, fresh, [("f1", json.dumps(request(fresh, "f1", rows[0])).encode())])
            _wait(lambda: status.data.get("predictions") == 1, 120, "the first prediction")
            assert status.data["last_error"] is None
        finally:
            stop.set()
            t.join(90)
    finally:
        admin.close()
