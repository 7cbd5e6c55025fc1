"""The silver table: the current row of every key, across batches. Each accepted batch is MERGEd in on its rows' key;
the spec's rule (`newest_by`, else the later batch) says which row of a key stays, and the change data feed keeps
what was replaced. Rows without a key are not versions of anything: each is its own row, keyed by its batch and
content, so running a batch again matches them instead of adding them twice.

A batch's rows, its acceptance and its checks are one commit: the MERGE carries them as its note. The small JSON
records under silver/<dataset>/_accepted|_rejected repeat that note for readers without Spark (the web pages, batch
accounting); the training set reads the table itself."""

from __future__ import annotations

import uuid

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import accepted_marker, batch_record_path, rejected_marker, silver_table
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store

KEY = "_key"  # what the MERGE matches on: "k:<key>" for a keyed row, "r:<batch>#<row hash>" for one without
INGESTED = "_ingested_at"  # when the row's batch was ingested: the tie-break between versions of a key
META = (lake.BATCH, INGESTED, KEY)


def silver_rows(cleaned: DataFrame, spec: DatasetSpec, batch: str, ingested_at: str) -> DataFrame:
    row_hash = F.xxhash64(*[F.col(f"`{c}`") for c in cleaned.columns]).cast("string")
    keyless = F.concat(F.lit(f"r:{batch}#"), row_hash)
    key = F.concat(F.lit("k:"), F.col(f"`{spec.key}`").cast("string")) if spec.key else F.lit(None).cast("string")
    return (cleaned.withColumn(lake.BATCH, F.lit(batch))
            .withColumn(INGESTED, F.lit(ingested_at).cast("timestamp"))
            .withColumn(KEY, F.coalesce(key, keyless)))


def _newer(spec: DatasetSpec) -> str:
    """SQL: the source row `s` replaces the table's row `t` of the same key."""
    later = f"s.{INGESTED} >= t.{INGESTED}"
    if not spec.newest_by:
        return later
    c = f"`{spec.newest_by}`"
    return (f"(s.{c} > t.{c} OR (t.{c} IS NULL AND s.{c} IS NOT NULL) "
            f"OR (s.{c} <=> t.{c} AND {later}))")


def merge_batch(spark, uri: str, rows: DataFrame, spec: DatasetSpec, batch: str, note: dict,
                again: bool = False) -> None:
    """MERGE one batch into silver. `again`: the batch was merged before (a re-clean after a spec change), so its
    rows that the new cleaning no longer brings are deleted in the same commit."""
    def commit():
        if not lake.is_table(spark, uri):
            (rows.write.format("delta").mode("append").option("userMetadata", lake.json_note(note)).save(uri))
            return
        added = lake.check_schema(spark, uri, rows)
        have = lake.read(spark, uri).schema
        src = rows
        for f in have.fields:  # a column the spec dropped: null in this batch's rows, kept for earlier ones
            if f.name not in rows.columns:
                src = src.withColumn(f.name, F.lit(None).cast(f.dataType))
        view = f"silver_batch_{uuid.uuid4().hex}"
        src.createOrReplaceTempView(view)
        try:
            stmt = (f"MERGE INTO {lake.sql_path(uri)} t USING {view} s ON t.{KEY} = s.{KEY} "
                    f"WHEN MATCHED AND (t.{lake.BATCH} = s.{lake.BATCH} OR {_newer(spec)}) THEN UPDATE SET * "
                    f"WHEN NOT MATCHED THEN INSERT *")
            if again:
                stmt += f" WHEN NOT MATCHED BY SOURCE AND t.{lake.BATCH} = {lake.literal(batch)} THEN DELETE"
            lake.run_sql(spark, stmt, note, evolve=bool(added), retry=False)
        finally:
            spark.catalog.dropTempView(view)

    lake.retrying(commit)


def commit_silver(spark, store: Store, spec: DatasetSpec, batch: str, cleaned: DataFrame | None, record: dict,
                  summary: dict, why: list[str], fingerprint: str) -> int | None:
    """Commit a cleaned batch's fate: accepted, its rows MERGEd with the note; not accepted, no row of it stays in
    silver. Then the JSON record for readers without Spark. Returns the silver version of the commit (None when
    there was nothing to commit)."""
    uri = store.uri(silver_table(spec))
    accepted = not why
    note = {"batch": batch, "accepted": accepted, "why": why, "cleaned": summary.get("cleaned"),
            "fingerprint": fingerprint}
    was_in = store.exists(accepted_marker(spec, batch))
    committed = None
    with store.commit_lock(silver_table(spec)):
        if accepted and cleaned is not None:
            merge_batch(spark, uri, silver_rows(cleaned, spec, batch, record["ingested_at"]), spec, batch, note,
                        again=was_in)
            committed = lake.find_commit(spark, uri, batch=batch, fingerprint=fingerprint)
        elif was_in and lake.is_table(spark, uri):
            lake.run_sql(spark, f"DELETE FROM {lake.sql_path(uri)} WHERE {lake.BATCH} = {lake.literal(batch)}",
                         note)
            committed = lake.find_commit(spark, uri, batch=batch, fingerprint=fingerprint)
    mark_accepted(store, spec, batch, accepted, summary, why, committed, fingerprint)
    return committed


def accept_rows(spark, store: Store, spec: DatasetSpec, batch: str, rows: DataFrame, ingested_at: str) -> int | None:
    """Commit rows cleaned elsewhere as an accepted batch, with its bronze record (tests, benchmarks, a migration
    from an older layout). `ingested_at` is an ISO timestamp: the order of batches in silver's MERGE rule."""
    record = {"partition": batch, "ingested_at": ingested_at, "sha256": f"imported:{batch}", "duplicate_of": None}
    store.write_json(batch_record_path(spec, batch), record)
    return commit_silver(spark, store, spec, batch, rows, record, {"cleaned": None}, [], f"imported:{batch}")


def mark_accepted(store: Store, spec: DatasetSpec, key: str, accepted: bool, summary: dict,
                  why: list[str] | None = None, silver_version: int | None = None,
                  fingerprint: str | None = None) -> None:
    """The JSON record of a batch's fate, after its silver commit. A batch not accepted gets its reasons (`why`) in
    silver/<dataset>/_rejected/, which batch accounting reads; the two records never both stand."""
    body = {"partition": key, "cleaned": summary.get("cleaned"), "silver_version": silver_version,
            "fingerprint": fingerprint, "summary": summary}
    if accepted:
        store.write_json(accepted_marker(spec, key), body)
        store.delete_tree(rejected_marker(spec, key))
    else:
        store.delete_tree(accepted_marker(spec, key))
        store.write_json(rejected_marker(spec, key), body | {"why": list(why or ["not accepted"])})


def current_rows(spark, store: Store, spec: DatasetSpec, version: int | None = None) -> tuple[DataFrame, int] | None:
    """The silver table as of `version` (latest: None) and the version read; None when there is no table yet."""
    uri = store.uri(silver_table(spec))
    v = lake.version(spark, uri) if version is None else int(version)
    if v is None:
        return None
    return lake.read(spark, uri, v), v

