"""The gold layer's training set: accepted cleaned batches in the window, one row per key, a deterministic
train/holdout split and fold column, a label and class weights. Written once per version, read by every model.

Layout under the store (`<v>` is a version: the Dagster run that built the training set):
  gold/<dataset>/<v>/training_set.json              the summary: batches, rows, data hash, target stats
  gold/<dataset>/<v>/train, holdout                 Parquet
  gold/<dataset>/<v>/feature_pipeline               the fitted PipelineModel
  gold/<dataset>/<v>/models/<algorithm>/            model, oof (out-of-fold scores), result.json
"""

from __future__ import annotations

import hashlib
import json

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from ml_platform.layout import (
    FEEDBACK_PREFIX,
    accepted_dir,
    accepted_marker,
    batch_record_path,
    holdout_dir,
    rejected_marker,
    silver_dir,
    train_dir,
    training_set_record,
)
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import FOLD, LABEL, ROW_ID, WEIGHT

BATCH = "__batch"
ALL_COLUMNS_KEY = "__all_columns"


class TrainingError(ValueError):
    """Training data or a model that cannot be used; the message says what and where."""


def mark_accepted(store: Store, spec: DatasetSpec, key: str, accepted: bool, summary: dict,
                  why: list[str] | None = None) -> None:
    """Cleaning records whether a batch passed its blocking checks; only accepted batches are trained on. A batch
    not accepted gets its reasons (`why`) in silver/<dataset>/_rejected/, which batch accounting reads; the two
    markers never both stand."""
    if accepted:
        store.write_json(accepted_marker(spec, key), {"partition": key, "cleaned": summary.get("cleaned")})
        store.delete_tree(rejected_marker(spec, key))
    else:
        store.delete_tree(accepted_marker(spec, key))
        store.write_json(rejected_marker(spec, key), {"partition": key, "why": list(why or ["not accepted"])})


def accepted_batches(store: Store, spec: DatasetSpec) -> list[dict]:
    """Accepted batches with their bronze records, oldest ingestion first."""
    out = []
    for f in store.list_files(accepted_dir(spec)):
        key = f.name.removesuffix(".json")
        record = store.read_json(batch_record_path(spec, key))
        if record is not None and not record.get("duplicate_of") and store.exists(silver_dir(spec, key)):
            out.append(record)
    return sorted(out, key=lambda r: (r["ingested_at"], r["partition"]))


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


def build_training_set(spark, store: Store, spec: DatasetSpec, version: str) -> dict:
    """Union the window's accepted batches, split them and write train/holdout and the summary."""
    t = spec.training
    batches = accepted_batches(store, spec)
    if t.window:
        batches = batches[-t.window:]
    if not batches:
        raise TrainingError(f"{spec.name}: no accepted cleaned batch to train on (a batch is accepted when its "
                            f"blocking checks pass)")
    order = {b["partition"]: i for i, b in enumerate(batches)}
    parts = [spark.read.parquet(store.uri(silver_dir(spec, b["partition"]))).withColumn(BATCH, F.lit(b["partition"]))
             for b in batches]
    df = parts[0]
    for p in parts[1:]:
        df = df.unionByName(p, allowMissingColumns=True)
    if spec.target:  # clustering has no target
        df = df.where(F.col(spec.target).isNotNull())
    if spec.key:
        # a listing seen again in a later batch replaces the earlier row (its price may have changed)
        rank = F.create_map(*[x for k, i in order.items() for x in (F.lit(k), F.lit(i))])[F.col(BATCH)]
        w = Window.partitionBy(spec.key).orderBy(rank.desc())
        # rows without a key are not versions of one listing: keep them all (cleaning already dropped exact repeats)
        df = (df.withColumn("__rn", F.row_number().over(w))
              .where((F.col("__rn") == 1) | F.col(spec.key).isNull()).drop("__rn"))
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
    df.where(~F.col("__holdout")).drop("__holdout").write.mode("overwrite").parquet(train_uri)
    df.where(F.col("__holdout")).drop("__holdout").write.mode("overwrite").parquet(holdout_uri)
    n_train = spark.read.parquet(train_uri).count()
    n_holdout = spark.read.parquet(holdout_uri).count()
    if n_train < t.folds * 2 or n_holdout == 0:
        raise TrainingError(f"{spec.name}: {n_train} train and {n_holdout} holdout rows are too few for "
                            f"{t.folds}-fold cross-validation")
    feedback = [b["partition"] for b in batches if b["partition"].startswith(FEEDBACK_PREFIX)]
    n_feedback = 0
    if feedback:  # labelled served requests (serve/feedback.py), after the one-row-per-key rule
        n_feedback = sum(spark.read.parquet(u).where(F.col(BATCH).isin(feedback)).count()
                         for u in (train_uri, holdout_uri))
    summary = {
        "version": version,
        "batches": [b["partition"] for b in batches], "feedback_batches": feedback, "feedback_rows": n_feedback,
        "first_ingested_at": batches[0]["ingested_at"], "last_ingested_at": batches[-1]["ingested_at"],
        "data_hash": hashlib.sha256(json.dumps(sorted(b["sha256"] for b in batches)).encode()).hexdigest()[:16],
        "rows": n_train + n_holdout, "train_rows": n_train, "holdout_rows": n_holdout,
        "target": stats, "class_weights": weights, "train": train_uri,
        "holdout": holdout_uri,
    }
    store.write_json(training_set_record(spec, version), summary)
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
    elif not (out["std"] or 0) > 0:
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
