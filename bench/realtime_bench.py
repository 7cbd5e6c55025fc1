"""Spark's real-time trigger for the stateless scoring query, beside the micro-batch scorer, in one run.

  .venv/bin/python bench/realtime_bench.py --rate 1000 --seconds 30 [--models bench/out/models]

Real-time mode (Spark 4.1+) runs long-lived tasks that read, score and write each record as it arrives; it allows
no foreachBatch, so the query is one plan: Kafka -> parse_requests -> the champion -> served_messages -> Kafka,
with the model fixed in the plan. This measures, on one broker and one SparkSession:

- latency at `--rate` requests/s (request's event_time -> output record's timestamp), p50 and p99: the real-time
  query, the same single plan in micro-batches (default trigger), and the micro-batch scorer
  (`spark_streaming.scorer.scoring_query`, foreachBatch, which builds its plan per micro-batch);
- what a model swap does to it: the real-time query stopped mid-stream and started again from its checkpoint
  with version 2 (a swap needs a new plan); every request's outputs are then read back and counted: requests with
  no output (lost), with more than one (duplicated), and scored by both versions; and the longest gap in output.

A broker is started on free loopback ports under bench/out/realtime/; the JVM stack is trained on 5,000 rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out" / "realtime"

from conftest import Broker  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from stream_bench import fixed, load_at_rate, pct, saved_stack  # noqa: E402

from ml_platform.data.cleaning import REASON  # noqa: E402
from ml_platform.local.loadgen import stream_rows  # noqa: E402
from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.serve.kafka_io import _decode, ensure_topics  # noqa: E402
from ml_platform.serve.messages import topic  # noqa: E402
from ml_platform.serve.scoring import parse_requests, score, served_messages  # noqa: E402
from ml_platform.serve.spark_kafka import kafka_source  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402
from spark_streaming.scorer import Status, scoring_query  # noqa: E402

PARSE_REASON = "__parse_reason"


def realtime_query(spark, spec, model, version: str, bootstrap: str, ckpt: str, duration: str | None):
    """The scorer's hot path as one stateless streaming plan (no foreachBatch), under the real-time trigger
    (`duration` None: the same plan in micro-batches, as fast as possible)."""
    parsed = parse_requests(
        kafka_source(spark, bootstrap, topic(spec, "requests"), None), spec, spec.serving.max_request_bytes
    ).withColumnRenamed(REASON, PARSE_REASON)
    scored = score(model, parsed, spec, spec.name, version, carry=(PARSE_REASON,))
    scored = scored.withColumn(REASON, F.coalesce(PARSE_REASON, REASON))
    out = served_messages(scored, topic(spec, "predictions"), topic(spec, "dlq"))
    w = (
        out.writeStream.format("kafka")
        .option("kafka.bootstrap.servers", bootstrap)
        .option("checkpointLocation", ckpt)
        .outputMode("update")
    )
    return (w.trigger(realTime=duration) if duration else w).start()


def outputs(bootstrap: str, out_topic: str) -> list[dict]:
    """Every record of `out_topic`: request_id, model_version, event_time and the record's timestamp (ms)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    parts = [TopicPartition(out_topic, p) for p in c.partitions_for_topic(out_topic) or []]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    from datetime import datetime

    out = []
    for m in c:
        v = _decode(m.value)
        if isinstance(v, dict) and "event_time" in v:
            t = datetime.fromisoformat(v["event_time"].replace("Z", "+00:00")).timestamp() * 1000
            out.append(
                {
                    "id": v.get("request_id"),
                    "version": v.get("model_version"),
                    "ts": m.timestamp,
                    "latency_ms": m.timestamp - t,
                }
            )
    c.close()
    return out


def summary(lat: list[float]) -> dict:
    return {
        "n": len(lat),
        "p50_ms": round(pct(lat, 0.5), 1),
        "p99_ms": round(pct(lat, 0.99), 1),
        "max_ms": round(max(lat), 1) if lat else None,
    }


def run_latency(spark, spec, bs, rows, a, kind: str, model) -> dict:
    ls = dataclasses.replace(spec, name=f"bench.rt_{kind}")
    ensure_topics(bs, ls.name)
    ck = str(OUT / f"ck-{kind}")
    if kind == "realtime":
        q = realtime_query(spark, ls, model, "1", bs, ck, a.duration)
    elif kind == "one_plan_micro_batch":
        q = realtime_query(spark, ls, model, "1", bs, ck, None)
    else:
        q = scoring_query(spark, ls, fixed(model), bs, ck, Status(None, ls.name))
    time.sleep(8)  # started and idle before the load
    n = load_at_rate(bs, spec, rows, topic(ls, "requests"), a.rate, a.seconds, kind)
    time.sleep(8)
    error = q.exception()
    q.stop()
    got = outputs(bs, topic(ls, "predictions"))
    return {"sent": n, **summary([o["latency_ms"] for o in got]), "query_error": str(error)[:300] if error else None}


def run_swap(spark, spec, bs, rows, a, model) -> dict:
    """The real-time query swapped from version 1 to 2 mid-stream, as a swap must be done in this mode: stop the
    query, start a new plan with the new model from the same checkpoint."""
    ss = dataclasses.replace(spec, name="bench.rt_swap")
    ensure_topics(bs, ss.name)
    ck = str(OUT / "ck-swap")
    q = realtime_query(spark, ss, model, "1", bs, ck, a.duration)
    time.sleep(8)
    sent = {}
    loader = threading.Thread(
        target=lambda: sent.setdefault("n", load_at_rate(bs, spec, rows, topic(ss, "requests"), a.rate, a.seconds, "s"))
    )
    loader.start()
    time.sleep(a.seconds / 2)
    t0 = time.time()
    q.stop()
    t_stopped = time.time()
    q = realtime_query(spark, ss, model.copy(), "2", bs, ck, a.duration)
    t_started = time.time()
    loader.join()
    time.sleep(10)
    q.stop()
    got = outputs(bs, topic(ss, "predictions"))
    per = defaultdict(list)
    for o in got:
        per[o["id"]].append(o["version"])
    ids = {f"s{i}" for i in range(sent["n"])}
    ts = sorted(o["ts"] for o in got)
    gaps = [(b - a_) for a_, b in zip(ts, ts[1:], strict=False)]
    return {
        "sent": sent["n"],
        "outputs": len(got),
        "lost": len(ids - set(per)),
        "duplicated": sum(1 for v in per.values() if len(v) > 1),
        "scored_by_both_versions": sum(1 for v in per.values() if len(set(v)) > 1),
        "versions": dict(Counter(v for vs in per.values() for v in vs)),
        "stop_seconds": round(t_stopped - t0, 2),
        "start_seconds": round(t_started - t_stopped, 2),
        "longest_output_gap_ms": max(gaps) if gaps else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--duration", default="10 seconds", help="the real-time trigger's batch (checkpoint) interval")
    ap.add_argument(
        "--threads",
        type=int,
        default=4,
        help="local[N]: real-time mode holds a task slot per source partition for the whole batch",
    )
    ap.add_argument("--only", default="latency,swap")
    ap.add_argument(
        "--kinds",
        default="realtime,one_plan_micro_batch,micro_batch",
        help="latency runs: the real-time query, the same one plan in micro-batches, the scorer",
    )
    ap.add_argument("--models", help="a folder of saved stacks, as bench/stream_bench.py --models")
    a = ap.parse_args()
    only = set(a.only.split(","))
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    broker = Broker(OUT / "kafka")
    broker.start()
    spark = local_session(
        "realtime-bench", threads=a.threads, shuffle_partitions=2, driver_memory="4g", jars_dir=ROOT / ".jars"
    )
    spec = builtin_specs()["used_cars"]
    report = {"rate": a.rate, "seconds": a.seconds, "duration": a.duration, "threads": a.threads}
    try:
        write_batch(
            SimConfig("used_cars", 4000, test_share=0.5, broken_share=0.0, seed=9), 1, OUT / "land", OUT / "test"
        )
        rows = [r for _, r in stream_rows(OUT / "test")]
        model = saved_stack(spark, spec, "jvm", a.models)
        if "latency" in only:
            for kind in a.kinds.split(","):
                report[kind] = run_latency(spark, spec, broker.bootstrap, rows, a, kind, model)
                print(kind, json.dumps(report[kind]), flush=True)
        if "swap" in only:
            report["swap"] = run_swap(spark, spec, broker.bootstrap, rows, a, model)
            print("swap", json.dumps(report["swap"]), flush=True)
    finally:
        spark.stop()
        broker.stop()
    (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
