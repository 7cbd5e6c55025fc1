"""Delta Lake tables: how every layer writes and reads its rows. A table is a folder whose `_delta_log/` says which
files are in it; a write is a commit, so a reader sees a batch whole or not at all, and a crash mid-write leaves
the table as it was. Tables are addressed by path (`store.uri(...)`), never through a metastore, so local folders,
S3 (s3a://, s3://) and HDFS work alike.

Writes here are idempotent by construction: a batch replaces its own partition (`replace_batch`), or is MERGEd on
a row key (`merge`), so running one again gives the same table. Each commit carries a JSON note (Delta's
userMetadata) saying which batch it was and what was decided about it; `history` reads those back."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable

from pyspark.sql import DataFrame

BATCH = "_batch"  # the batch a row came from: bronze's partition column, silver's provenance
CONFLICT_RETRIES = 6

# userMetadata is a session setting for SQL commands (MERGE, DELETE): one such commit at a time per session
_session_meta = threading.Lock()


class SchemaChange(ValueError):
    """A batch whose columns changed type against its table: the message names each column, old and new type."""


def literal(text: str) -> str:
    """A Spark SQL string literal (backslash escapes are Spark's default)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_path(uri: str) -> str:
    return "delta.`" + uri.replace("`", "``") + "`"


def is_table(spark, uri: str) -> bool:
    return bool(spark._jvm.io.delta.tables.DeltaTable.isDeltaTable(spark._jsparkSession, uri))


def read(spark, uri: str, version: int | None = None) -> DataFrame:
    """The table as of `version` (time travel), or its latest version."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(uri)


def version(spark, uri: str) -> int | None:
    """The table's latest version, None when there is no table."""
    if not is_table(spark, uri):
        return None
    return int(spark.sql(f"DESCRIBE HISTORY {sql_path(uri)} LIMIT 1").first()["version"])


def history(spark, uri: str) -> list[dict]:
    """Every commit still in the log, newest first: version, timestamp, operation, and our note (or None)."""
    rows = spark.sql(f"DESCRIBE HISTORY {sql_path(uri)}").select(
        "version", "timestamp", "operation", "userMetadata").collect()
    return [{"version": int(r["version"]), "timestamp": r["timestamp"], "operation": r["operation"],
             "note": json.loads(r["userMetadata"]) if r["userMetadata"] else None} for r in rows]


def find_commit(spark, uri: str, look_back: int = 100, **note) -> int | None:
    """The newest version whose note has these values (say batch and fingerprint): the commit a job just made, even
    when other writers committed after it."""
    rows = spark.sql(f"DESCRIBE HISTORY {sql_path(uri)} LIMIT {int(look_back)}").select(
        "version", "userMetadata").collect()
    for r in rows:
        meta = json.loads(r["userMetadata"]) if r["userMetadata"] else {}
        if all(meta.get(k) == v for k, v in note.items()):
            return int(r["version"])
    return None


def check_schema(spark, uri: str, df: DataFrame) -> list[str]:
    """Columns `df` adds to the table (they are evolved in). A column whose type changed is refused, naming it:
    Delta would refuse it too, with a message about "merging fields" that names neither the batch nor the fix."""
    if not is_table(spark, uri):
        return []
    have = {f.name.lower(): f.dataType for f in read(spark, uri).schema.fields}
    changed = [f"{f.name}: {have[f.name.lower()].simpleString()} in the table, {f.dataType.simpleString()} now"
               for f in df.schema.fields if f.name.lower() in have and have[f.name.lower()] != f.dataType]
    if changed:
        raise SchemaChange(f"{uri}: a column changed type ({'; '.join(changed)}); earlier versions stay readable. "
                           f"Rename the column in the spec, or keep its type")
    return [f.name for f in df.schema.fields if f.name.lower() not in have]


def _conflict(e: Exception) -> bool:
    """Delta's optimistic concurrency: another writer committed first and the two touched the same files."""
    text = f"{type(e).__name__} {e}"
    return any(w in text for w in ("ConcurrentAppendException", "ConcurrentDeleteReadException",
                                   "ConcurrentDeleteDeleteException", "ConcurrentTransactionException",
                                   "ConcurrentWriteException", "MetadataChangedException",
                                   "ProtocolChangedException", "DELTA_CONCURRENT_"))


def retrying(commit: Callable[[], None], attempts: int = CONFLICT_RETRIES, log: Callable[[str], None] | None = None):
    """Run a commit again when a concurrent writer won the race. Safe because every commit here is idempotent: a
    retry after a commit that did land changes nothing."""
    for attempt in range(1, attempts + 1):
        try:
            return commit()
        except Exception as e:
            if not _conflict(e) or attempt == attempts:
                raise
            if log:
                log(f"concurrent commit on the same table; retrying ({attempt}/{attempts - 1})")
            time.sleep(min(4.0, 0.2 * 2 ** attempt) * (0.5 + random.random()))


def replace_batch(df: DataFrame, uri: str, batch: str, note: dict, partition: bool = True) -> None:
    """Write one batch's rows as its partition of the table, replacing what that batch wrote before, in one commit.
    Other batches are untouched, so writers of different batches commit side by side. Added columns are evolved."""
    spark = df.sparkSession
    check_schema(spark, uri, df)
    writer = (df.write.format("delta").mode("overwrite").option("replaceWhere", f"{BATCH} = {literal(batch)}")
              .option("mergeSchema", "true").option("userMetadata", json_note(note)))
    if partition:
        writer = writer.partitionBy(BATCH)
    retrying(lambda: writer.save(uri))


def overwrite(df: DataFrame, uri: str, note: dict | None = None) -> None:
    """A whole table written at once (gold: a training set's train and holdout splits, a model's out-of-fold
    scores)."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if note:
        writer = writer.option("userMetadata", json_note(note))
    writer.save(uri)


def json_note(note: dict) -> str:
    return json.dumps(note, sort_keys=True, default=str)


def run_sql(spark, statement: str, note: dict | None = None, evolve: bool = False, retry: bool = True):
    """A Delta SQL command (MERGE, DELETE, OPTIMIZE, VACUUM) with our note on its commit, retried on conflicts
    (`retry=False`: the caller retries a larger step)."""
    def commit():
        with _session_meta:
            key = "spark.databricks.delta.commitInfo.userMetadata"
            auto = "spark.databricks.delta.schema.autoMerge.enabled"
            if note is not None:
                spark.conf.set(key, json_note(note))
            if evolve:
                spark.conf.set(auto, "true")
            try:
                return spark.sql(statement).collect()
            finally:
                spark.conf.unset(key)
                spark.conf.unset(auto)

    return retrying(commit) if retry else commit()
