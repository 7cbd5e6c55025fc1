"""One message never stops the serving line, against a real broker and registry: poison messages up to the broker's
limit (and one beyond it) each become one bounded DLQ record while the next request is scored in the same
micro-batch; an output record that cannot be written is dead-lettered with the reason instead of replaying the
micro-batch forever; a broker that is down shows as `failing` (restarts, last error) and then `serving` again."""

import dataclasses
import json
import random
import threading
import time
from datetime import datetime

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from ml_platform.serve.kafka_io import ensure_topics, read_topic
from ml_platform.serve.messages import MAX_MESSAGE_BYTES, errors, request, topic
from ml_platform.serve.prom import ServingMetrics
from ml_platform.serve.scoring import UNWRITTEN_EXCERPT_CHARS
from spark_streaming.scorer import scoring_query, serve
from tests.test_serving import _send, _watcher, register, served, year_model  # noqa: F401 (served: a fixture)

BOUNDED = 16 * 1024  # a DLQ record's value: 2,048 characters of excerpt, 6 bytes each at worst once escaped


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _size(value) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode() if isinstance(value, dict) else str(value).encode())


def _serve(spark, spec, tracker, kafka, tmp, status, prom=None):
    stop = threading.Event()
    t = threading.Thread(target=serve, args=(spark, spec, _watcher(spec, tracker, []), kafka.bootstrap, tmp / "state",
                                             status, stop),
                         kwargs={"metrics": False, "heartbeat_seconds": 1.0, "prom": prom}, daemon=True)
    t.start()
    return stop, t


def test_poison_up_to_the_broker_limit_is_one_bounded_dlq_record_each_and_the_next_request_is_scored(
        spark, served, kafka):  # noqa: F811
    spec, tracker, rows, status, tmp = served
    register(spark, tracker, spec.name, year_model(1.0))
    rng = random.Random(13)
    normal = json.loads(json.dumps(request(spec, "x", rows[0])))
    largest = MAX_MESSAGE_BYTES - 512  # the record batch around it takes < 512 bytes
    poison = {
        "binary": rng.randbytes(100_000) + b"\xff\xfe\xc0",  # invalid UTF-8
        "unicode4": "\U0001d11e\U0001f600".encode() * 30_000,  # 4-byte characters, not JSON
        "unicode4_id": json.dumps({**normal, "request_id": "\U0001f600" * 50}, ensure_ascii=False).encode(),
        "control": bytes(range(32)) * 4000,
        "huge_strings": json.dumps({**normal, "request_id": "hs", **{k: "y" * 400_000 for k in ("model", "brand")}})
        .encode(),  # over serving.max_request_bytes: not parsed
        "huge_year": json.dumps({**normal, "request_id": "hy", "year": "9" * 200_000}).encode(),  # parsed, invalid
        "largest": b"{" + b"\x01" * (largest - 2) + b"}",
    }
    big = KafkaProducer(bootstrap_servers=kafka.bootstrap, max_request_size=2 * MAX_MESSAGE_BYTES, acks="all")
    try:
        for key, value in poison.items():
            big.send(topic(spec, "requests"), key=key.encode(), value=value).get(60)
        # one beyond the limit: the broker refuses it, so no scorer ever sees it
        with pytest.raises(Exception, match="(?i)too ?large"):
            big.send(topic(spec, "requests"), key=b"beyond", value=b"\x01" * (MAX_MESSAGE_BYTES + 1024)).get(60)
    finally:
        big.close()
    _send(kafka.bootstrap, spec, [("ok1", json.dumps({**normal, "request_id": "ok1"}).encode())])

    stop, t = _serve(spark, spec, tracker, kafka, tmp, status)  # everything is in the topic before it starts
    try:
        _wait(lambda: status.data.get("predictions") == 1, 240, "the normal request to be scored")
    finally:
        stop.set()
        t.join(120)
    s = json.loads(status.path.read_text())
    # one micro-batch held the poison and the normal request: scored within one trigger, no restart
    assert s["batches"] == 1 and s["dlq"] == len(poison) and s["requests"] == len(poison) + 1
    assert s["restarts"] == 0 and s["consecutive_failures"] == 0 and s["write_failed"] == 0
    assert s["state"] == "stopped" and s["last_error"] is None
    dlq = {m["key"]: m["value"] for m in read_topic(kafka.bootstrap, topic(spec, "dlq"), 10)}
    assert len(read_topic(kafka.bootstrap, topic(spec, "dlq"), 10)) == len(poison)
    assert set(dlq) == set(poison) - {"huge_year"} | {"hy"}  # the request_id when valid, else the Kafka key
    for key, value in dlq.items():
        assert errors("dlq", value) == [], key
        assert _size(value) < BOUNDED, (key, _size(value))  # well under the 4 MB topic limit
    assert dlq["largest"]["raw_bytes"] == largest and dlq["largest"]["reason"].startswith("message too large")
    assert dlq["binary"]["reason"].startswith("not a JSON object")
    assert dlq["unicode4_id"]["reason"].startswith("invalid request_id")
    assert dlq["hy"]["reason"].startswith("year:")
    [pred] = read_topic(kafka.bootstrap, topic(spec, "predictions"), 10)
    assert pred["key"] == "ok1" and pred["value"]["prediction"] == float(rows[0]["year"])


def test_a_record_that_cannot_be_written_is_dead_lettered_and_the_batch_goes_on(spark, served, kafka):  # noqa: F811
    """Two real ways a record cannot be written: over the writer's max.request.size (found before the write), and
    refused by the broker for its topic's max.message.bytes (found by writing smaller pieces)."""
    spec, tracker, rows, status, tmp = served
    spec = dataclasses.replace(spec, name=spec.name[:24] + "_w")
    v = register(spark, tracker, spec.name, year_model(1.0))
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:  # the DLQ topic as an operator might have made it: a smaller limit than the scorer's writer
        admin.create_topics([NewTopic(topic(spec, "dlq"), 1, 1, topic_configs={"max.message.bytes": "6000"})])
    finally:
        admin.close()
    ensure_topics(kafka.bootstrap, spec.name)
    watcher = _watcher(spec, tracker, [])
    watcher.check()
    watcher.take()
    prom = ServingMetrics("kafka")
    ckpt = str(tmp / "ckpt")

    def run():
        q = scoring_query(spark, spec, watcher, kafka.bootstrap, ckpt, status, prom=prom, write_limit=12_000)
        try:
            q.processAllAvailable()  # raises if the micro-batch failed: no replay loop
            return q.recentProgress
        finally:
            q.stop()

    def req(rid):
        return rid, json.dumps(request(spec, rid, rows[int(rid[1:])])).encode()

    # 1. a DLQ record of 2,048 escaped control characters is ~12.6 KB, over the 12,000-byte writer limit
    _send(kafka.bootstrap, spec, [req(f"a{i}") for i in range(5)] + [("ctl", b"\x01" * 3000)])
    assert len([p for p in run() if p["numInputRows"]]) == 1
    preds = read_topic(kafka.bootstrap, topic(spec, "predictions"))
    assert sorted(m["key"] for m in preds) == [f"a{i}" for i in range(5)]  # each predicted once
    [d] = read_topic(kafka.bootstrap, topic(spec, "dlq"))
    assert d["key"] == "ctl" and errors("dlq", d["value"]) == []
    assert d["value"]["reason"].startswith("write failed: the ") and "max.request.size (12000)" in d["value"]["reason"]
    assert d["value"]["raw"] == "\x01" * UNWRITTEN_EXCERPT_CHARS and d["value"]["raw_bytes"] == 3000
    assert status.data["write_failed"] == 1 and status.data["dlq"] == 1 and status.data["predictions"] == 5

    # 2. 2,048 four-byte characters make an 8 KB DLQ record: under the writer limit, refused by the DLQ topic
    _send(kafka.bootstrap, spec, [req(f"b{i}") for i in range(5)] + [("uni", "\U0001f600".encode() * 3000)])
    assert len([p for p in run() if p["numInputRows"]]) == 1
    preds = read_topic(kafka.bootstrap, topic(spec, "predictions"))
    b = [m for m in preds if m["key"].startswith("b")]
    # a piece written before the failed attempt may be written again (at least once); each request is
    # predicted, never also dead-lettered, with the same prediction
    assert {m["key"] for m in b} == {f"b{i}" for i in range(5)} and {m["value"]["model_version"] for m in b} == {v}
    dlq = read_topic(kafka.bootstrap, topic(spec, "dlq"))
    assert [m["key"] for m in dlq] == ["ctl", "uni"]
    u = dlq[1]["value"]
    assert errors("dlq", u) == [] and u["reason"].startswith("write failed: ") and "RecordTooLarge" in u["reason"]
    assert u["raw"] == "\U0001f600" * UNWRITTEN_EXCERPT_CHARS and u["raw_bytes"] == 4 * 3000
    assert status.data["write_failed"] == 2 and status.data["requests"] == 12 and status.data["dlq"] == 2
    sample = prom.registry.get_sample_value
    assert sample("ml_platform_write_failed_total", {"front_end": "kafka", "dataset": spec.name, "kind": "dlq"}) == 2


def test_a_broker_down_shows_failing_with_restarts_then_serving_again(spark, served, kafka):  # noqa: F811
    spec, tracker, rows, status, tmp = served
    register(spark, tracker, spec.name, year_model(1.0))
    _send(kafka.bootstrap, spec, [("d1", json.dumps(request(spec, "d1", rows[1])).encode())])
    prom = ServingMetrics("kafka")
    labels = {"front_end": "kafka", "dataset": spec.name}
    sample = prom.registry.get_sample_value

    def now():
        return json.loads(status.path.read_text()) if status.path.exists() else {}

    kafka.stop()
    stop, t = _serve(spark, spec, tracker, kafka, tmp, status, prom)
    try:
        try:
            _wait(lambda: now().get("restarts", 0) >= 2, 180, "restarts while the broker is down")
            s = now()
            assert s["state"] == "failing" and s["consecutive_failures"] >= 2 and s["last_error"]
            assert datetime.fromisoformat(s["last_failure_at"].replace("Z", "+00:00"))
            assert sample("ml_platform_state", {**labels, "ml_platform_state": "failing"}) == 1
            assert sample("ml_platform_restarts_total", labels) >= 2
            assert sample("ml_platform_consecutive_failures", labels) >= 2
        finally:
            kafka.start()
        _wait(lambda: now().get("state") == "serving" and now().get("predictions") == 1, 240,
              "serving again, and the request sent before the outage scored")
        s = now()
        assert s["consecutive_failures"] == 0 and s["restarts"] >= 2 and s["last_failure_at"]
        assert sample("ml_platform_state", {**labels, "ml_platform_state": "serving"}) == 1
        assert sample("ml_platform_state", {**labels, "ml_platform_state": "failing"}) == 0
    finally:
        stop.set()
        t.join(120)
    assert [m["key"] for m in read_topic(kafka.bootstrap, topic(spec, "predictions"))] == ["d1"]


def test_a_write_stopped_from_outside_is_raised_not_written_again_in_halves(spark, kafka):
    """Stopping the scorer's query cancels its job group and interrupts the write (as Spark's stream execution does).
    write_isolating raises that at once: the micro-batch is not committed and runs again on restart. Taken for a bad
    record, it would check the broker and write the micro-batch again in halves, duplicating what was written."""
    from pyspark.sql import functions as F

    from ml_platform.serve.spark_kafka import cancelled, write_isolating

    slow = F.expr("cast(reflect('java.lang.Thread', 'sleep', 30000L) as string)")  # a task that is still running
    df = spark.range(2, numPartitions=1).select(F.lit("cancel_test").alias("topic"), F.col("id").cast("string").alias(
        "key"), F.concat(F.lit("v"), F.coalesce(slow, F.lit(""))).alias("value"), "id")
    checked, out = [], {}

    def write():
        spark.sparkContext.setJobGroup("cancel-test", "a write stopped from outside", interruptOnCancel=True)
        try:
            out["written"] = write_isolating(df, kafka.bootstrap, ["id"], lambda: checked.append("broker"))
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=write)
    t.start()
    _wait(lambda: spark.sparkContext.statusTracker().getJobIdsForGroup("cancel-test"), 30, "the write's job")
    time.sleep(1)
    started = time.monotonic()
    spark.sparkContext.cancelJobGroup("cancel-test")
    t.join(60)
    assert not t.is_alive() and time.monotonic() - started < 20  # not a second attempt sleeping its 30 s
    assert "written" not in out and cancelled(out["error"]), out
    assert checked == []  # the isolating path (broker check, then halves) never started
