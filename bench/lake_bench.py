"""Delta tables against the Parquet folders they replaced, side by side in one run (issue 18).

1. Ingest and clean of one CSV (1M rows): bronze, quarantine and silver as Delta tables (the platform now) against
   the same work written as Parquet folders with marker files (the platform before: the old flow, kept here as the
   baseline). The cleaning expressions are the same; what differs is the writes, the MERGE and the commits.
2. Reading the training set's rows from N batches: listing the accepted batches, reading each folder and keeping the
   newest row per key (before) against reading the silver table, which holds one row per key already (now).
3. MERGE cost per batch as the silver table grows to N batches (each batch re-sends a fifth of the previous batch's
   keys with a newer listing date).
4. Predictions as a Delta table (the prediction store's question): a lookup by request id and an analytic scan.

    .venv/bin/python bench/lake_bench.py --rows 1000000 --batches 50 --batch-rows 10000
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out"


def parquet_flow(spark, store, spec, key: str, name: str) -> dict:
    """The pre-Delta ingest and clean of one batch (bronze, quarantine and silver as Parquet folders, then the profile
    and the acceptance marker), as ml_platform/data/layers.py did it before this issue."""
    from pyspark.sql import functions as F

    from ml_platform.data.cleaning import REASON, classify, cleaned_rows, quarantined_rows
    from ml_platform.data.ingest import CORRUPT, check_header, read_csv
    from ml_platform.data.layers import per_operator_codegen, profile

    rel = f"landing/{spec.name}/{name}"
    header = check_header(store.read_head(rel), spec, os.path.getsize(store.path(rel)))
    bronze, silver, quarantine = (store.uri(f"{layer}/{spec.name}/batch={key}")
                                  for layer in ("bronze", "silver", "quarantine"))
    read_csv(spark, store.uri(rel), header, spec).write.mode("overwrite").parquet(bronze)
    spark.read.parquet(bronze).agg(F.count(F.lit(1)), F.count(CORRUPT)).first()
    classified = classify(spark.read.parquet(bronze), spec)
    with per_operator_codegen(spark):
        quarantined_rows(classified).write.mode("overwrite").parquet(quarantine)
        cleaned_rows(classified, spec).write.mode("overwrite").parquet(silver)
    spark.read.parquet(quarantine).groupBy(REASON).count().collect()
    out = profile(spark.read.parquet(silver), spec)
    store.write_json(f"silver/{spec.name}/_accepted/{key}.json", {"partition": key, "cleaned": out["cleaned"]})
    return out


def delta_flow(spark, store, spec, key: str, name: str) -> dict:
    from ml_platform.data.layers import clean_stored_batch, ingest_batch

    ingest_batch(spark, store, spec, key, name)
    return clean_stored_batch(spark, store, spec, key)


def bench_ingest(spark, spec, csv: Path, warm: Path, rounds: int) -> dict:
    from ml_platform.stores import LocalStore

    times = {"parquet": [], "delta": []}
    rows = {}
    for i in range(rounds + 1):  # round 0 warms the JVM on a small file and is not counted
        for flow in ("parquet", "delta") if i % 2 else ("delta", "parquet"):
            with tempfile.TemporaryDirectory(dir=OUT) as tmp:
                store = LocalStore(Path(tmp) / "data")
                f = warm if i == 0 else csv
                (Path(tmp) / "data/landing" / spec.name).mkdir(parents=True)
                os.link(f, store.path(f"landing/{spec.name}/{f.name}"))
                t0 = time.perf_counter()
                out = (parquet_flow if flow == "parquet" else delta_flow)(spark, store, spec, f.stem, f.name)
                if i:
                    times[flow].append(time.perf_counter() - t0)
                    rows[flow] = out["cleaned"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rows_cleaned": rows, "seconds": times, "median_s": med,
            "delta_over_parquet": med["delta"] / med["parquet"]}


def batch_rows(template, b: int):
    """Batch `b`: the template's cleaned rows under new keys, except every fifth row, which re-sends a key that was
    new in batch b-1, listed one day later (so the MERGE updates it)."""
    from pyspark.sql import functions as F

    i = F.monotonically_increasing_id()
    repeat = (i % 5 == 0) & F.lit(b > 1)
    # row i+1 of batch b-1 was new there (i+1 is not a multiple of 5)
    key = F.when(repeat, F.concat(F.lit(f"{b - 1}-"), (i + 1).cast("string"))).otherwise(
        F.concat(F.lit(f"{b}-"), i.cast("string")))
    return (template.withColumn("listing_id", key)
            .withColumn("listed_date", F.date_add(F.lit("2026-01-01").cast("date"), b)))


def old_training_read(spark, store, spec):
    """Before: list the accepted markers, read each batch folder, keep the newest batch's row per key."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = sorted(f.name.removesuffix(".json") for f in store.list_files(f"silver/{spec.name}/_accepted"))
    order = {k: i for i, k in enumerate(keys)}
    df = None
    for k in keys:
        part = spark.read.parquet(store.uri(f"silver/{spec.name}/batch={k}")).withColumn("__batch", F.lit(k))
        df = part if df is None else df.unionByName(part)
    rank = F.create_map(*[x for k, i in order.items() for x in (F.lit(k), F.lit(i))])[F.col("__batch")]
    w = Window.partitionBy(spec.key).orderBy(rank.desc())
    return (df.withColumn("__rn", F.row_number().over(w)).where((F.col("__rn") == 1) | F.col(spec.key).isNull())
            .drop("__rn"))


def bench_growth(spark, spec, batches: int, batch_size: int, read_rounds: int) -> dict:
    from ml_platform import lake
    from ml_platform.data.layers import clean_stored_batch, ingest_batch
    from ml_platform.data.silver import META, accept_rows
    from ml_platform.local.simulate import SimConfig, write_batch
    from ml_platform.stores import LocalStore

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        seed = LocalStore(Path(tmp) / "seed")
        csv = write_batch(SimConfig(spec.name, rows_per_batch=batch_size, seed=7), 1,
                          seed.path(f"landing/{spec.name}"), None)
        ingest_batch(spark, seed, spec, csv.stem)
        clean_stored_batch(spark, seed, spec, csv.stem)
        template = lake.read(spark, seed.uri(f"silver/{spec.name}/rows")).drop(*META).cache()
        template.count()
        old, new = LocalStore(Path(tmp) / "old"), LocalStore(Path(tmp) / "new")
        merge_s, append_s = [], []
        for b in range(1, batches + 1):
            rows = batch_rows(template, b).cache()
            rows.count()
            key = f"batch-{b:05d}"
            t0 = time.perf_counter()
            rows.write.mode("overwrite").parquet(old.uri(f"silver/{spec.name}/batch={key}"))
            old.write_json(f"silver/{spec.name}/_accepted/{key}.json", {"partition": key})
            append_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            accept_rows(spark, new, spec, key, rows, f"2026-01-01T{b // 60:02d}:{b % 60:02d}:00")
            merge_s.append(time.perf_counter() - t0)
            rows.unpersist()
            print(f"batch {b}: parquet folder {append_s[-1]:.2f} s, MERGE {merge_s[-1]:.2f} s", flush=True)
        reads = {"old": [], "new": []}
        counts = {}
        for i in range(read_rounds):
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                t0 = time.perf_counter()
                df = old_training_read(spark, old, spec) if name == "old" else lake.read(
                    spark, new.uri(f"silver/{spec.name}/rows"))
                counts[name] = df.count()
                df.write.format("noop").mode("overwrite").save()
                reads[name].append(time.perf_counter() - t0)
        silver_files = len(list(Path(new.path(f"silver/{spec.name}/rows")).glob("*.parquet")))
    med = {k: statistics.median(v) for k, v in reads.items()}
    pick = sorted({1, 2, 10, batches // 2, batches})
    return {"batches": batches, "rows_per_batch": batch_size, "merge_s": {b: round(merge_s[b - 1], 2) for b in pick},
            "parquet_folder_s": {b: round(append_s[b - 1], 2) for b in pick},
            "merge_s_first_10_mean": statistics.mean(merge_s[:10]),
            "merge_s_last_10_mean": statistics.mean(merge_s[-10:]),
            "rows": counts, "read_s": reads, "read_median_s": med, "delta_read_speedup": med["old"] / med["new"],
            "silver_data_files": silver_files}


def bench_prediction_lookup(spark, rows: int, lookups: int) -> dict:
    """Predictions as a Delta table, for the prediction store's question: a lookup by request id (the store's hot
    path) and an analytic scan (what Delta would add), on a table before and after OPTIMIZE ZORDER BY request_id."""
    import random

    from pyspark.sql import functions as F

    from ml_platform import lake

    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        uri = str(Path(tmp) / "predictions")
        preds = (spark.range(rows).select(
            F.sha2(F.col("id").cast("string"), 256).substr(1, 32).alias("request_id"),
            (F.rand(1) * 50000).alias("prediction"), (F.col("id") % 3).cast("string").alias("model_version"),
            F.current_timestamp().alias("scored_at")).repartition(16))
        # a lookup table wants the per-file statistics the platform's own tables go without (data skipping)
        stats = "spark.databricks.delta.properties.defaults.dataSkippingNumIndexedCols"
        before = spark.conf.get(stats, "0")
        spark.conf.set(stats, "32")
        try:
            lake.overwrite(preds, uri)
        finally:
            spark.conf.set(stats, before)
        ids = [r[0] for r in spark.read.format("delta").load(uri).sample(0.001, 3).limit(lookups).collect()]
        random.Random(5).shuffle(ids)

        def lookup_ms() -> list[float]:
            out = []
            for rid in ids:
                t0 = time.perf_counter()
                got = lake.read(spark, uri).where(F.col("request_id") == rid).collect()
                out.append((time.perf_counter() - t0) * 1000)
                assert len(got) == 1
            return out

        def scan_s() -> float:
            t0 = time.perf_counter()
            lake.read(spark, uri).groupBy("model_version").agg(F.avg("prediction"), F.count(F.lit(1))).collect()
            return time.perf_counter() - t0

        lookup_ms()  # warm
        plain, plain_scan = lookup_ms(), scan_s()
        spark.sql(f"OPTIMIZE {lake.sql_path(uri)} ZORDER BY (request_id)")
        zordered, z_scan = lookup_ms(), scan_s()
    q = statistics.quantiles
    return {"rows": rows, "lookups": len(ids),
            "lookup_ms_p50_p99": {"plain": [statistics.median(plain), q(plain, n=100)[98]],
                                  "zorder": [statistics.median(zordered), q(zordered, n=100)[98]]},
            "scan_by_model_version_s": {"plain": plain_scan, "zorder": z_scan}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--warm-rows", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-rows", type=int, default=10_000)
    ap.add_argument("--read-rounds", type=int, default=3)
    ap.add_argument("--lookup-rows", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=40)
    ap.add_argument("--only", choices=["ingest", "growth", "lookup"])
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    from ingest_bench import make_csv

    from ml_platform.spark import local_session
    from ml_platform.spec import builtin_specs

    spark = local_session("lake-bench", shuffle_partitions=8, driver_memory="8g")
    spec = builtin_specs()["used_cars"]
    out = {}
    if a.only in (None, "ingest"):
        out["ingest"] = bench_ingest(spark, spec, make_csv(a.rows), make_csv(a.warm_rows), a.rounds)
        print(json.dumps(out["ingest"], indent=1), flush=True)
    if a.only in (None, "growth"):
        out["growth"] = bench_growth(spark, spec, a.batches, a.batch_rows, a.read_rounds)
        print(json.dumps(out["growth"], indent=1), flush=True)
    if a.only in (None, "lookup"):
        out["lookup"] = bench_prediction_lookup(spark, a.lookup_rows, a.lookups)
        print(json.dumps(out["lookup"], indent=1), flush=True)
    (OUT / "lake_bench.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
