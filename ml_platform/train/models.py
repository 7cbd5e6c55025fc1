"""Base models: k-fold cross-validated search over the spec's grid and random draws, out-of-fold scores for
stacking, a refit on the whole train split with the best parameters, and holdout metrics.

Folds come from the training set's fold column (CrossValidator's foldCol), so every model sees the same folds and
the out-of-fold scores of different models line up row by row.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator, Evaluator, RegressionEvaluator
from pyspark.ml.tuning import CrossValidator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import feature_pipeline_dir, holdout_dir, model_artifact, model_result, oof_dir, train_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import (
    FOLD,
    LABEL,
    ROW_ID,
    WEIGHT,
    algorithm,
    beyond_edges,
    grid_edges,
    param_maps,
    search_space,
)
from ml_platform.train.metrics import (
    class_probabilities,
    classification_metrics,
    curves,
    multiclass_metrics,
    pad_classes,
    primary,
    regression_metrics,
    score_column,
)
from ml_platform.train.training_set import TrainingError


def _nominal_label(df: DataFrame, spec: DatasetSpec) -> DataFrame:
    """A multiclass label says how many classes there are (Spark's nominal attribute), so every model and fold
    outputs K class probabilities even where the highest classes are rare or absent in its training rows."""
    if spec.task != "multiclass":
        return df
    meta = {"ml_attr": {"type": "nominal", "name": LABEL, "num_vals": len(spec.classes)}}
    return df.withColumn(LABEL, F.col(LABEL).alias(LABEL, metadata=meta))


def model_score(spec: DatasetSpec, kind: str) -> Column:
    """The score a model contributes per row: one number (regression, binary classification) or, for multiclass,
    the array of its K class probabilities (padded with zeros if a model saw fewer classes)."""
    if spec.task != "multiclass":
        return score_column(kind)
    return pad_classes(class_probabilities(kind), len(spec.classes))


def featurized(spark, store: Store, spec: DatasetSpec, version: str) -> tuple[DataFrame, DataFrame]:
    """Train and holdout with the fitted feature pipeline applied; train is cached, since every fold of every
    parameter map of every model reads it."""
    fp = PipelineModel.load(store.uri(feature_pipeline_dir(spec, version)))
    train = _nominal_label(fp.transform(lake.read(spark, store.uri(train_dir(spec, version)))), spec).persist()
    train.count()
    holdout = fp.transform(lake.read(spark, store.uri(holdout_dir(spec, version))))
    return train, holdout


def _root_cause(e: Exception) -> str:
    text = str(e).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith("\tat ")]
    cause = [ln for ln in lines if "Exception:" in ln or "Error:" in ln]
    return (cause[-1] if cause else lines[0] if lines else type(e).__name__)[:400]


def evaluate(spec: DatasetSpec, scored: DataFrame, score: str, threshold: float | None = None,
             rank: str | None = None) -> dict:
    """Holdout metrics of a scored frame. Regression on a log target: on the log scale and the original one."""
    if spec.task == "classification":
        return classification_metrics(scored, LABEL, score, threshold if threshold is not None else 0.5, rank)
    if spec.task == "multiclass":
        return multiclass_metrics(scored, LABEL, score, spec.classes)
    if spec.training.log_target:
        out = regression_metrics(scored.withColumn("__orig", F.expm1(F.col(score))), spec.target, "__orig")
        log = regression_metrics(scored, LABEL, score)
        return out | {f"log_{k}": v for k, v in log.items() if k != "non_finite"}
    return regression_metrics(scored, spec.target, score)


def scale(spec: DatasetSpec, metric: str) -> str:
    """What a metric is measured on, for labels: CV of a log-target regression runs on log1p(target), holdout
    errors on the target itself; scores and AUCs have no unit."""
    if spec.task != "regression" or metric not in ("rmse", "mae", "log_rmse", "log_mae", "cv"):
        return ""
    return f"log1p {spec.target}" if metric.startswith("log_") or (metric == "cv" and spec.training.log_target) \
        else spec.target


def labelled(spec: DatasetSpec, metric: str) -> str:
    """`rmse (price)`, `cv rmse (log1p price)`, `r2`: a metric's name with its scale."""
    name = f"cv {primary(spec.task)[0]}" if metric == "cv" else metric
    unit = scale(spec, metric)
    return f"{name} ({unit})" if unit else name


class MulticlassEvaluator(Evaluator):
    """Macro-F1 of a multi-class model's class probabilities (argmax), the number the stack and promotion use."""

    def __init__(self, spec: DatasetSpec, kind: str):
        super().__init__()
        self.spec, self.kind = spec, kind

    def _evaluate(self, dataset) -> float:
        scored = dataset.withColumn("__cv_probs", model_score(self.spec, self.kind))
        return multiclass_metrics(scored, LABEL, "__cv_probs", self.spec.classes)["macro_f1"]

    def isLargerBetter(self) -> bool:
        return True


class ScoreEvaluator(Evaluator):
    """PR-AUC of a classifier's score (metrics.score_column's kind), so cross-validation ranks settings by the same
    number the out-of-fold scores, the holdout metrics and the stack use."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def _evaluate(self, dataset) -> float:
        return BinaryClassificationEvaluator(labelCol=LABEL, rawPredictionCol="__cv_score", metricName="areaUnderPR") \
            .evaluate(dataset.withColumn("__cv_score", score_column(self.kind)))

    def isLargerBetter(self) -> bool:
        return True


def train_algorithm(store: Store, spec: DatasetSpec, version: str, name: str, train: DataFrame,
                    holdout: DataFrame, log=print) -> dict:
    where = f"{spec.name}/model_{name}"
    alg = algorithm(spec, name)
    est = alg.make(alg.features, spec.training.seed)
    if spec.task in ("classification", "multiclass") and alg.weights:
        est.set(est.getParam("weightCol"), WEIGHT)
    settings = search_space(spec, name)
    maps = param_maps(est, settings, f"spec {spec.name}: algorithms.{name}")
    kind = "prediction" if spec.task == "regression" else alg.score
    metric, larger = primary(spec.task)
    ev = (RegressionEvaluator(labelCol=LABEL, predictionCol="prediction", metricName="rmse")
          if spec.task == "regression" else MulticlassEvaluator(spec, kind) if spec.task == "multiclass" else
          ScoreEvaluator(kind))
    folds = spec.training.folds
    cv = CrossValidator(estimator=est, estimatorParamMaps=maps, evaluator=ev, numFolds=folds, foldCol=FOLD,
                        collectSubModels=True, parallelism=spec.training.parallelism, seed=spec.training.seed)
    log(f"{where}: started: {len(maps)} parameter maps x {folds} folds")
    t0 = time.perf_counter()
    try:
        cvm = cv.fit(train)
    except Exception as e:  # noqa: BLE001 - any estimator failure becomes a clear error on this model's asset
        raise TrainingError(f"{where}: training failed: {_root_cause(e)}") from e
    avg, std = [float(x) for x in cvm.avgMetrics], [float(x) for x in cvm.stdMetrics]
    best = max(range(len(avg)), key=lambda i: avg[i] if larger else -avg[i])
    # which CV run holds each setting's fold models: the spec's, then the one past the grid's edges (if any)
    runs = [(cvm, 0)]
    more = beyond_edges(spec, name, settings[best]) if spec.training.extend_grid else []
    if more:
        log(f"{where}: best {settings[best]} is at its grid's edge; also trying {more}")
        try:
            ext = cv.copy({cv.estimatorParamMaps: param_maps(est, more, f"spec {spec.name}: algorithms.{name}")}) \
                .fit(train)
        except Exception as e:  # noqa: BLE001 - a step Spark refuses ends the extension, not the model
            log(f"{where}: the settings past the grid's edge failed: {_root_cause(e)}")
            more = []
        else:
            runs.append((ext, len(settings)))
            settings, avg, std = settings + more, avg + [float(x) for x in ext.avgMetrics], \
                std + [float(x) for x in ext.stdMetrics]
            best = max(range(len(avg)), key=lambda i: avg[i] if larger else -avg[i])
    cvm, first = next((r, f) for r, f in reversed(runs) if best >= f)
    train_seconds = time.perf_counter() - t0
    log(f"{where}: CV done in {train_seconds:.0f}s: best {settings[best]}, {labelled(spec, 'cv')} "
        f"{avg[best]:.4g} ± {std[best]:.2g}; now scoring out-of-fold rows and the holdout")
    t1 = time.perf_counter()
    # out-of-fold: each row scored by the best setting's model that did not see it
    parts = [cvm.subModels[k][best - first].transform(train.where(F.col(FOLD) == k))
             .select(ROW_ID, LABEL, model_score(spec, kind).alias("score")) for k in range(folds)]
    oof = parts[0]
    for p in parts[1:]:
        oof = oof.unionByName(p)
    oof_uri, model_uri = store.uri(oof_dir(spec, version, name)), store.uri(model_artifact(spec, version, name))
    lake.overwrite(oof, oof_uri)
    oof = lake.read(train.sparkSession, oof_uri)
    threshold = curves(oof, LABEL, "score")["threshold"] if spec.task == "classification" else None
    scored = cvm.bestModel.transform(holdout).withColumn("__score", model_score(spec, kind))
    hold = evaluate(spec, scored, "__score", threshold)
    validation_seconds = time.perf_counter() - t1
    if hold["non_finite"]:
        raise TrainingError(f"{where}: did not converge: {hold['non_finite']} non-finite holdout predictions "
                            f"with {settings[best]}")
    PipelineModel(stages=[cvm.bestModel]).write().overwrite().save(model_uri)
    result = {
        "algorithm": name, "version": version, "features": alg.features, "score": kind,
        "search_space": settings, "best_params": settings[best], "param_maps": len(maps), "folds": folds,
        "grid_edges": grid_edges(spec, name, settings[best]), "grid_extended": more,
        "cv_metric": metric,
        "cv_mean": avg[best], "cv_std": std[best], "cv_all": avg, "holdout": hold, "threshold": threshold,
        "train_seconds": round(train_seconds, 2), "validation_seconds": round(validation_seconds, 2),
        "model": model_uri, "oof": oof_uri, "ok": True,
    }
    store.write_json(model_result(spec, version, name), result)
    log(f"{where}: finished in {time.perf_counter() - t0:.0f}s: holdout {metric} {hold[metric]:.4g}")
    return result


def train_models(spark, store: Store, spec: DatasetSpec, version: str, names: list[str], concurrent: int,
                 log=print, on_done=None) -> dict[str, dict | Exception]:
    """Train several algorithms on one cached training set, `concurrent` at a time (threads sharing the Spark
    session; Spark runs their jobs side by side). A failure is returned in place of its result, never raised, so
    the other models still finish. `on_done(name, result or error)` runs as each model ends (MLflow logging)."""
    for name in names:
        algorithm(spec, name)  # unknown names fail before any work starts
    log(f"{spec.name}: training {len(names)} models, {max(1, concurrent)} at a time: {', '.join(names)}")
    train, holdout = featurized(spark, store, spec, version)
    try:
        return each_model(store, spec, version, names, concurrent, lambda name: train_algorithm(
            store, spec, version, name, train, holdout, log), log, on_done)
    finally:
        train.unpersist()


def each_model(store: Store, spec: DatasetSpec, version: str, names: list[str], concurrent: int, train_one,
               log=print, on_done=None) -> dict[str, dict | Exception]:
    """`train_one(name) -> result` for every name, `concurrent` at a time (threads sharing the Spark session). A
    failure is recorded as that model's result file and returned in place of its result, never raised, so the
    others still finish; `on_done(name, result or error)` runs as each model ends. Every task kind trains so."""
    finished = []

    def one(name):
        try:
            out = train_one(name)
        except Exception as e:  # noqa: BLE001
            store.write_json(model_result(spec, version, name), {"algorithm": name, "ok": False, "error": str(e)})
            out = e if isinstance(e, TrainingError) else TrainingError(f"{spec.name}/model_{name}: {e}")
            log(f"{spec.name}/model_{name}: failed: {out}")
        if on_done is not None:
            on_done(name, out)
        finished.append(name)
        log(f"{spec.name}: {len(finished)} of {len(names)} models done")
        return out

    with ThreadPoolExecutor(max_workers=max(1, concurrent)) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def model_results(store: Store, spec: DatasetSpec, version: str) -> dict[str, dict]:
    """The successful base models of a version, by algorithm."""
    out = {}
    for name in spec.algorithms:
        r = store.read_json(model_result(spec, version, name))
        if r and r.get("ok"):
            out[name] = r
    return out
