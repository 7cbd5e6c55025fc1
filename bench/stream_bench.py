"""Streaming scorer speed, side by side on one broker and one machine, in one run.

  .venv/bin/python bench/stream_bench.py --messages 40000 --rate 1000 --seconds 30

- throughput: the same pre-loaded ~1 KB used_cars requests through (a) a passthrough query (Kafka -> select ->
  Kafka), (b) the scorer with a stack of JVM stages only (linear, random_forest, gbt), (c) the scorer with Python
  stages in the stack (the weighted average regressor and xgboost); each drains the topic with an available-now
  trigger, from its own checkpoint.
  `--warm N` drains N more first and times only the later micro-batches (a warmed-up JVM); `--partitions P` gives
  the requests topic P partitions.
- latency at `--rate` requests/s: request produced -> prediction written (the output record's timestamp minus the
  request's event_time), p50 and p99, passthrough and the JVM-stack scorer. The load comes from a process of its
  own (templated messages), after `--warm-seconds` of the same load; the rate it reached is reported.
- swap: the JVM-stack scorer at `--rate`, the model swapped halfway: per-micro-batch rows, versions and output.

A broker is started on free loopback ports under bench/out/stream/; models are trained on 5,000 simulated rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
OUT = ROOT / "bench" / "out" / "stream"

from conftest import Broker  # noqa: E402
from pyspark.ml import PipelineModel  # noqa: E402

from ml_platform.local.loadgen import stream_rows  # noqa: E402
from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.serve.kafka_io import ensure_topics, producer  # noqa: E402
from ml_platform.serve.messages import encode, now_iso, request, topic  # noqa: E402
from ml_platform.serve.spark_kafka import kafka_source  # noqa: E402
from ml_platform.serve.watcher import ChampionWatcher  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402
from ml_platform.train.features import build_feature_pipeline  # noqa: E402
from ml_platform.train.models import train_models  # noqa: E402
from ml_platform.train.stacking import fit_stack  # noqa: E402
from ml_platform.train.training_set import build_training_set  # noqa: E402
from spark_streaming.scorer import Status, scoring_query  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from train_bench import prepare  # noqa: E402

STACKS = {
    "jvm": {"linear": {"grid": {"regParam": [0.01]}}, "random_forest": {"grid": {"numTrees": [20], "maxDepth": [6]}},
            "gbt": {"grid": {"maxDepth": [4], "maxIter": [20]}}},
    "python": {"linear": {"grid": {"regParam": [0.01]}}, "weighted_average": {"grid": {"regParam": [0.1]}},
               "xgboost": {"grid": {"max_depth": [5], "n_estimators": [60]}}},
}


def train_stack(spark, spec, kind: str) -> PipelineModel:
    s = dataclasses.replace(spec, algorithms=STACKS[kind])
    store = prepare(spark, s, 5000)
    build_training_set(spark, store, s, kind)
    build_feature_pipeline(spark, store, s, kind)
    results = {n: r for n, r in train_models(spark, store, s, kind, list(s.algorithms), 2).items()
               if isinstance(r, dict)}
    return PipelineModel.load(fit_stack(spark, store, s, kind, results)["path"])


def saved_stack(spark, spec, kind: str, folder: str | None) -> PipelineModel:
    path = Path(folder) / kind if folder else None
    if path and path.exists():
        return PipelineModel.load(str(path))
    model = train_stack(spark, spec, kind)
    if path:
        model.write().overwrite().save(str(path))
    return model


def fixed(model, version="1") -> ChampionWatcher:
    w = ChampionWatcher(lambda: version, lambda v: model, log=lambda m: None)
    w.check()
    w.take()
    return w


class Messages:
    """Request messages from the simulated rows, each row encoded (and checked against the contract) once: a message
    is its row's template with the request id and the time put in. Encoding each message takes ~1.3 ms, so a
    generator that encoded every message could not send 1,000 a second."""

    RID, AT = "rid-000000000", "2000-01-01T00:00:00.000Z"

    def __init__(self, spec, rows):
        self.templates = [encode("requests", request(spec, self.RID, r, self.AT)) for r in rows]

    def __call__(self, i: int, rid: str, at: str | None = None) -> bytes:
        return self.templates[i % len(self.templates)].replace(self.RID.encode(), rid.encode()).replace(
            self.AT.encode(), (at or now_iso()).encode())


def preload(bootstrap, spec, rows, name, n) -> float:
    p, make = producer(bootstrap), Messages(spec, rows)
    size = 0
    for i in range(n):
        v = make(i, f"b{i}")
        size += len(v)
        p.send(name, key=f"b{i}", value=v)
    p.flush()
    p.close()
    return size / n


def passthrough(spark, bootstrap, src, dst, ckpt, available_now=True):
    w = (kafka_source(spark, bootstrap, src, 10000).select("key", "value").writeStream.format("kafka")
         .option("kafka.bootstrap.servers", bootstrap).option("topic", dst).option("checkpointLocation", ckpt))
    return (w.trigger(availableNow=True) if available_now else w).start()


def drain_scorer(spark, spec, watcher, bootstrap, ckpt):
    return scoring_query(spark, spec, watcher, bootstrap, ckpt, Status(None, spec.name), max_per_trigger=10000)


def timed(query, warm: int = 0) -> float:
    """Seconds to drain the topic. With `warm`, the micro-batches that read the first `warm` messages are left
    out: the time is the sum of the later micro-batches' own durations (the JVM compiles the hot code during the
    first minute or so; a serving scorer runs for hours)."""
    t0 = time.perf_counter()
    query.processAllAvailable()
    dt = time.perf_counter() - t0
    progress = sorted(query.recentProgress, key=lambda p: p["batchId"])
    query.stop()
    if not warm:
        return dt
    seen, spent, rows = 0, 0.0, 0
    for p in progress:
        if seen >= warm:
            spent += p["durationMs"].get("triggerExecution", 0) / 1000
            rows += p["numInputRows"]
        seen += p["numInputRows"]
    return spent * (seen - warm) / rows if rows else float("nan")


def latencies(bootstrap, out_topic, since_ms, prefix: str = "") -> list[float]:
    """Output record timestamp minus the request's event_time, in ms, for records written after `since_ms` whose
    key (the request id) starts with `prefix`."""
    from kafka import KafkaConsumer, TopicPartition

    from ml_platform.serve.kafka_io import _decode

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    parts = [TopicPartition(out_topic, p) for p in c.partitions_for_topic(out_topic) or []]
    c.assign(parts)
    for tp, off in c.offsets_for_times({tp: since_ms for tp in parts}).items():
        c.seek(tp, off.offset) if off else c.seek_to_end(tp)
    out = []
    from datetime import datetime

    for m in c:
        if not (m.key or b"").decode(errors="replace").startswith(prefix):
            continue
        v = _decode(m.value)
        if isinstance(v, dict) and "event_time" in v:
            t = datetime.fromisoformat(v["event_time"].replace("Z", "+00:00")).timestamp() * 1000
            out.append(m.timestamp - t)
    c.close()
    return out


def load_at_rate(bootstrap, spec, rows, name, rate, seconds, prefix) -> int:
    """Send `rate` requests a second for `seconds`; returns how many were sent."""
    p, make = producer(bootstrap), Messages(spec, rows)
    t0 = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        p.send(name, key=f"{prefix}{i}", value=make(i, f"{prefix}{i}"))
    p.flush()
    p.close()
    return n


def _load_child(rate_out, *args) -> None:
    t0 = time.monotonic()
    n = load_at_rate(*args)
    rate_out.value = n / (time.monotonic() - t0)


def load_elsewhere(bootstrap, spec, rows, name, rate, seconds, prefix) -> float:
    """load_at_rate in a process of its own (in this one, it would share the GIL with the driver's foreachBatch
    calls and fall short of the rate); returns the rate achieved."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rate_out = ctx.Value("d", 0.0)
    child = ctx.Process(target=_load_child, args=(rate_out, bootstrap, spec, rows, name, rate, seconds, prefix))
    child.start()
    child.join()
    return rate_out.value


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--only", default="throughput,latency,swap")
    ap.add_argument("--warm", type=int, default=0, help="throughput: messages each query drains before the timed "
                    "ones (JIT warm-up)")
    ap.add_argument("--partitions", type=int, default=2, help="partitions of the requests topic")
    ap.add_argument("--stacks", default="jvm,python", help="throughput: the stacks to time (jvm is always timed)")
    ap.add_argument("--warm-seconds", type=float, default=0, help="latency: seconds of load at --rate before the "
                    "measured --seconds (JIT warm-up)")
    ap.add_argument("--models", help="a folder of saved stacks (jvm/, python/): loaded when there, else trained "
                    "and saved there, so that runs of several commits serve the same models")
    a = ap.parse_args()
    only = set(a.only.split(","))
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    broker = Broker(OUT / "kafka")
    broker.start()
    spark = local_session("stream-bench", threads=2, shuffle_partitions=2, driver_memory="4g", jars_dir=ROOT / ".jars")
    spec = builtin_specs()["used_cars"]
    bs = broker.bootstrap
    report = {}
    try:
        ensure_topics(bs, spec.name, a.partitions)
        write_batch(SimConfig("used_cars", 4000, test_share=0.5, broken_share=0.0, seed=9), 1, OUT / "land",
                    OUT / "test")
        rows = [r for _, r in stream_rows(OUT / "test")]
        models = {k: saved_stack(spark, spec, k, a.models) for k in STACKS}
        req = topic(spec, "requests")
        if "throughput" in only:
            size = preload(bs, spec, rows, req, a.warm + a.messages)
            n, w = a.messages, a.warm
            t_pass = timed(passthrough(spark, bs, req, "bench.passthrough", str(OUT / "ck-pass"), w == 0), w)
            t_jvm = timed(drain_scorer(spark, spec, fixed(models["jvm"]), bs, str(OUT / "ck-jvm")), w)
            report["throughput"] = {
                "messages": n, "warm_up_messages": w, "partitions": a.partitions, "avg_request_bytes": round(size),
                "passthrough_msgs_s": n / t_pass, "scorer_jvm_stack_msgs_s": n / t_jvm, "ratio_jvm": t_pass / t_jvm}
            if "python" in a.stacks.split(","):
                t_py = timed(drain_scorer(spark, spec, fixed(models["python"]), bs, str(OUT / "ck-py")), w)
                report["throughput"] |= {"scorer_python_stack_msgs_s": n / t_py, "ratio_python": t_pass / t_py}
            print(json.dumps(report["throughput"]), flush=True)
        if "latency" in only:
            res = {}
            for kind in ("passthrough", "scorer"):
                ls = dataclasses.replace(spec, name=f"bench.lat_{kind}")
                ensure_topics(bs, ls.name)
                src = topic(ls, "requests")
                if kind == "passthrough":
                    dst = topic(ls, "predictions")
                    q = passthrough(spark, bs, src, dst, str(OUT / f"ck-lat-{kind}"), available_now=False)
                else:
                    dst = topic(ls, "predictions")
                    q = scoring_query(spark, ls, fixed(models["jvm"]), bs, str(OUT / f"ck-lat-{kind}"),
                                      Status(None, ls.name))
                time.sleep(5)
                if a.warm_seconds:  # the same load before the measured window, whose outputs are left out
                    load_elsewhere(bs, spec, rows, src, a.rate, a.warm_seconds, f"w{kind}")
                since = int(time.time() * 1000)
                achieved = load_elsewhere(bs, spec, rows, src, a.rate, a.seconds, f"l{kind}")
                time.sleep(5)
                drained = time.monotonic() + 300  # a backlog is written before stopping, so that p99 counts it
                while time.monotonic() < drained and (q.status["isDataAvailable"] or q.status["isTriggerActive"]):
                    time.sleep(1)
                q.stop()
                lat = latencies(bs, dst, since, f"l{kind}")
                res[kind] = {"n": len(lat), "rate_achieved": round(achieved), "p50_ms": pct(lat, 0.5),
                             "p99_ms": pct(lat, 0.99),
                             "mean_ms": statistics.fmean(lat) if lat else None}
            report["latency"] = res
            print(json.dumps(res), flush=True)
        if "swap" in only:
            sw_spec = dataclasses.replace(spec, name="bench.swap")
            ensure_topics(bs, sw_spec.name)
            batches = []
            watcher = fixed(models["jvm"], "1")
            q = scoring_query(spark, sw_spec, watcher, bs, str(OUT / "ck-swap"), Status(None, spec.name),
                              on_batch=lambda *b: batches.append((time.monotonic(),) + b))
            time.sleep(5)
            t0 = time.monotonic()
            loader = threading.Thread(target=load_at_rate, args=(bs, spec, rows, topic(sw_spec, "requests"),
                                                                 a.rate, a.seconds, "s"))
            loader.start()
            time.sleep(a.seconds / 2)
            watcher.resolve, watcher.load = (lambda: "2"), (lambda v: models["jvm"].copy())
            t_swap = time.monotonic()
            watcher.check()
            loader.join()
            time.sleep(5)
            q.stop()
            busy = [b for b in batches if b[0] >= t0]
            before = [b for b in busy if b[0] < t_swap]
            after = [b for b in busy if b[0] >= t_swap]

            def rate_of(bs_):
                return sum(b[3] + b[4] for b in bs_) / max(1e-9, bs_[-1][0] - bs_[0][0]) if len(bs_) > 1 else None

            report["swap"] = {
                "batches": len(busy), "empty_output_batches": sum(1 for b in busy if b[3] + b[4] == 0),
                # one model is taken per micro-batch, so a batch cannot mix versions; the sequence shows the switch
                "version_switches": sum(1 for x, y in zip(busy, busy[1:], strict=False) if x[2] != y[2]),
                "version_sequence": [b[2] for b in busy],
                "rate_before": rate_of(before), "rate_after": rate_of(after),
                "swap_load_seconds": watcher.current.load_seconds}
            print(json.dumps({k: v for k, v in report["swap"].items() if k != "version_sequence"}), flush=True)
    finally:
        spark.stop()
        broker.stop()
    (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
