"""The gold layer's training set: the silver table's rows in the window (one row per key already), a deterministic
train/holdout split and fold column, a label and class weights. Written once per version, read by every model.

Layout under the store (`<v>` is a version: the Dagster run that built the training set):
  gold/<dataset>/<v>/training_set.json              the summary: batches, rows, data hash, the silver version read
  gold/<dataset>/<v>/train, holdout                 Delta tables
  gold/<dataset>/<v>/feature_pipeline               the fitted PipelineModel
  gold/<dataset>/<v>/models/<algorithm>/            model, oof (out-of-fold scores), result.json
"""

from __future__ import annotations

import hashlib
import json

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.data.silver import INGESTED, KEY, current_rows
from ml_platform.layout import (
    FEEDBACK_PREFIX,
    batch_record_path,
    holdout_dir,
    silver_table,
    train_dir,
    training_set_record,
)
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import FOLD, LABEL, ROW_ID, WEIGHT
from ml_platform.wire import spec_to_wire

BATCH = "__batch"
ALL_COLUMNS_KEY = "__all_columns"


class TrainingError(ValueError):
    """Training data or a model that cannot be used; the message says what and where."""


def training_version(store: Store, spec: DatasetSpec, version: str) -> dict:
    """The summary of one training-set version. Later layers are told which version to work on (the one their
    own upstream was built from), so a retrain started meanwhile cannot switch them to its data."""
    rec = store.read_json(training_set_record(spec, version))
    if rec is None:
        raise TrainingError(f"{spec.name}: training-set version {version} does not exist; rematerialize "
                            f"{spec.name}/training_set")
    return rec


def _row_hash(df: DataFrame, spec: DatasetSpec, salt: int):
    """Where a row stays (train or holdout, which fold) as data grows: by its key, or by all its columns where it
    has none (a null key must not send every keyless row to the same side)."""
    by_row = F.xxhash64(F.lit(salt), *[F.col(f"`{c}`") for c in spec.cleaned_columns if c in df.columns])
    if not spec.key:
        return by_row
    return F.when(F.col(spec.key).isNotNull(), F.xxhash64(F.lit(salt), F.col(spec.key))).otherwise(by_row)


def build_training_set(spark, store: Store, spec: DatasetSpec, version: str, silver_version: int | None = None) -> dict:
    """The window's rows of the silver table, split, written as train/holdout with the summary. Silver already holds
    one row per key (its MERGE applied the spec's rule across batches), so this is a read, not a dedup. It reads one
    version of silver (`silver_version`, else the latest) and records it: `ml-platform reproduce` reads it again."""
    t = spec.training
    current = current_rows(spark, store, spec, silver_version)
    if current is None:
        raise TrainingError(f"{spec.name}: no accepted cleaned batch to train on (a batch is accepted when its "
                            f"blocking checks pass)")
    df, silver_v = current
    order = df.groupBy(lake.BATCH).agg(F.min(INGESTED).alias("t")).orderBy("t", lake.BATCH).collect()
    names = [r[lake.BATCH] for r in order]
    if t.window:
        names = names[-t.window:]
        df = df.where(F.col(lake.BATCH).isin(names))
    if not names:
        raise TrainingError(f"{spec.name}: silver version {silver_v} has no rows to train on")
    batches = [store.read_json(batch_record_path(spec, n)) or {"partition": n} for n in names]
    df = df.drop(KEY, INGESTED).withColumnRenamed(lake.BATCH, BATCH)
    if spec.target:  # clustering has no target
        df = df.where(F.col(spec.target).isNotNull())
    h = _row_hash(df, spec, t.seed)
    target = F.col(spec.target).cast("double") if spec.target else F.lit(None).cast("double")
    df = (df.withColumn("__holdout", F.pmod(h, F.lit(1000)) < int(round(t.holdout * 1000)))
            .withColumn(FOLD, F.pmod(F.xxhash64(F.lit(t.seed + 1), h), F.lit(t.folds)).cast("int"))
            .withColumn(LABEL, F.log1p(target) if t.log_target else target)
            .withColumn(ROW_ID, F.monotonically_increasing_id()))
    stats = _target_stats(df, spec)
    weights = _class_weights(stats, spec)
    weight = F.lit(1.0)
    if weights:
        weight = F.create_map(*[F.lit(x) for c, w in weights.items() for x in (float(c), float(w))])[F.col(LABEL)]
    df = df.withColumn(WEIGHT, F.coalesce(weight, F.lit(1.0)))
    train_uri, holdout_uri = store.uri(train_dir(spec, version)), store.uri(holdout_dir(spec, version))
    read_from = {"silver": silver_v}
    lake.overwrite(df.where(~F.col("__holdout")).drop("__holdout"), train_uri, {"training_set": version, **read_from})
    lake.overwrite(df.where(F.col("__holdout")).drop("__holdout"), holdout_uri, {"training_set": version, **read_from})
    n_train = lake.read(spark, train_uri).count()
    n_holdout = lake.read(spark, holdout_uri).count()
    if n_train < t.folds * 2 or n_holdout == 0:
        raise TrainingError(f"{spec.name}: {n_train} train and {n_holdout} holdout rows are too few for "
                            f"{t.folds}-fold cross-validation")
    feedback = [b["partition"] for b in batches if b["partition"].startswith(FEEDBACK_PREFIX)]
    n_feedback = 0
    if feedback:  # labelled served requests (serve/feedback.py), after the one-row-per-key rule
        n_feedback = sum(lake.read(spark, u).where(F.col(BATCH).isin(feedback)).count()
                         for u in (train_uri, holdout_uri))
    summary = {
        "version": version,
        "batches": [b["partition"] for b in batches], "feedback_batches": feedback, "feedback_rows": n_feedback,
        "first_ingested_at": batches[0].get("ingested_at"), "last_ingested_at": batches[-1].get("ingested_at"),
        "data_hash": hashlib.sha256(json.dumps(sorted(str(b.get("sha256")) for b in batches)).encode())
        .hexdigest()[:16],
        # the Delta versions read: time travel rebuilds this very training set (`ml-platform reproduce`)
        "delta_versions": read_from, "silver_table": store.uri(silver_table(spec)),
        "rows": n_train + n_holdout, "train_rows": n_train, "holdout_rows": n_holdout,
        "target": stats, "class_weights": weights, "train": train_uri,
        "holdout": holdout_uri,
    }
    # the spec travels with the record: a reproduction trains with the settings of then, not of now
    store.write_json(training_set_record(spec, version), summary | {"spec": spec_to_wire(spec)})
    return summary


def _target_stats(df: DataFrame, spec: DatasetSpec) -> dict:
    if spec.target is None:
        return {"n": float(df.count())}
    if spec.task == "multiclass":
        return _class_stats(df, spec)
    y = F.col(spec.target).cast("double")
    row = df.agg(F.count(y).alias("n"), F.avg(y).alias("mean"), F.stddev_pop(y).alias("std"), F.min(y).alias("min"),
                 F.max(y).alias("max"), F.countDistinct(y).alias("distinct"),
                 F.sum(F.when(~F.col("__holdout") & (y == 1), 1).otherwise(0)).alias("train_positives"),
                 F.sum(F.when(~F.col("__holdout"), 1).otherwise(0)).alias("train_n")).first().asDict()
    out = {k: (float(v) if v is not None else None) for k, v in row.items()}
    if spec.task == "classification":
        if out["distinct"] < 2:
            raise TrainingError(f"{spec.name}: the training window holds a single class ({spec.target}="
                                f"{out['min']}); a classifier needs both")
        if not 0 < out["train_positives"] < out["train_n"]:
            raise TrainingError(f"{spec.name}: the train split holds a single class "
                                f"({int(out['train_positives'])} positives of {int(out['train_n'])})")
    elif out["distinct"] < 2:  # not std == 0: a constant's standard deviation comes out as 1e-13 in Spark's sums
        raise TrainingError(f"{spec.name}: the target {spec.target} is constant ({out['mean']}) in the training "
                            f"window; there is nothing to learn")
    return out


def _class_stats(df: DataFrame, spec: DatasetSpec) -> dict:
    """Rows per class in train and holdout. A class seen only in the holdout (or nowhere) is reported, not an
    error: the models cannot predict it, and its recall shows 0 on the holdout. Fewer than two classes in train is."""
    y = F.col(spec.target).cast("int")
    rows = df.groupBy(y.alias("c")).agg(F.sum(F.when(~F.col("__holdout"), 1).otherwise(0)).alias("train"),
                                        F.sum(F.when(F.col("__holdout"), 1).otherwise(0)).alias("holdout")).collect()
    counts = {int(r["c"]): (int(r["train"]), int(r["holdout"])) for r in rows}
    names = spec.classes
    train = {names[c]: counts.get(c, (0, 0))[0] for c in range(len(names))}
    holdout = {names[c]: counts.get(c, (0, 0))[1] for c in range(len(names))}
    present = [n for n, k in train.items() if k > 0]
    if len(present) < 2:
        raise TrainingError(f"{spec.name}: the train split holds {len(present)} class(es) {present} of "
                            f"{list(names)}; a classifier needs at least two")
    n = sum(train.values()) + sum(holdout.values())
    return {"n": float(n), "train_n": float(sum(train.values())), "distinct": float(len(present)),
            "train_by_class": train, "holdout_by_class": holdout,
            "holdout_only_classes": [c for c in names if train[c] == 0 and holdout[c] > 0],
            "absent_classes": [c for c in names if train[c] == 0 and holdout[c] == 0]}


def _class_weights(stats: dict, spec: DatasetSpec) -> dict[int, float] | None:
    """Balanced weights n / (K n_class): a 0.17% positive class counts as much as the rest together; each of K
    classes present in train counts as much as every other."""
    if spec.task == "multiclass":
        by = [stats["train_by_class"][c] for c in spec.classes]
        k, n = sum(1 for v in by if v), stats["train_n"]
        return {i: n / (k * v) for i, v in enumerate(by) if v}
    if spec.task != "classification":
        return None
    n, pos = stats["train_n"], stats["train_positives"]
    return {0: n / (2 * (n - pos)), 1: n / (2 * pos)}
