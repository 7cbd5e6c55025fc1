"""Upkeep of a dataset's Delta tables: OPTIMIZE compacts the small files each batch adds, VACUUM deletes the files no
version within the retention still uses.

VACUUM must never take a file that a registered model's training set needs: `ml-platform reproduce` reads silver
exactly as that model was trained on it. A data file is deleted only once it has been out of the table for longer
than the retention, and a file that silver version v uses left the table after v was committed. So keeping the
retention at least as long as the age of the oldest pinned version keeps every file of that version, and the same
goes for the log (its entries back to v must stay readable). `retention_for` does that arithmetic; the caller
passes the versions the model registry pins."""

from __future__ import annotations

import datetime as dt
import math

from ml_platform import lake
from ml_platform.layout import bronze_table, quarantine_table, silver_table
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store

MARGIN_HOURS = 1  # clocks of the writer and of the store may differ a little


def retention_for(spark, uri: str, hours: float, pinned: list[int]) -> tuple[float, int | None]:
    """(hours VACUUM may keep no less than, the oldest pinned version still in the log). A pinned version older than
    the log (already cleaned up) cannot be protected any more and is reported, not waited for."""
    if not pinned:
        return hours, None
    times = {h["version"]: h["timestamp"] for h in lake.history(spark, uri)}
    kept = [v for v in pinned if v in times]
    if not kept:
        return hours, None
    oldest = min(kept)
    age = (dt.datetime.now() - times[oldest]).total_seconds() / 3600  # DESCRIBE HISTORY's timestamps: session time
    return max(hours, math.ceil(age) + MARGIN_HOURS), oldest


TABLES = ("bronze", "silver", "quarantine")


def maintain(spark, store: Store, spec: DatasetSpec, retention_hours: float, pinned_silver: list[int],
             log=print, tables: tuple[str, ...] = TABLES) -> dict:
    """OPTIMIZE then VACUUM bronze, silver and quarantine (or `tables` of them). `pinned_silver`: the silver versions
    registered models were trained on (their MLflow tag `silver_version`)."""
    out: dict = {"retention_hours": retention_hours, "tables": {}}
    paths = {"bronze": bronze_table(spec), "silver": silver_table(spec), "quarantine": quarantine_table(spec)}
    for name in tables:
        uri = store.uri(paths[name])
        if not lake.is_table(spark, uri):
            continue
        with store.commit_lock(paths[name]):
            out["tables"][name] = _maintain_table(spark, uri, retention_hours,
                                                  pinned_silver if name == "silver" else [])
        t = out["tables"][name]
        log(f"{spec.name} {name}: optimized and vacuumed, keeping {t['retained_hours']} h of history"
            + (f" (silver version {t['oldest_pinned_version']} is pinned by a registered model)"
               if t["oldest_pinned_version"] is not None else ""))
    return out


def _maintain_table(spark, uri: str, retention_hours: float, pinned: list[int]) -> dict:
    """OPTIMIZE, the retention settings, then VACUUM, on one table."""
    check = "spark.databricks.delta.retentionDurationCheck.enabled"
    hours, oldest = retention_for(spark, uri, retention_hours, pinned)
    before = lake.version(spark, uri)
    lake.run_sql(spark, f"OPTIMIZE {lake.sql_path(uri)}", {"maintenance": "optimize"})
    days = math.ceil(hours / 24) + 1
    # the log must reach back as far as the data: time travel to a version needs its commit (or a checkpoint)
    lake.run_sql(spark, f"ALTER TABLE {lake.sql_path(uri)} SET TBLPROPERTIES ("
                        f"'delta.logRetentionDuration' = 'interval {days} days', "
                        f"'delta.deletedFileRetentionDuration' = 'interval {math.ceil(hours)} hours')",
                 {"maintenance": "retention"})
    # Delta refuses a retention under its 7-day default unless told the caller means it; the setting is the
    # user's, and pinned versions only ever lengthen it
    spark.conf.set(check, "false")
    # VACUUM lists the table's folder in as many tasks as this says: Spark's default of 10,000 tasks took 47 s
    # on a table of a few files here, against 7 s with a few tasks per core
    listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
    before_listing = spark.conf.get(listing)
    spark.conf.set(listing, str(max(8, 4 * spark.sparkContext.defaultParallelism)))
    try:
        deleted = lake.run_sql(spark, f"VACUUM {lake.sql_path(uri)} RETAIN {math.ceil(hours)} HOURS")
    finally:
        spark.conf.unset(check)
        spark.conf.set(listing, before_listing)
    return {"version_before": before, "version_after": lake.version(spark, uri),
            "retained_hours": math.ceil(hours), "oldest_pinned_version": oldest,
            "vacuum": str(deleted[0][0]) if deleted else None}
