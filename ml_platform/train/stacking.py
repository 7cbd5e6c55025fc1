"""Stacking: a non-negative meta-model (train/meta.py) on the base models' out-of-fold scores, the choice of what
to serve, and the one deployable PipelineModel:

  feature stages ─▶ base model i (own output columns) ─▶ ScoreColumn i ─▶ ... ─▶ Blend

Meta inputs are on the scale the blend is linear in: prices (expm1 of a log-target prediction), log-odds of a
probability, or a linear SVC's margin. Members with weight 0 are left out. The served model is the stack only when
its cross-validated metric beats the best member's out-of-fold one and no member beats it on the holdout;
otherwise it is that member alone, ending in the same Blend stage. `prediction` is the platform's answer: a price
clamped into the spec's label range, or 0/1 at the threshold with the best out-of-fold F1, beside `probability`.

Multiclass: each member contributes its array of class probabilities (ClassScores; a one-vs-rest model's margins
through a softmax), and the stack is a non-negative average of them (meta.multiclass_meta), ending in
ProbabilityBlend: `probability` over the classes and `prediction`, the most probable class's index.
"""

from __future__ import annotations

import math
import time

from pyspark import keyword_only
from pyspark.ml import PipelineModel, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import feature_pipeline_dir, holdout_dir, stacked_model_dir, stacked_model_record, train_dir
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import FOLD, LABEL, ROW_ID, SOFTMAX, edge_notes
from ml_platform.train.meta import Blend, ProbabilityBlend, classification_meta, multiclass_meta, regression_meta
from ml_platform.train.metrics import (
    LOG_ODDS,
    brier,
    curves,
    pad_classes,
    primary,
    regression_metrics,
    reliability,
    score_column,
    softmax,
)
from ml_platform.train.models import evaluate, labelled
from ml_platform.train.training_set import TrainingError

EPS = 1e-6
LOG_ODDS_ELEMENT = -2


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

    element = Param(Params._dummy(), "element", "vector element to take; -1 for a scalar column; -2 for element "
                    "1 minus element 0 (log-odds from log-likelihoods)", typeConverter=TypeConverters.toInt)
    how = Param(Params._dummy(), "how", "identity | expm1 | logit", typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, *, inputCol="prediction", outputCol="score", element=-1, how="identity"):
        super().__init__()
        self._setDefault(element=-1, how="identity")
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import vector_to_array

        col = F.col(self.getInputCol())
        element = self.getOrDefault(self.element)
        if element >= 0:
            col = vector_to_array(col)[element]
        elif element == LOG_ODDS_ELEMENT:
            col = vector_to_array(col)[1] - vector_to_array(col)[0]
        return dataset.withColumn(self.getOutputCol(), meta_input(col, self.getOrDefault(self.how)))


class ClassScores(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """A multi-class member's output vector -> its K class probabilities as an array: the `probability` vector as
    is, or the softmax of a one-vs-rest model's margins; padded with zeros to K if the model saw fewer classes."""

    softmax = Param(Params._dummy(), "softmax", "apply a softmax (margins in)", typeConverter=TypeConverters.toBoolean)
    k = Param(Params._dummy(), "k", "number of classes", typeConverter=TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, inputCol="probability", outputCol="score", softmax=False, k=2):
        super().__init__()
        self._setDefault(softmax=False, k=2)
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import vector_to_array

        p = vector_to_array(F.col(self.getInputCol()))
        if self.getOrDefault(self.softmax):
            p = softmax(p)
        return dataset.withColumn(self.getOutputCol(), pad_classes(p, self.getOrDefault(self.k)))


def _how(spec: DatasetSpec, kind: str) -> str:
    if spec.task == "regression":
        return "expm1" if spec.training.log_target else "identity"
    return "logit" if kind == "probability" else "identity"  # margins and log-odds are on the blend's scale already


def _renamed(model, name: str):
    """A fitted base model writing its own columns, so several can sit in one pipeline."""
    for m in [model, *getattr(model, "models", [])]:  # a one-vs-rest model reads its inner models' columns by its
        for col in ("predictionCol", "probabilityCol", "rawPredictionCol"):  # own names
            if m.hasParam(col):
                m.set(m.getParam(col), f"__{col.removesuffix('Col')}_{name}")
    return model


def _member_stages(spec: DatasetSpec, results: dict[str, dict], names: list[str], how=None) -> list:
    """Each member as its fitted model (own output columns) and the ScoreColumn the blend reads."""
    stages = []
    for n in names:
        kind = results[n]["score"]
        if spec.task == "multiclass":
            column = "rawPrediction" if kind == SOFTMAX else "probability"
            stages += [_renamed(PipelineModel.load(results[n]["model"]).stages[0], n), ClassScores(
                inputCol=f"__{column}_{n}", outputCol=f"score_{n}", softmax=kind == SOFTMAX, k=len(spec.classes))]
            continue
        column = "rawPrediction" if kind == LOG_ODDS else kind
        element = -1 if kind == "prediction" else LOG_ODDS_ELEMENT if kind == LOG_ODDS else 1
        stages += [_renamed(PipelineModel.load(results[n]["model"]).stages[0], n), ScoreColumn(
            inputCol=f"__{column}_{n}", outputCol=f"score_{n}", element=element, how=how or _how(spec, kind))]
    return stages


def _blend(spec: DatasetSpec, names: list[str], weights: list[float], intercept: float, link: str,
           threshold: float | None) -> Blend:
    lo, hi = spec.label_range
    return Blend(inputCols=[f"score_{n}" for n in names], weights=weights, intercept=intercept, task=spec.task,
                 link=link, threshold=0.5 if threshold is None else threshold,
                 clamp=spec.task == "regression" and math.isfinite(lo) and math.isfinite(hi),
                 lower=float(lo) if math.isfinite(lo) else 0.0, upper=float(hi) if math.isfinite(hi) else 0.0)


def member_pipeline(spec: DatasetSpec, features: list, results: dict[str, dict], name: str):
    """One base model served alone, ending in the same Blend stage as a stack: a price (expm1 of a log-target
    prediction, clamped into the label range), or the member's own probability and its out-of-fold F1 threshold
    (a linear SVC's margin through a sigmoid)."""
    r = results[name]
    if spec.task == "multiclass":
        return PipelineModel(stages=features + _member_stages(spec, results, [name])
                             + [ProbabilityBlend(inputCols=[f"score_{name}"], weights=[1.0])]), None
    if spec.task == "regression":
        return PipelineModel(stages=features + _member_stages(spec, results, [name])
                             + [_blend(spec, [name], [1.0], 0.0, "identity", None)]), None
    margin = r["score"] != "probability"
    threshold = 1 / (1 + math.exp(-r["threshold"])) if margin else r["threshold"]
    return PipelineModel(stages=features + _member_stages(spec, results, [name], how="identity") + [_blend(
        spec, [name], [1.0], 0.0, "sigmoid" if margin else "identity", threshold)]), threshold


def _beats(a: float, b: float, larger: bool) -> bool:
    return a > b if larger else a < b


def _worse(a: float, b: float, larger: bool) -> bool:
    """a is worse than b beyond floating-point noise."""
    tol = 1e-9 * max(1.0, abs(b))
    return a < b - tol if larger else a > b + tol


def _best(scores: dict[str, float], larger: bool) -> str:
    return max(sorted(scores), key=lambda n: scores[n] if larger else -scores[n])


def fit_stack(spark, store: Store, spec: DatasetSpec, version: str, results: dict[str, dict]) -> dict:
    """Fit the non-negative meta-model on out-of-fold scores, choose what to serve by out-of-fold evidence (the
    stack if its cross-validated metric beats the best member's out-of-fold one, else that member), guard it on
    the holdout (a member better on the holdout than the choice is served instead), and save the served
    PipelineModel. The result says what was chosen and why."""
    if len(results) < 2:
        raise TrainingError(f"{spec.name}: stacking needs at least 2 trained base models, have {sorted(results)}")
    names = sorted(results)
    metric, larger = primary(spec.task)
    train = lake.read(spark, store.uri(train_dir(spec, version))).select(ROW_ID, LABEL, FOLD, spec.target)
    for n in names:
        how = "identity" if spec.task == "multiclass" else _how(spec, results[n]["score"])  # arrays as they are
        oof = lake.read(spark, results[n]["oof"]).select(ROW_ID, F.col("score").alias(f"raw_{n}"), meta_input(
            F.col("score"), how).alias(f"score_{n}"))
        train = train.join(oof.hint("merge"), ROW_ID)  # no broadcast: OOF tables grow with the data
    cols = [f"score_{n}" for n in names]
    t0 = time.perf_counter()
    threshold = None
    if spec.task == "regression":
        meta = regression_meta(train, cols, spec.target, FOLD)
    elif spec.task == "multiclass":
        meta = multiclass_meta(train, cols, LABEL, FOLD, len(spec.classes), spec.training.seed)
    else:
        # unweighted: class weights would shift the stack's probabilities off the base rate (the Brier score and
        # reliability curve report calibration); the F1 threshold handles the imbalance
        meta = classification_meta(train, cols, {c: f"raw_{n}" for c, n in zip(cols, names, strict=True)}, LABEL,
                                   FOLD, None)
        threshold = curves(meta["oof"], LABEL, "__p")["threshold"]  # best F1 on the stack's out-of-fold p
        meta["oof"].unpersist()
    fit_seconds = time.perf_counter() - t0
    weights = dict(zip(names, meta["weights"], strict=True))
    members_cv = {n: meta["members_cv"][f"score_{n}"] for n in names}
    selected = [n for n in names if weights[n] > 0]
    features = list(PipelineModel.load(store.uri(feature_pipeline_dir(spec, version))).stages)
    holdout_uri = store.uri(holdout_dir(spec, version))
    stack_model, stack_hold = None, None
    if selected:
        out_stage = ProbabilityBlend(inputCols=[f"score_{n}" for n in selected],
                                     weights=[weights[n] for n in selected]) if spec.task == "multiclass" else _blend(
            spec, selected, [weights[n] for n in selected], meta["intercept"],
            "sigmoid" if spec.task == "classification" else "identity", threshold)
        stack_model = PipelineModel(stages=features + _member_stages(spec, results, selected) + [out_stage])
        stack_hold = evaluate_pipeline(spark, spec, stack_model, holdout_uri)
    cv_best = _best(members_cv, larger)
    said = f"CV {metric} {meta['cv']:.4g} vs the best member's out-of-fold {cv_best} {members_cv[cv_best]:.4g}"
    if stack_model is not None and _beats(meta["cv"], members_cv[cv_best], larger):
        served, model, hold, served_threshold = "stacked", stack_model, stack_hold, threshold
        choice = f"stacked ({len(selected)} of {len(names)} members weighted): {said}"
    else:
        served = cv_best
        model, served_threshold = member_pipeline(spec, features, results, served)
        hold = evaluate_pipeline(spark, spec, model, holdout_uri)
        choice = f"{served} alone: the stack does not win in cross-validation ({said})"
    hold_scores = {n: r["holdout"][metric] for n, r in results.items()}
    hold_best = _best(hold_scores, larger)
    if served != hold_best and _worse(hold[metric], hold_scores[hold_best], larger):
        choice += (f"; on the holdout {served} ({metric} {hold[metric]:.4g}) loses to {hold_best} "
                   f"({hold_scores[hold_best]:.4g}), so {hold_best} is served")
        served = hold_best
        model, served_threshold = member_pipeline(spec, features, results, served)
        hold = evaluate_pipeline(spark, spec, model, holdout_uri)
    path = store.uri(stacked_model_dir(spec, version))
    model.write().overwrite().save(path)
    result = {"version": version, "base_models": names, "selected": selected,
              "meta_coefficients": weights, "meta_intercept": meta["intercept"], "threshold": served_threshold,
              "served": served, "choice": choice, "cv": {"stacked": meta["cv"], **members_cv},
              "stack_holdout": stack_hold, "holdout": hold, "best_member": hold_best,
              "best_member_holdout": hold_scores[hold_best], "fit_seconds": round(fit_seconds, 2), "path": path}
    if spec.task == "classification":
        result["reliability"] = reliability(model.transform(lake.read(spark, holdout_uri)), LABEL)
    store.write_json(stacked_model_record(spec, version), result)
    return result


def evaluate_pipeline(spark, spec: DatasetSpec, model: PipelineModel, holdout_uri: str,
                      threshold: float | None = None) -> dict:
    """Score a deployable model on a holdout and compute the same metrics as for base models (original scale);
    classification at `threshold`, by default the model's own (its last stage's)."""
    scored = model.transform(lake.read(spark, holdout_uri))
    last = model.stages[-1]
    if threshold is None and last.hasParam("threshold"):
        threshold = float(last.getOrDefault("threshold"))
    if spec.task == "regression":  # the stack predicts the target itself, on its original scale
        return regression_metrics(scored, spec.target, "prediction")
    if spec.task == "multiclass":
        from pyspark.ml.functions import vector_to_array

        return evaluate(spec, scored.withColumn("__probs", vector_to_array("probability")), "__probs")
    scored = scored.withColumn("__score", score_column("probability"))
    rank = None
    if "rawPrediction" in scored.columns:  # rank by the margin: probabilities of confident models round to 1.0
        rank = "__rank"
        scored = scored.withColumn(rank, score_column(LOG_ODDS))
    return evaluate(spec, scored, "__score", threshold, rank) | {"brier": brier(scored, LABEL, "__score")}


def leaderboard(spec: DatasetSpec, results: dict[str, dict], stack: dict) -> tuple[str, list[dict]]:
    """A markdown table of the base models and the stack on the holdout, best first, each column with its scale,
    the served model marked; then what was served and why, the blend's weights, and any best setting at the edge
    of its grid."""
    metric, larger = primary(spec.task)
    cols = {"regression": ["rmse", "mae", "r2"], "multiclass": ["macro_f1", "log_loss", "accuracy"]}.get(
        spec.task, ["pr_auc", "roc_auc", "f1", "brier"])
    cv = stack.get("cv", {})
    rows = [{"model": n, **{c: r["holdout"].get(c) for c in cols}, "cv": r["cv_mean"], "oof": cv.get(n),
             "weight": stack["meta_coefficients"].get(n), "train_s": r["train_seconds"]} for n, r in results.items()]
    if stack.get("stack_holdout"):
        rows.append({"model": "stacked", **{c: stack["stack_holdout"].get(c) for c in cols}, "cv": None,
                     "oof": cv.get("stacked"), "weight": None, "train_s": stack["fit_seconds"]})
    for r in rows:
        r["served"] = r["model"] == stack["served"]
    rows.sort(key=lambda r: -r[metric] if larger else r[metric])
    fmt = lambda v: "" if v is None else format(v, ".4g")  # noqa: E731
    # every error column names its scale: CV of a log-target model is on log1p(target), the holdout on the target
    head = ("| model | " + " | ".join(labelled(spec, c) for c in cols)
            + f" | {labelled(spec, 'cv')} | out-of-fold {metric} | weight | train s |\n|---|"
            + "---|" * (len(cols) + 4))
    body = "\n".join(f"| {r['model']}{' ◀ served' if r['served'] else ''} | "
                     + " | ".join(fmt(r[c]) for c in cols)
                     + f" | {fmt(r['cv'])} | {fmt(r['oof'])} | {fmt(r['weight'])} | {r['train_s']} |" for r in rows)
    notes = [f"Served: {stack['choice']}."]
    if spec.task == "multiclass":
        recall = stack["holdout"].get("recall_by_class") or {}
        notes.append("Served model's holdout recall by class: " + ", ".join(
            f"{c} {fmt(v) if v is not None else 'n/a (not in the holdout)'}" for c, v in recall.items()))
    notes += edge_notes(results)
    return head + "\n" + body + "\n\n" + "\n".join(f"- {n}" for n in notes), rows
