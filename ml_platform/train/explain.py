"""Which cleaned (pre-encoding) columns a model relies on.

- impurity: a tree model's own importances (Spark's featureImportances; xgboost's total gain), one per tree-vector
  slot, and each slot is one cleaned column (features.py puts one imputed number or one category index per column);
- permutation: on a seeded sample of the holdout, each feature column is shuffled in turn and the served form of
  the model (feature stages, the model, its price or probability) scores every shuffled copy in one Spark job; a
  column's importance is how much the primary metric gets worse (RMSE up, average precision down). This works for
  every model, the stack included, and needs no access to its internals.
"""

from __future__ import annotations

import numpy as np
from pyspark.ml import PipelineModel
from pyspark.ml.feature import ImputerModel, StringIndexerModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from ml_platform import lake
from ml_platform.layout import feature_pipeline_dir, holdout_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import LABEL, TREE_FEATURES

SAMPLE_ROWS = 1000
PERM = "__permuted"
BASELINE = ""


def tree_slots(features: PipelineModel) -> list[str]:
    """The cleaned column behind each slot of the tree feature vector: imputed numbers, then category indexes."""
    numeric, categorical = [], []
    for st in features.stages:
        if isinstance(st, ImputerModel):
            numeric = [c.removeprefix("__i_") for c in st.getOutputCols()]
        if isinstance(st, StringIndexerModel):
            categorical = [c.removeprefix("__x_") for c in st.getOutputCols()]
    return numeric + categorical


def impurity_importance(model, slots: list[str]) -> dict[str, float] | None:
    """Normalized importances by cleaned column, or None for a model without them (linear models, naive Bayes)."""
    if hasattr(model, "featureImportances"):
        values = model.featureImportances.toArray()
    elif hasattr(model, "get_booster"):  # xgboost: total gain per slot f0, f1, ...
        gain = model.get_booster().get_score(importance_type="total_gain")
        values = np.array([gain.get(f"f{i}", 0.0) for i in range(len(slots))])
    else:
        return None
    if len(values) != len(slots) or values.sum() <= 0:
        return None
    values = values / values.sum()
    return dict(sorted(((c, float(v)) for c, v in zip(slots, values, strict=True)), key=lambda kv: -kv[1]))


def holdout_sample(holdout: DataFrame, seed: int, rows: int = SAMPLE_ROWS) -> DataFrame:
    """A seeded sample of at most `rows` holdout rows, materialized once (every model scores the same rows)."""
    n = holdout.count()
    sample = holdout if n <= rows else holdout.sample(fraction=min(1.0, 1.3 * rows / n), seed=seed).limit(rows)
    return sample.localCheckpoint(eager=True)


def permuted_copies(sample: DataFrame, columns: list[str], seed: int) -> DataFrame:
    """The sample once as is (PERM = '') and once per column with that column's values shuffled across rows
    (PERM = the column). The sample is small, so the copies are built on the driver from its rows and go back as
    one DataFrame with the sample's own schema: no joins, no type guessing."""
    rng = np.random.default_rng(seed)
    rows = [tuple(r) for r in sample.collect()]
    names = sample.columns
    data = [(*r, BASELINE) for r in rows]
    for c in columns:
        i = names.index(c)
        values = [r[i] for r in rows]
        order = rng.permutation(len(rows))
        data += [(*r[:i], values[j], *r[i + 1:], c) for r, j in zip(rows, order, strict=True)]
    schema = StructType([*sample.schema.fields, StructField(PERM, StringType(), False)])
    return sample.sparkSession.createDataFrame(data, schema)


def _average_precision(y: np.ndarray, p: np.ndarray) -> float:
    order = np.argsort(-p, kind="stable")
    y = y[order]
    positives = y.sum()
    if positives == 0:
        return float("nan")
    hits = np.cumsum(y)
    precision = hits / np.arange(1, len(y) + 1)
    return float((precision * y).sum() / positives)


def permutation_importance(spec: DatasetSpec, model: PipelineModel, copies: DataFrame) -> dict[str, float]:
    """How much the primary metric worsens when each column is shuffled (positive: the model uses it)."""
    scored = model.transform(copies)
    if spec.task == "regression":
        pdf = scored.select(PERM, F.col(spec.target).cast("double").alias("y"),
                            F.col("prediction").cast("double").alias("p")).toPandas()
        metric = {k: float(np.sqrt(np.mean((g["y"] - g["p"]) ** 2))) for k, g in pdf.groupby(PERM)}
        drop = {c: metric[c] - metric[BASELINE] for c in metric if c != BASELINE}
    elif spec.task == "multiclass":
        from ml_platform.train.meta import macro_f1

        pdf = scored.select(PERM, F.col(LABEL).cast("int").alias("y"), F.col("prediction").cast("int").alias("p")) \
            .toPandas()
        k = len(spec.classes)
        metric = {key: macro_f1(g["y"].to_numpy(), g["p"].to_numpy(), k) for key, g in pdf.groupby(PERM)}
        drop = {c: metric[BASELINE] - metric[c] for c in metric if c != BASELINE}
    else:
        pdf = scored.select(PERM, F.col(LABEL).cast("double").alias("y"),
                            vector_to_array("probability")[1].alias("p")).toPandas()
        metric = {k: _average_precision(g["y"].to_numpy(), g["p"].to_numpy()) for k, g in pdf.groupby(PERM)}
        drop = {c: metric[BASELINE] - metric[c] for c in metric if c != BASELINE}
    return dict(sorted(drop.items(), key=lambda kv: -kv[1]))


def top(importance: dict[str, float] | None, n: int = 5) -> str:
    if not importance:
        return ""
    return ", ".join(f"{c} {v:.3g}" for c, v in list(importance.items())[:n])


def explain_models(spark, store: Store, spec: DatasetSpec, version: str, results: dict[str, dict],
                   served: PipelineModel, served_name: str) -> dict[str, dict]:
    """Per base model (and `served_name` for the served pipeline): impurity importance where the model has one,
    and permutation importance on a holdout sample, by cleaned column, largest first."""
    from ml_platform.train.stacking import member_pipeline

    features = PipelineModel.load(store.uri(feature_pipeline_dir(spec, version)))
    slots = tree_slots(features)
    numeric, categorical = spec.feature_columns()
    holdout = lake.read(spark, store.uri(holdout_dir(spec, version)))
    columns = [c for c in numeric + categorical if c in holdout.columns]
    keep = [c for c in holdout.columns if c in set(columns) | {spec.target, LABEL}]
    sample = holdout_sample(holdout.select(*[F.col(f"`{c}`") for c in keep]), spec.training.seed)
    copies = permuted_copies(sample, columns, spec.training.seed).localCheckpoint(eager=True)
    out = {}
    for name in sorted(results):
        model, _ = member_pipeline(spec, list(features.stages), results, name)
        fitted = PipelineModel.load(results[name]["model"]).stages[0]
        out[name] = {"impurity": impurity_importance(fitted, slots) if results[name]["features"] == TREE_FEATURES
                     else None, "permutation": permutation_importance(spec, model, copies)}
    if served_name not in out:
        out[served_name] = {"impurity": None, "permutation": permutation_importance(spec, served, copies)}
    return out


def importance_table(importance: dict[str, dict], n: int = 5) -> str:
    """Markdown: each model's top columns by permutation importance (and by impurity, for trees)."""
    lines = [f"| model | top {n} by permutation (metric change when shuffled) | top {n} by impurity |",
             "|---|---|---|"]
    lines += [f"| {m} | {top(v['permutation'], n)} | {top(v['impurity'], n)} |" for m, v in importance.items()]
    return "\n".join(lines)
