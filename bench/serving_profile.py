"""Where a request's time goes in the scorer's micro-batch: each piece of the hot path timed alone on the same
in-memory requests, one SparkSession, one run.

  .venv/bin/python bench/serving_profile.py --rows 20000 --reps 3

The requests are simulated used_cars rows encoded as the load generator sends them (66 raw columns, ~1.7 KB), held
in memory with the Kafka source's columns (topic, partition, offset, key, value), so Kafka's own cost is left out
(bench/stream_bench.py measures it). Each piece runs to Spark's `noop` sink; medians of `--reps` after a warm-up:

- the floor (the bytes read), the text cast, the JSON parse of every column and of the needed columns only, the
  two single-value checks (regular expressions over the whole message), the cleaning (`parse_requests`), the
  model (a JVM stack: linear + random_forest + gbt, trained on 5,000 rows), the output messages (`score_batch`);
- the fixed cost of a micro-batch (one request through `score_batch` and the noop sink, planning included);
- the shape of the output plan (projections, shuffles, generated-code stages) and the Spark jobs one micro-batch
  of the scorer runs (`spark_streaming.scorer`'s foreachBatch body, with a real broker for its writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out" / "serving_profile"

from pyspark.sql import functions as F  # noqa: E402

from ml_platform.data.cleaning import classify  # noqa: E402
from ml_platform.local.loadgen import stream_rows  # noqa: E402
from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.serve.messages import MAX_MESSAGE_BYTES, encode, request  # noqa: E402
from ml_platform.serve.scoring import (  # noqa: E402
    PlanCache,
    parse_requests,
    request_schema,
    score,
    score_batch,
    single_object,
    string_request_id,
)
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402


def requests_frame(spark, spec, n: int):
    write_batch(SimConfig("used_cars", 4000, test_share=0.5, broken_share=0.0, seed=9), 1, OUT / "land", OUT / "test")
    rows = [r for _, r in stream_rows(OUT / "test")]
    data = [("used_cars.requests", i % 2, i, f"p{i}".encode(), encode("requests", request(spec, f"p{i}",
                                                                                          rows[i % len(rows)])))
            for i in range(n)]
    df = spark.createDataFrame(data, "topic string, partition int, offset long, key binary, value binary")
    df = df.repartition(2).persist()
    df.count()
    return df, sum(len(d[4]) for d in data) / n


def noop(made) -> float:
    """Time one run of a piece to the noop sink. A piece may return (frame, frames it cached): those are dropped
    after the run, so that the next run computes them again (a persisted parse left in Spark's cache would be
    found by the next identical plan and make it look free)."""
    df, cached = made if isinstance(made, tuple) else (made, [])
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    dt = time.perf_counter() - t
    for c in cached:
        c.unpersist()
    return dt


def median_time(make, reps: int) -> float:
    noop(make())  # warm-up: code generation, class loading
    return statistics.median(noop(make()) for _ in range(reps))


def plan_shape(df) -> dict:
    plan = df._jdf.queryExecution().executedPlan().toString()
    return {"projects": len(re.findall(r"\bProject\b", plan)), "exchanges": len(re.findall(r"\bExchange\b", plan)),
            "codegen_stages": len(re.findall(r"\*\(\d+\)", plan) and set(re.findall(r"\*\((\d+)\)", plan))),
            "in_memory_scans": plan.count("InMemoryTableScan"), "plan_lines": plan.count("\n")}


def jobs_per_micro_batch(spark, spec, model, src) -> dict:
    """The Spark jobs and stages of the scorer's foreachBatch body on 2,000 requests, writing to a real broker."""
    from conftest import Broker

    from ml_platform.serve.kafka_io import ensure_topics
    from ml_platform.serve.messages import topic
    from ml_platform.serve.scoring import OUTPUT_UNIT
    from ml_platform.serve.spark_kafka import write_isolating

    broker = Broker(OUT / "kafka")
    broker.start()
    try:
        ensure_topics(broker.bootstrap, spec.name)
        batch = src.limit(2000).persist()
        batch.count()
        sc = spark.sparkContext
        result = {}
        for attempt in ("warm-up", "measured"):
            sc.setJobGroup(f"mb-{attempt}", "one micro-batch")
            t = time.perf_counter()
            out, cached = score_batch(batch, spec, model, spec.name, "1", MAX_MESSAGE_BYTES, keep_source=True)
            written = write_isolating(out, broker.bootstrap, OUTPUT_UNIT, lambda: None, MAX_MESSAGE_BYTES,
                                      [topic(spec, t) for t in ("predictions", "dlq", "shadow")])
            for c in cached:
                c.unpersist()
            dt = time.perf_counter() - t
            jobs = sc.statusTracker().getJobIdsForGroup(f"mb-{attempt}")
            stages = sum(len(sc.statusTracker().getJobInfo(j).stageIds) for j in jobs)
            result = {"jobs": len(jobs), "stages": stages, "seconds": round(dt, 3), "rows": sum(written.rows.values())}
        # the write alone: the same micro-batch's output records computed once and cached, then written
        out, _ = score_batch(batch, spec, model, spec.name, "1", MAX_MESSAGE_BYTES, keep_source=True)
        out = out.persist()
        out.count()
        alone = []
        for _ in range(3):
            t = time.perf_counter()
            write_isolating(out, broker.bootstrap, OUTPUT_UNIT, lambda: None, MAX_MESSAGE_BYTES,
                            [topic(spec, t) for t in ("predictions", "dlq", "shadow")])
            alone.append(time.perf_counter() - t)
        out.unpersist()
        result["write_alone_seconds"] = round(statistics.median(alone), 3)
        sc.setJobGroup("", "")
        return result
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-model", action="store_true", help="skip training the stack (no model pieces)")
    ap.add_argument("--models", help="a folder of saved stacks, as bench/stream_bench.py --models")
    a = ap.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spark = local_session("serving-profile", threads=2, shuffle_partitions=2, driver_memory="4g",
                          jars_dir=ROOT / ".jars")
    spec = builtin_specs()["used_cars"]
    src, size = requests_frame(spark, spec, a.rows)
    raw = F.col("value").cast("string")
    full = request_schema(spec)
    numeric, categorical = spec.feature_columns()
    needed = ["request_id", "event_time", *sorted(set(numeric) | set(categorical))]
    pieces = {
        "read (floor)": lambda: src.select(F.length("value")),
        "text cast": lambda: src.select(F.length(raw)),
        "from_json, all 66 columns": lambda: src.select(F.from_json(raw, full).alias("j")).select("j.*"),
        f"from_json, the {len(needed)} read columns": lambda: src.select(
            F.from_json(raw, F.StructType([f for f in full.fields if f.name in needed])).alias("j")).select("j.*"),
        "single_object check": lambda: src.select(single_object(raw)),
        "string_request_id check": lambda: src.select(string_request_id(raw)),
        "parse_requests (parse, checks, cleaning)": lambda: parse_requests(src, spec, MAX_MESSAGE_BYTES),
    }
    # the cleaning by expression family: `classify` over the request columns already parsed from JSON (held in
    # memory), with a spec reduced to the target, the key and the columns of one parse rule
    flat = src.select(F.from_json(raw, full).alias("j")).select("j.*").persist()
    flat.count()
    for family in ("string", "category", "number", "unit", "rating", "bool", "date"):
        sub = dataclasses.replace(spec, derived=(), columns=tuple(
            c for c in spec.columns if c.parse == family or c.name in (spec.target, spec.key)))
        cols = [c for c in sub.cleaned_columns if c != sub.target]
        n = sum(1 for c in sub.columns if c.parse == family)
        pieces[f"cleaning: {n} {family} columns"] = (
            lambda sub=sub, cols=cols: classify(flat, sub, serving=True).select(*cols, "_reject_reason"))
    pieces[f"cleaning: all columns, {len(spec.derived)} derived"] = lambda: classify(flat, spec, serving=True).select(
        *[c for c in spec.cleaned_columns if c != spec.target], "_reject_reason")
    model = None
    if not a.no_model:
        from stream_bench import saved_stack

        model = saved_stack(spark, spec, "jvm", a.models)
        pieces["+ model (JVM stack)"] = lambda: score(model, parse_requests(src, spec, MAX_MESSAGE_BYTES).where(
            F.col("_reject_reason").isNull()), spec, spec.name, "1")
        pieces["score_batch (the output messages)"] = lambda: score_batch(src, spec, model, spec.name, "1",
                                                                          MAX_MESSAGE_BYTES, keep_source=True)
    report = {"rows": a.rows, "avg_request_bytes": round(size), "pieces": {}}
    base = None
    for name, make in pieces.items():
        t = median_time(make, a.reps)
        base = base or t
        report["pieces"][name] = {"seconds": round(t, 3), "rows_per_s": round(a.rows / t)}
        print(f"{name:48s} {t:7.3f} s {a.rows / t:10.0f} rows/s", flush=True)
    if model is not None:
        one = src.limit(1).persist()
        one.count()
        plans = PlanCache()
        for label, frame in (("built", lambda: score_batch(one, spec, model, spec.name, "1", MAX_MESSAGE_BYTES,
                                                             keep_source=True)),
                             ("reused (PlanCache)", lambda: plans.frame(one, ("1",), lambda: score_batch(
                                 one, spec, model, spec.name, "1", MAX_MESSAGE_BYTES, keep_source=True)))):
            times, builds = [], []
            for _ in range(10):
                t = time.perf_counter()
                out, cached = frame()
                built = time.perf_counter()
                out.write.format("noop").mode("overwrite").save()
                for c in cached:
                    c.unpersist()
                times.append(time.perf_counter() - t)
                builds.append(built - t)
            report[f"one_request_micro_batch_ms, frame {label}"] = {
                "total": round(1000 * statistics.median(times[2:]), 1),
                "building the frame": round(1000 * statistics.median(builds[2:]), 1)}
            print(f"one-request micro-batch, frame {label}:", report[f"one_request_micro_batch_ms, frame {label}"],
                  flush=True)
        out, _ = score_batch(src, spec, model, spec.name, "1", MAX_MESSAGE_BYTES, keep_source=True)
        report["output_plan"] = plan_shape(out)
        print("output plan:", report["output_plan"], flush=True)
        report["micro_batch_jobs"] = jobs_per_micro_batch(spark, spec, model, src)
        print("one micro-batch of the scorer (score_batch + write_isolating to a real broker):",
              report["micro_batch_jobs"], flush=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
