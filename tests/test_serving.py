"""The scorer against a real Kafka broker and a real MLflow registry (sqlite), in this process: contracts, DLQ
accounting on fuzzed input, hot swap and rollback between micro-batches, a model that fails to load, live
metrics equal to an offline recomputation, and the wire format through kcat."""

import dataclasses
import json
import random
import subprocess

import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import SQLTransformer

from ml_platform.local.loadgen import FUZZ_KINDS, fuzz, stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.kafka_io import ensure_topics, producer, read_topic
from ml_platform.serve.live import offline_metrics
from ml_platform.serve.messages import DLQ_EXCERPT_CHARS, contract, errors, request, topic
from ml_platform.serve.prom import ServingMetrics
from ml_platform.serve.watcher import registry_watcher
from ml_platform.train.registry import CHAMPION, Tracker
from spark_streaming.scorer import Status, metrics_query, scoring_query


def year_model(k: float) -> PipelineModel:
    """A real Spark PipelineModel over cleaned columns: prediction = k * year (year is parsed from text)."""
    return PipelineModel(stages=[SQLTransformer(
        statement=f"SELECT *, CAST(year * {k} AS DOUBLE) AS prediction FROM __THIS__")])


def register(spark, tracker: Tracker, name: str, model, promote=True) -> str:
    exp = tracker.experiment_id(name)
    run = tracker.client.create_run(exp).info.run_id
    example = spark.createDataFrame([(2015.0,)], "year double")
    v = tracker.register_stack(run, name, model, example.toPandas(), model.transform(example).select("prediction")
                               .toPandas(), {}, {"checks": "passed"})
    if promote:
        tracker.promote(name, v)
    return v


@pytest.fixture
def served(spark, specs, kafka, tmp_path, request):
    name = f"t_{request.node.name[5:30]}"
    spec = dataclasses.replace(specs["used_cars"], name=name, serving=dataclasses.replace(
        specs["used_cars"].serving, window_seconds=10, watermark_seconds=5, actual_within_seconds=120,
        poll_seconds=0.2))
    ensure_topics(kafka.bootstrap, name)
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    write_batch(SimConfig("used_cars", 1200, test_share=0.5, broken_share=0.0, seed=3), 1, tmp_path / "land",
                tmp_path / "test")
    rows = [r for _, r in stream_rows(tmp_path / "test")]
    status = Status(tmp_path / "status.json", name)
    return spec, tracker, rows, status, tmp_path


def _watcher(spec, tracker, logs, status=None):
    return registry_watcher(spec.name, tracker.uri, 0.2, logger=logs.append,
                            on_error=(lambda m: status.update(last_error=m)) if status else None)


def _run(query):
    try:
        query.processAllAvailable()
    finally:
        query.stop()


def live_and_offline(spark, spec, kafka, tmp, status, predictions):
    """Run the live-metrics query over what is in the topics -> (its windows by (start, version), the offline
    recomputation from `predictions` and the actuals, closed windows only)."""
    q = metrics_query(spark, spec, kafka.bootstrap, str(tmp / "metrics"), status)
    try:
        for _ in range(3):  # the watermark advances at the end of a micro-batch; windows close in the next
            q.processAllAvailable()
    finally:
        q.stop()
    live = {(m["value"]["window_start"], m["value"]["model_version"]): m["value"]
            for m in read_topic(kafka.bootstrap, topic(spec, "metrics"))}
    offline = offline_metrics(spec, [m["value"] for m in predictions],
                              [m["value"] for m in read_topic(kafka.bootstrap, topic(spec, "actuals"))])
    return live, {k: v for k, v in offline.items() if k[0] < "2026-11-23T10:05"}


def _send(bootstrap, spec, messages):
    p = producer(bootstrap)
    for key, value in messages:
        p.send(topic(spec, "requests"), key=key, value=value)
    p.flush()
    p.close()


def test_every_message_is_scored_or_dead_lettered_and_swaps_happen_between_batches(spark, served, kafka):
    spec, tracker, rows, status, tmp = served
    v1 = register(spark, tracker, spec.name, year_model(1.0))
    logs = []
    watcher = _watcher(spec, tracker, logs, status)
    assert watcher.check() and watcher.take().version == v1

    rng = random.Random(1)
    sent, expect_dlq = [], {}
    for i in range(2400):
        row = rows[i % len(rows)]
        rid = f"r{i}"
        if i % 3 == 0:  # a third of the traffic is fuzzed, every kind
            kind = FUZZ_KINDS[(i // 3) % len(FUZZ_KINDS)]
            key, value = fuzz(spec, kind, rid, row, rng)
            if kind in ("not_json", "truncated", "no_request_id", "huge", "empty", "trailing_garbage",
                        "bad_request_id"):
                expect_dlq[i] = kind
        else:
            key, value = rid, json.dumps(request(spec, rid, row)).encode()
        sent.append((key, value))
    sent += [sent[i] for i in (1, 2, 4, 5, 7)]  # duplicate request_ids are scored again: consumers deduplicate
    _send(kafka.bootstrap, spec, sent)
    ckpt = str(tmp / "ckpt")
    prom = ServingMetrics("kafka")
    _run(scoring_query(spark, spec, watcher, kafka.bootstrap, ckpt, status, max_per_trigger=500, prom=prom))

    preds = read_topic(kafka.bootstrap, topic(spec, "predictions"))
    dlq = read_topic(kafka.bootstrap, topic(spec, "dlq"))
    assert len(preds) + len(dlq) == len(sent) == status.data["requests"]  # requests in = predictions + DLQ
    # the frame was built once, on the first micro-batch, and the next ones reused its plan (scoring.PlanCache):
    # every assertion below holds for the rows of both
    assert status.data["plan_frames"]["built"] == 1 and status.data["plan_frames"]["reused"] >= 4
    reasons = [m["value"]["reason"] for m in dlq]
    assert sum("too large" in r for r in reasons) == sum(k == "huge" for k in expect_dlq.values())
    assert sum("missing request_id" in r for r in reasons) == sum(k == "no_request_id" for k in expect_dlq.values())
    assert sum("not a JSON object" in r for r in reasons) == sum(
        k in ("not_json", "truncated", "empty") for k in expect_dlq.values())
    assert sum(r.startswith("not a single JSON object") for r in reasons) == sum(
        k == "trailing_garbage" for k in expect_dlq.values())
    assert sum(r.startswith("invalid request_id") for r in reasons) == sum(
        k == "bad_request_id" for k in expect_dlq.values())
    assert [e for m in dlq for e in errors("dlq", m["value"])] == []
    assert [e for m in preds for e in errors("predictions", m["value"])] == []
    assert {m["value"]["topic"] for m in dlq} == {topic(spec, "requests")}
    # a required feature that is missing or invalid (year) is dead-lettered with the column named
    assert all(r.startswith(("message too large", "missing request_id", "not a JSON", "not a single JSON",
                             "invalid request_id", "year:", "event_time:")) for r in reasons), set(reasons)
    # predictions: the request's own id as key, version stamped, value = 1.0 * the cleaned year
    by_id = {m["key"]: m["value"] for m in preds}
    for i in range(1, 2400, 3):
        p = by_id[f"r{i}"]
        assert p["model_version"] == v1 and p["model_name"] == spec.name and p["prediction"] == float(
            rows[i % len(rows)]["year"])
    assert all(m["key"] == m["value"]["request_id"] for m in preds)
    # the scorer's Prometheus metrics count the same (the REST API exposes the same families)
    sample = prom.registry.get_sample_value
    assert sample("ml_platform_predictions_total", {"front_end": "kafka", "dataset": spec.name,
                                                    "model_version": v1, "outcome": "scored"}) == len(preds)
    assert sample("ml_platform_predictions_total", {"front_end": "kafka", "dataset": spec.name,
                                                    "model_version": "none", "outcome": "rejected"}) == len(dlq)
    assert sample("ml_platform_model_version", {"front_end": "kafka", "dataset": spec.name,
                                                "role": "champion"}) == float(v1)

    # swap: the alias moves; the next micro-batches use the new version, one version per micro-batch
    v2 = register(spark, tracker, spec.name, year_model(2.0))
    assert watcher.check()
    _send(kafka.bootstrap, spec, [(f"s{i}", json.dumps(request(spec, f"s{i}", rows[i])).encode())
                                  for i in range(300)])
    _run(scoring_query(spark, spec, watcher, kafka.bootstrap, ckpt, status, max_per_trigger=100, prom=prom))
    new = [m for m in read_topic(kafka.bootstrap, topic(spec, "predictions")) if m["key"].startswith("s")]
    assert len(new) == 300 and {m["value"]["model_version"] for m in new} == {v2}
    assert all(m["value"]["prediction"] == 2.0 * float(rows[int(m["key"][1:])]["year"]) for m in new)
    assert sample("ml_platform_model_swaps_total", {"front_end": "kafka", "dataset": spec.name}) == 1

    # a version that cannot load: reported, the current model keeps serving
    broken = tracker.client.create_model_version(spec.name, source=str(tmp / "nothing-here"), run_id=None)
    tracker.client.set_registered_model_alias(spec.name, CHAMPION, broken.version)
    assert not watcher.check()
    assert f"version {broken.version} failed to load" in watcher.last_error and watcher.take().version == v2
    # in the status file at once, with no micro-batch since
    assert f"version {broken.version} failed to load" in json.loads(status.path.read_text())["last_error"]
    # rollback: the alias moves back to v1 and the scorer swaps back the same way
    tracker.client.set_registered_model_alias(spec.name, CHAMPION, v1)
    assert watcher.check() and watcher.take().version == v1
    assert [s[:2] for s in watcher.swaps] == [(None, v1), (v1, v2), (v2, v1)]


def test_live_metrics_equal_an_offline_recomputation(spark, served, kafka):
    spec, tracker, rows, status, tmp = served
    register(spark, tracker, spec.name, year_model(10.0))
    watcher = _watcher(spec, tracker, [])
    watcher.check()
    watcher.take()
    base = "2026-11-23T10:00:{:02d}.000Z"
    reqs, acts = [], []
    for i in range(120):
        rid = f"m{i}"
        reqs.append((rid, json.dumps(request(spec, rid, rows[i], base.format(i % 40))).encode()))
        if i % 4:  # a quarter of the actuals never arrive
            acts.append((rid, {"request_id": rid, "event_time": base.format(i % 40 + 5), "actual": 20000.0 + i}))
    acts.append(acts[0])  # a duplicated actual counts once
    # late traffic moves the watermark past every window above
    reqs.append(("late", json.dumps(request(spec, "late", rows[0], "2026-11-23T10:05:00.000Z")).encode()))
    acts.append(("late", {"request_id": "late", "event_time": "2026-11-23T10:05:01.000Z", "actual": 1.0}))
    _send(kafka.bootstrap, spec, reqs)
    p = producer(kafka.bootstrap)
    for key, value in acts:
        p.send(topic(spec, "actuals"), key=key, value=json.dumps(value).encode())
    p.flush()
    p.close()
    _run(scoring_query(spark, spec, watcher, kafka.bootstrap, str(tmp / "score"), status))
    live, closed = live_and_offline(spark, spec, kafka, tmp, status,
                                    read_topic(kafka.bootstrap, topic(spec, "predictions")))
    assert len(closed) == 4 and set(closed) <= set(live)
    for k, m in closed.items():
        assert live[k]["count"] == m["count"] > 0
        assert live[k]["rmse"] == pytest.approx(m["rmse"]) and live[k]["mae"] == pytest.approx(m["mae"])
    assert sum(m["count"] for m in closed.values()) == 90
    assert set(contract("metrics")["required"]) <= set(next(iter(live.values())))


def test_wire_format_with_kcat(spark, served, kafka):
    """Requests produced by kcat (not this project's client) are scored; kcat reads the predictions back."""
    spec, tracker, rows, status, tmp = served
    v = register(spark, tracker, spec.name, year_model(1.0))
    watcher = _watcher(spec, tracker, [])
    watcher.check()
    watcher.take()
    lines = "".join(f"k{i}\t{json.dumps(request(spec, f'k{i}', rows[i]))}\n" for i in range(50))
    subprocess.run(["kcat", "-P", "-b", kafka.bootstrap, "-t", topic(spec, "requests"), "-K", "\t"],
                   input=lines.encode(), check=True, timeout=60)
    _run(scoring_query(spark, spec, watcher, kafka.bootstrap, str(tmp / "ckpt"), status))
    out = subprocess.run(["kcat", "-C", "-b", kafka.bootstrap, "-t", topic(spec, "predictions"), "-o", "beginning",
                          "-e", "-f", "%k\t%s\n"], capture_output=True, check=True, timeout=60).stdout.decode()
    got = dict(line.split("\t", 1) for line in out.splitlines() if line)
    assert sorted(got) == sorted(f"k{i}" for i in range(50))
    schema = contract("prediction")
    for key, text in got.items():
        msg = json.loads(text)
        assert set(schema["required"]) <= set(msg) and msg["request_id"] == key and msg["model_version"] == v
        assert msg["prediction"] == float(rows[int(key[1:])]["year"]) and msg["probability"] is None
        assert msg["event_time"].endswith("Z") and "T" in msg["scored_at"]


def test_a_megabyte_of_control_bytes_is_a_bounded_dlq_record_and_scoring_goes_on(spark, served, kafka):
    """1 MB of 0x01 is 6 MB once JSON-escaped, over the 4 MB producer limit: the DLQ record carries an excerpt,
    the size and a hash, so the micro-batch's write succeeds and the requests after it are scored."""
    import hashlib

    spec, tracker, rows, status, tmp = served
    v = register(spark, tracker, spec.name, year_model(1.0))
    watcher = _watcher(spec, tracker, [])
    watcher.check()
    watcher.take()
    control = b"\x01" * (1024 * 1024)
    _send(kafka.bootstrap, spec, [("c0", json.dumps(request(spec, "c0", rows[0])).encode()), ("ctl", control)]
          + [(f"c{i}", json.dumps(request(spec, f"c{i}", rows[i])).encode()) for i in range(1, 6)])
    _run(scoring_query(spark, spec, watcher, kafka.bootstrap, str(tmp / "ckpt"), status))
    dlq = read_topic(kafka.bootstrap, topic(spec, "dlq"))
    assert len(dlq) == 1 and dlq[0]["key"] == "ctl"
    d = dlq[0]["value"]
    assert errors("dlq", d) == [] and d["raw"] == "\x01" * DLQ_EXCERPT_CHARS and d["raw_truncated"] is True
    assert d["raw_bytes"] == len(control) and d["raw_sha256"] == hashlib.sha256(control).hexdigest()
    preds = read_topic(kafka.bootstrap, topic(spec, "predictions"))
    assert sorted(m["key"] for m in preds) == [f"c{i}" for i in range(6)]
    assert {m["value"]["model_version"] for m in preds} == {v} and status.data["dlq"] == 1
