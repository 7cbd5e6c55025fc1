"""Stacking: a linear (regression) or logistic (classification) meta-model on the base models' out-of-fold scores,
and the one deployable PipelineModel:

  feature stages ─▶ base model i (own output columns) ─▶ ScoreColumn i ─▶ ... ─▶ VectorAssembler ─▶ meta-model

Meta inputs are on the scale the meta-model is linear in: prices (expm1 of a log-target prediction), log-odds of a
probability, or a linear SVC's margin. The meta-model's `prediction` is the platform's answer: a price, or 0/1 at the
threshold with the best out-of-fold F1, beside `probability`.
"""

from __future__ import annotations

import time

from pyspark import keyword_only
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.regression import LinearRegression
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column
from pyspark.sql import functions as F

from ml_platform.layout import feature_pipeline_dir, holdout_dir, stacked_model_dir, stacked_model_record, train_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import LABEL, ROW_ID, WEIGHT
from ml_platform.train.metrics import curves, primary, regression_metrics, score_column
from ml_platform.train.models import evaluate, labelled
from ml_platform.train.training_set import TrainingError

META_FEATURES = "__meta_features"
EPS = 1e-6


def meta_input(score: Column, how: str) -> Column:
    if how == "expm1":
        return F.expm1(score)
    if how == "logit":
        p = F.least(F.greatest(score, F.lit(EPS)), F.lit(1 - EPS))
        return F.log(p / (1 - p))
    return score


class ScoreColumn(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """A base model's output column -> one double the meta-model reads (element 1 of a vector column, then
    expm1, logit or nothing)."""

    element = Param(Params._dummy(), "element", "vector element to take; -1 for a scalar column",
                    typeConverter=TypeConverters.toInt)
    how = Param(Params._dummy(), "how", "identity | expm1 | logit", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="prediction", outputCol="score", element=-1, how="identity"):
        super().__init__()
        self._setDefault(element=-1, how="identity")
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import vector_to_array

        col = F.col(self.getInputCol())
        if self.getOrDefault(self.element) >= 0:
            col = vector_to_array(col)[self.getOrDefault(self.element)]
        return dataset.withColumn(self.getOutputCol(), meta_input(col, self.getOrDefault(self.how)))


def _how(spec: DatasetSpec, kind: str) -> str:
    if spec.task == "regression":
        return "expm1" if spec.training.log_target else "identity"
    return "logit" if kind == "probability" else "identity"


def _renamed(model, name: str):
    """A fitted base model writing its own columns, so several can sit in one pipeline."""
    for col in ("predictionCol", "probabilityCol", "rawPredictionCol"):
        if model.hasParam(col):
            model.set(model.getParam(col), f"__{col.removesuffix('Col')}_{name}")
    return model


def fit_stack(spark, store: Store, spec: DatasetSpec, version: str, results: dict[str, dict]) -> dict:
    """Fit the meta-model on out-of-fold scores, assemble and save the stacked PipelineModel, score the holdout."""
    if len(results) < 2:
        raise TrainingError(f"{spec.name}: stacking needs at least 2 trained base models, have {sorted(results)}")
    names = sorted(results)
    train = spark.read.parquet(store.uri(train_dir(spec, version))).select(ROW_ID, LABEL, WEIGHT, spec.target)
    for n in names:
        oof = spark.read.parquet(results[n]["oof"]).select(
            ROW_ID, meta_input(F.col("score"), _how(spec, results[n]["score"])).alias(f"score_{n}"))
        train = train.join(oof.hint("merge"), ROW_ID)  # no broadcast: OOF tables grow with the data
    assembler = VectorAssembler(inputCols=[f"score_{n}" for n in names], outputCol=META_FEATURES)
    meta_train = assembler.transform(train)
    t0 = time.perf_counter()
    if spec.task == "regression":
        meta = LinearRegression(featuresCol=META_FEATURES, labelCol=spec.target, regParam=1e-4,
                                elasticNetParam=0.0).fit(meta_train)
        threshold, coef = None, [float(c) for c in meta.coefficients]
    else:
        meta = LogisticRegression(featuresCol=META_FEATURES, labelCol=LABEL, weightCol=WEIGHT, regParam=1e-4,
                                  probabilityCol="probability").fit(meta_train)
        oof_meta = meta.transform(meta_train).withColumn("__p", score_column("probability"))
        threshold = curves(oof_meta, LABEL, "__p")["threshold"]
        meta.set(meta.getParam("threshold"), float(threshold))
        coef = [float(c) for c in meta.coefficients]
    fit_seconds = time.perf_counter() - t0
    fp = PipelineModel.load(store.uri(feature_pipeline_dir(spec, version)))
    stages = list(fp.stages)
    for n in names:
        model = PipelineModel.load(results[n]["model"]).stages[0]
        kind = results[n]["score"]
        stages += [_renamed(model, n), ScoreColumn(
            inputCol=f"__{kind}_{n}", outputCol=f"score_{n}", element=-1 if kind == "prediction" else 1,
            how=_how(spec, kind))]
    stacked = PipelineModel(stages=stages + [assembler, meta])
    path = store.uri(stacked_model_dir(spec, version))
    stacked.write().overwrite().save(path)
    holdout = evaluate_pipeline(spark, spec, stacked, store.uri(holdout_dir(spec, version)), threshold)
    result = {"version": version, "base_models": names, "meta_coefficients": dict(zip(names, coef, strict=True)),
              "meta_intercept": float(meta.intercept), "threshold": threshold, "holdout": holdout,
              "fit_seconds": round(fit_seconds, 2), "path": path}
    store.write_json(stacked_model_record(spec, version), result)
    return result


def evaluate_pipeline(spark, spec: DatasetSpec, model: PipelineModel, holdout_uri: str,
                      threshold: float | None = None) -> dict:
    """Score a deployable model on a holdout and compute the same metrics as for base models (original scale)."""
    scored = model.transform(spark.read.parquet(holdout_uri))
    if spec.task == "regression":  # the stack predicts the target itself, on its original scale
        return regression_metrics(scored, spec.target, "prediction")
    return evaluate(spec, scored.withColumn("__score", score_column("probability")), "__score", threshold)


def leaderboard(spec: DatasetSpec, results: dict[str, dict], stack: dict) -> tuple[str, list[dict]]:
    """A markdown table of the base models and the stack on the holdout, best first, each column with its scale."""
    metric, larger = primary(spec.task)
    cols = ["rmse", "mae", "r2"] if spec.task == "regression" else ["pr_auc", "roc_auc", "f1", "precision", "recall"]
    rows = [{"model": n, **{c: r["holdout"][c] for c in cols}, "cv": r["cv_mean"], "train_s": r["train_seconds"]}
            for n, r in results.items()]
    rows.append({"model": "stacked", **{c: stack["holdout"][c] for c in cols}, "cv": None,
                 "train_s": stack["fit_seconds"]})
    rows.sort(key=lambda r: -r[metric] if larger else r[metric])
    # every error column names its scale: CV of a log-target model is on log1p(target), the holdout on the target
    head = ("| model | " + " | ".join(labelled(spec, c) for c in cols) + f" | {labelled(spec, 'cv')} | train s |\n|---|"
            + "---|" * (len(cols) + 2))
    body = "\n".join(f"| {r['model']} | " + " | ".join(f"{r[c]:.4g}" for c in cols)
                     + f" | {'' if r['cv'] is None else format(r['cv'], '.4g')} | {r['train_s']} |" for r in rows)
    return head + "\n" + body, rows
