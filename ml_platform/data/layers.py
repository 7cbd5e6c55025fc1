"""The bronze and silver layers as store-level operations: what the Dagster assets call, minus Dagster. Both are
Delta tables (ml_platform/lake.py); silver's MERGE and its acceptance record live in data/silver.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from contextlib import contextmanager

from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.data.cleaning import REASON, classify, cleaned_rows, quarantined_rows
from ml_platform.data.ingest import CORRUPT, RejectedFile, check_header, read_csv
from ml_platform.data.landing import partition_key
from ml_platform.data.silver import commit_silver
from ml_platform.layout import (
    accepted_marker,
    batch_record_path,
    bronze_table,
    content_hash_marker,
    landed_file,
    landing_dir,
    quarantine_files_dir,
    quarantine_table,
    rejected_marker,
    silver_table,
)
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store


def find_landed_file(store: Store, spec: DatasetSpec, key: str) -> str:
    """The landed file of a partition, by listing the landing zone: for a run launched without the sensor's
    `ml_platform/file` tag (by hand, or a backfill)."""
    names = [f.name for f in store.list_files(landing_dir(spec)) if partition_key(f.name) == key]
    if not names:
        raise RejectedFile(f"no file in {landing_dir(spec)}/ has partition key {key!r}")
    if len(names) > 1:
        raise RejectedFile(f"several landed files map to partition key {key!r}: {sorted(names)}")
    return names[0]


def ingest_batch(spark, store: Store, spec: DatasetSpec, key: str, name: str | None = None) -> dict:
    """Landed CSV -> the batch's partition of the bronze table, in one commit. `name` is the file the new-batch
    sensor saw (None: find it by the partition key). Exactly once: the same content landed again under another name
    adds nothing, and running the batch again when its rows are already committed writes nothing."""
    if name is None:
        name = find_landed_file(store, spec, key)
    elif partition_key(name) != key:
        raise RejectedFile(f"file {name!r} belongs to partition {partition_key(name)!r}, not {key!r}")
    rel = landed_file(spec, name)
    if not store.exists(rel):
        raise RejectedFile(f"{rel} is no longer in the landing zone (moved or deleted after the sensor saw it)")
    digest, size = hashlib.sha256(), 0
    with store.open_read(rel) as f:  # one pass for the content hash and the size, no listing
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    header = check_header(store.read_head(rel), spec, size)
    digest = digest.hexdigest()
    table = store.uri(bronze_table(spec))
    prev = store.read_json(batch_record_path(spec, key))
    if prev and prev.get("sha256") == digest and _still_there(spark, table, prev.get("bronze_version")):
        return prev | {"unchanged": True}
    record = {"partition": key, "file": name, "bytes": size, "sha256": digest, "missing_columns": header.missing,
              "extra_columns": header.extra, "ingested_at": dt.datetime.now(dt.UTC).isoformat()}
    first = store.create_exclusive(content_hash_marker(spec, digest), key)
    with store.commit_lock(bronze_table(spec)):
        record = _commit_bronze(spark, store, spec, record, header, first, prev)
    store.write_json(batch_record_path(spec, key), record)
    return record


def _commit_bronze(spark, store: Store, spec: DatasetSpec, record: dict, header, first: str | None,
                   prev: dict | None) -> dict:
    """The batch's bronze commit (its rows, or none when the same content came first as batch `first`)."""
    key, digest, table = record["partition"], record["sha256"], store.uri(bronze_table(spec))
    if first is not None and first != key:
        if prev and prev.get("bronze_version") is not None:  # the key held other content before: it is gone now
            lake.run_sql(spark, f"DELETE FROM {lake.sql_path(table)} WHERE {lake.BATCH} = {lake.literal(key)}",
                         {"batch": key, "duplicate_of": first})
        record.update(rows=0, malformed_rows=0, duplicate_of=first, bronze_version=None)
    else:
        rows = read_csv(spark, store.uri(landed_file(spec, record["file"])), header, spec).withColumn(
            lake.BATCH, F.lit(key))
        lake.replace_batch(rows, table, key, {"batch": key, "file": record["file"], "sha256": digest})
        stats = lake.read(spark, table).where(F.col(lake.BATCH) == key).agg(
            F.count(F.lit(1)).alias("rows"), F.count(CORRUPT).alias("malformed")).first()
        record.update(rows=int(stats["rows"]), malformed_rows=int(stats["malformed"]), duplicate_of=None,
                      bronze_version=lake.find_commit(spark, table, batch=key, sha256=digest))
    return record


def _still_there(spark, table: str, committed: int | None) -> bool:
    """Whether a commit recorded earlier is still in the table's past (not a table deleted and started again)."""
    if committed is None:
        return False
    now = lake.version(spark, table)
    return now is not None and now >= committed


@contextmanager
def per_operator_codegen(spark):
    """Cleaning projects ~70 columns at once. Whole-stage codegen fuses that into one Java method over the JVM's
    64 KB limit, fails to compile and falls back to a slow path (2.5x slower, measured); per-operator codegen
    splits wide projections into small methods. Restored afterwards for everything else."""
    key = "spark.sql.codegen.wholeStage"
    before = spark.conf.get(key)
    spark.conf.set(key, "false")
    try:
        yield
    finally:
        spark.conf.set(key, before)


def fingerprint(spec: DatasetSpec, record: dict) -> str:
    """What a cleaning of this batch depends on: its bronze commit and the spec. The same fingerprint means the
    same silver rows, so a run that finds it already committed writes nothing."""
    spec_json = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    text = f"{record.get('sha256')}|{record.get('bronze_version')}|{spec_json}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clean_stored_batch(spark, store: Store, spec: DatasetSpec, key: str,
                       judge: Callable[[dict], list[str]] = lambda s: []) -> dict:
    """Bronze -> silver for one batch: typed, checked, and MERGEd into the silver table by key, with quarantined
    rows (and their reasons) in the quarantine table. `judge` reads the batch's summary and returns why it must not
    be trained on (empty: accepted). The rows, the acceptance and the checks land in one silver commit, or not at
    all: a rejected batch adds no row."""
    record = store.read_json(batch_record_path(spec, key))
    if record is None:
        raise RejectedFile(f"batch {key!r} has no bronze record: materialize {spec.name}/raw_batches for it first")
    summary = {"partition": key, "rows_in": record["rows"], "duplicate_of": record.get("duplicate_of")}
    silver = store.uri(silver_table(spec))
    fp = fingerprint(spec, record)
    prior = store.read_json(accepted_marker(spec, key)) or store.read_json(rejected_marker(spec, key)) or {}
    if prior.get("fingerprint") == fp and prior.get("summary") and (
            not prior.get("silver_version") or _still_there(spark, silver, prior["silver_version"])):
        return prior["summary"] | {"unchanged": True}
    if record.get("duplicate_of"):
        out = summary | {"cleaned": 0, "quarantined": 0, "duplicates_removed": 0, "unlabelled": 0}
        commit_silver(spark, store, spec, key, None, record, out, judge(out), fp)
        return out
    bronze = lake.read(spark, store.uri(bronze_table(spec))).where(F.col(lake.BATCH) == key).drop(lake.BATCH)
    classified = classify(bronze, spec)
    quarantine = store.uri(quarantine_table(spec))
    with per_operator_codegen(spark), store.commit_lock(quarantine_table(spec)):
        lake.replace_batch(quarantined_rows(classified).withColumn(lake.BATCH, F.lit(key)), quarantine, key,
                           {"batch": key})
        cleaned = cleaned_rows(classified, spec).persist()  # profiled, then merged: computed once
        out = summary | profile(cleaned, spec)
    try:
        reasons = (lake.read(spark, quarantine).where(F.col(lake.BATCH) == key).groupBy(REASON).count().collect())
        reasons = sorted(((r[REASON], int(r["count"])) for r in reasons), key=lambda r: -r[1])
        out["quarantined"] = sum(c for _, c in reasons)
        out["top_reasons"] = dict(reasons[:5])
        out["quarantined_by_field"] = reasons_by_field(reasons)
        # honest: cleaned_rows only drops second rows of a key and whole-row repeats, never null-key rows
        out["duplicates_removed"] = out["rows_in"] - out["quarantined"] - out["cleaned"]
        with per_operator_codegen(spark):
            commit_silver(spark, store, spec, key, cleaned, record, out, judge(out), fp)
    finally:
        cleaned.unpersist()
    return out


def reasons_by_field(reasons: list[tuple[str, int]]) -> dict[str, int]:
    """Quarantined rows per field a reason names ('price: 1 outside ...' -> price), most first. The full reasons
    embed each bad value, so on their own they scatter over many lines; a row with two reasons counts twice."""
    out: dict[str, int] = {}
    for text, n in reasons:
        for part in text.split("; "):
            f = part.split(":", 1)[0] if ":" in part else part.split(" (", 1)[0]
            out[f] = out.get(f, 0) + n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def profile(silver, spec: DatasetSpec) -> dict:
    """Counts, null rates, label range (over labelled rows), unlabelled rows and schema of a cleaned table, in one
    pass."""
    cols = spec.cleaned_columns
    y = F.col(spec.target) if spec.target else F.lit(None).cast("double")  # clustering: no target
    aggs = [F.count(F.lit(1)).alias("__n"), F.min(y).alias("__min"), F.max(y).alias("__max"),
            F.avg(y).alias("__mean")] + [F.count(F.col(f"`{c}`")).alias(f"__nn_{c}") for c in cols]
    row = silver.agg(*aggs).first()
    n = int(row["__n"])
    null_rate = {c: (1 - row[f"__nn_{c}"] / n) if n else 0.0 for c in cols}
    return {
        "cleaned": n,
        "target_min": row["__min"], "target_max": row["__max"], "target_mean": row["__mean"],
        "null_rate": null_rate,
        "all_null_columns": [c for c in cols if n and row[f"__nn_{c}"] == 0],
        "schema": {f.name: f.dataType.simpleString() for f in silver.schema.fields},
        # silver keeps a null target only for the spec's `unlabelled` values (a missing label is quarantined)
        "unlabelled": n - row[f"__nn_{spec.target}"] if spec.target else 0,
    }


def quarantine_file(store: Store, spec: DatasetSpec, name: str, reason: str) -> str:
    """Move a rejected landed file to quarantine/<dataset>/files/, beside <name>.reason.json. Returns its new path;
    a name already in quarantine gets a timestamp suffix so nothing is overwritten."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
    dest = f"{quarantine_files_dir(spec)}/{name}"
    if store.exists(dest):
        dest = f"{dest}.{stamp}"
    store.move(landed_file(spec, name), dest)
    store.write_json(f"{dest}.reason.json", {"file": name, "reason": reason, "rejected_at": stamp})
    return dest
