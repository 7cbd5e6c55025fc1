"""The stack's meta-learner, chosen by out-of-fold evidence, and the one output stage every served model ends in.

Meta inputs are the base models' out-of-fold scores on the scale the blend is linear in (stacking.meta_input).
Weights are non-negative, so a weak member gets weight 0 instead of a sign-flipped contribution, and a member
with weight 0 is left out of the served pipeline:

- regression: non-negative least squares with a free intercept and a small ridge, solved on the driver from
  per-fold moment sums (one Spark aggregation, whatever the row count);
- classification: logistic regression on the members' log-odds with coefficients bounded below by 0;
- multiclass: a weighted average of the members' class probabilities (weights ≥ 0, summing to 1) that minimizes
  the out-of-fold log-loss, solved on the driver from a sample of at most MULTICLASS_ROWS out-of-fold rows.

Each is cross-validated on the same folds the members were (fit on k-1 folds of out-of-fold rows, scored on the
k-th), so the stack's CV figure and each member's out-of-fold figure are comparable. `Blend` computes
`intercept + Σ wᵢ·scoreᵢ`; regression clamps it into the spec's label range, classification turns it into a
probability (sigmoid of log-odds, or a member's own probability) and a 0/1 prediction at a threshold.
`ProbabilityBlend` is the multi-class output stage: `probability` (the blended class probabilities) and
`prediction` (the most probable class).
"""

from __future__ import annotations

import math

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

RIDGE = 1e-6  # relative to the mean member variance: keeps the Gram matrix invertible when members agree
MULTICLASS_ROWS = 200_000  # out-of-fold rows the multi-class blend is fitted on (a seeded sample beyond that)
MIN_WEIGHT = 1e-3  # multi-class blend weights below this are dropped (and the rest renormalized)


class Blend(Transformer, HasInputCols, DefaultParamsReadable, DefaultParamsWritable):
    """`prediction` from z, a weighted sum of input columns; for classification also `probability` [1 - p, p] and
    `rawPrediction` [-z, z] (ranking by z keeps the order that p loses where it rounds to 0 or 1)."""

    weights = Param(Params._dummy(), "weights", "one weight per input column", typeConverter=TypeConverters.toListFloat)
    intercept = Param(Params._dummy(), "intercept", "added to the weighted sum", typeConverter=TypeConverters.toFloat)
    task = Param(Params._dummy(), "task", "regression | classification", typeConverter=TypeConverters.toString)
    link = Param(Params._dummy(), "link", "classification: sigmoid (sum of log-odds) | identity (a probability)",
                 typeConverter=TypeConverters.toString)
    threshold = Param(Params._dummy(), "threshold", "classification: p at or above it predicts 1",
                      typeConverter=TypeConverters.toFloat)
    clamp = Param(Params._dummy(), "clamp", "regression: clamp into [lower, upper]",
                  typeConverter=TypeConverters.toBoolean)
    lower = Param(Params._dummy(), "lower", "regression clamp, low end", typeConverter=TypeConverters.toFloat)
    upper = Param(Params._dummy(), "upper", "regression clamp, high end", typeConverter=TypeConverters.toFloat)

    @keyword_only
    def __init__(self, *, inputCols=None, weights=None, intercept=0.0, task="regression", link="identity",
                 threshold=0.5, clamp=False, lower=0.0, upper=0.0):
        super().__init__()
        self._setDefault(intercept=0.0, task="regression", link="identity", threshold=0.5, clamp=False, lower=0.0,
                         upper=0.0)
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector

        get = self.getOrDefault
        z = F.lit(get(self.intercept))
        for col, w in zip(self.getInputCols(), get(self.weights), strict=True):
            z = z + F.lit(w) * F.col(col)
        if get(self.task) == "regression":
            if get(self.clamp):
                z = F.least(F.greatest(z, F.lit(get(self.lower))), F.lit(get(self.upper)))
            return dataset.withColumn("prediction", z.cast("double"))
        p = 1 / (1 + F.exp(-z)) if get(self.link) == "sigmoid" else F.least(F.greatest(z, F.lit(0.0)), F.lit(1.0))
        return (dataset.withColumn("__blend_p", p.cast("double"))
                .withColumn("rawPrediction", array_to_vector(F.array(-z, z)))
                .withColumn("probability", array_to_vector(F.array(1 - F.col("__blend_p"), F.col("__blend_p"))))
                .withColumn("prediction", (F.col("__blend_p") >= get(self.threshold)).cast("double"))
                .drop("__blend_p"))


class ProbabilityBlend(Transformer, HasInputCols, DefaultParamsReadable, DefaultParamsWritable):
    """Multi-class output: `probability` = Σ wᵢ·pᵢ over the members' class-probability arrays (weights sum to 1),
    `prediction` = the index of the most probable class."""

    weights = Param(Params._dummy(), "weights", "one weight per input column", typeConverter=TypeConverters.toListFloat)

    @keyword_only
    def __init__(self, *, inputCols=None, weights=None):
        super().__init__()
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector

        from ml_platform.train.metrics import argmax

        cols, ws = self.getInputCols(), self.getOrDefault(self.weights)

        def add(w: float):
            return lambda acc, x: acc + F.lit(w) * x

        blended = F.transform(F.col(cols[0]), lambda x: F.lit(ws[0]) * x)
        for col, w in zip(cols[1:], ws[1:], strict=True):
            blended = F.zip_with(blended, F.col(col), add(w))
        return (dataset.withColumn("__blend_probs", blended)
                .withColumn("probability", array_to_vector("__blend_probs"))
                .withColumn("prediction", argmax(F.col("__blend_probs")))
                .drop("__blend_probs"))


# ---- regression: non-negative least squares from moments -------------------------------------------------------

def fold_moments(df: DataFrame, cols: list[str], label: str, fold: str) -> dict[int, dict]:
    """Per fold: n, Σx, Σy, Σxxᵀ, Σxy, Σy² of the meta inputs `cols` and `label`, in one aggregation."""
    k = len(cols)
    aggs = [F.count(F.lit(1)).alias("n"), F.sum(label).alias("sy"), F.sum(F.col(label) ** 2).alias("syy")]
    aggs += [F.sum(c).alias(f"sx{i}") for i, c in enumerate(cols)]
    aggs += [F.sum(F.col(c) * F.col(label)).alias(f"sxy{i}") for i, c in enumerate(cols)]
    aggs += [F.sum(F.col(cols[i]) * F.col(cols[j])).alias(f"sxx{i}_{j}") for i in range(k) for j in range(i, k)]
    out = {}
    for r in df.groupBy(fold).agg(*aggs).collect():
        sxx = np.zeros((k, k))
        for i in range(k):
            for j in range(i, k):
                sxx[i, j] = sxx[j, i] = r[f"sxx{i}_{j}"]
        out[int(r[fold])] = {"n": float(r["n"]), "sy": float(r["sy"]), "syy": float(r["syy"]), "sxx": sxx,
                             "sx": np.array([r[f"sx{i}"] for i in range(k)], dtype=float),
                             "sxy": np.array([r[f"sxy{i}"] for i in range(k)], dtype=float)}
    return out


def _total(moments: list[dict]) -> dict:
    return {key: sum(m[key] for m in moments) for key in ("n", "sy", "syy", "sxx", "sx", "sxy")}


def nnls_fit(m: dict) -> tuple[np.ndarray, float]:
    """argmin Σ(y - c - x·w)² over w ≥ 0 and a free c, plus a small ridge, from moment sums."""
    from scipy.optimize import nnls

    n = m["n"]
    xm, ym = m["sx"] / n, m["sy"] / n
    gram = m["sxx"] - n * np.outer(xm, xm)
    b = m["sxy"] - n * xm * ym
    k = len(b)
    gram = gram + RIDGE * max(np.trace(gram) / k, 1e-12) * np.eye(k)
    low = np.linalg.cholesky(gram)  # gram = L Lᵀ, so ‖Lᵀw - L⁻¹b‖² = wᵀ gram w - 2bᵀw + const
    w, _ = nnls(low.T, np.linalg.solve(low, b))
    return w, float(ym - xm @ w)


def sse(m: dict, w: np.ndarray, c: float) -> float:
    """Σ(y - c - x·w)² from moment sums."""
    value = (m["syy"] - 2 * c * m["sy"] - 2 * w @ m["sxy"] + m["n"] * c * c + 2 * c * w @ m["sx"]
             + w @ m["sxx"] @ w)
    return max(float(value), 0.0)


def regression_meta(df: DataFrame, cols: list[str], label: str, fold: str) -> dict:
    """Weights on all rows, the stack's cross-validated RMSE, and each member's out-of-fold RMSE (same rows)."""
    per_fold = fold_moments(df, cols, label, fold)
    total = _total(list(per_fold.values()))
    cv_sse = 0.0
    for f, m in per_fold.items():
        w, c = nnls_fit(_total([o for g, o in per_fold.items() if g != f]))
        cv_sse += sse(m, w, c)
    w, c = nnls_fit(total)
    members = {}
    for i, col in enumerate(cols):
        e = np.zeros(len(cols))
        e[i] = 1.0
        members[col] = math.sqrt(sse(total, e, 0.0) / total["n"])
    return {"weights": [float(x) for x in w], "intercept": c, "cv": math.sqrt(cv_sse / total["n"]),
            "members_cv": members}


# ---- classification: logistic regression with non-negative coefficients ----------------------------------------

def _logistic(cols: list[str], label: str, weight: str | None):
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Matrices

    lr = LogisticRegression(featuresCol="__meta_x", labelCol=label, regParam=1e-4, maxIter=200,
                            probabilityCol="__meta_prob", rawPredictionCol="__meta_raw", predictionCol="__meta_pred",
                            lowerBoundsOnCoefficients=Matrices.dense(1, len(cols), [0.0] * len(cols)))
    if weight:
        lr.setWeightCol(weight)
    return lr


def classification_meta(df: DataFrame, cols: list[str], raw: dict[str, str], label: str, fold: str,
                        weight: str | None) -> dict:
    """Non-negative logistic meta-model: weights on all rows, the stack's pooled out-of-fold PR-AUC over the
    folds, each member's pooled out-of-fold PR-AUC from its raw score (`raw`: meta column -> raw score column,
    so ties a log-odds clip would create do not change a member's figure), and the stack's out-of-fold
    probabilities (for the threshold)."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.functions import vector_to_array

    x = VectorAssembler(inputCols=cols, outputCol="__meta_x").transform(df).cache()
    folds = sorted(r[0] for r in x.select(fold).distinct().collect())
    parts = []
    for f in folds:
        model = _logistic(cols, label, weight).fit(x.where(F.col(fold) != f))
        parts.append(model.transform(x.where(F.col(fold) == f))
                     .select(label, vector_to_array("__meta_prob")[1].alias("__p")))
    oof = parts[0]
    for p in parts[1:]:
        oof = oof.unionByName(p)
    oof = oof.cache()
    ev = BinaryClassificationEvaluator(labelCol=label, metricName="areaUnderPR")
    model = _logistic(cols, label, weight).fit(x)
    out = {"weights": [float(c) for c in model.coefficients], "intercept": float(model.intercept),
           "cv": ev.setRawPredictionCol("__p").evaluate(oof), "oof": oof,
           "members_cv": {c: ev.setRawPredictionCol(raw[c]).evaluate(x) for c in cols}}
    x.unpersist()
    return out


# ---- multiclass: a non-negative average of class probabilities ---------------------------------------------------

def macro_f1(y: np.ndarray, yhat: np.ndarray, k: int) -> float:
    """Macro-F1 over the classes present in y or yhat (as metrics.multiclass_metrics computes it in Spark)."""
    f1s = []
    for c in range(k):
        tp = float(np.sum((y == c) & (yhat == c)))
        true_c, pred_c = float(np.sum(y == c)), float(np.sum(yhat == c))
        if true_c or pred_c:
            prec, rec = (tp / pred_c if pred_c else 0.0), (tp / true_c if true_c else 0.0)
            f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return float(np.mean(f1s)) if f1s else 0.0


def _nll(w: np.ndarray, p_true: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean -log(Σ wₘ pₘ(y)) and its gradient; p_true[i, m] = member m's probability of row i's true class."""
    q = np.clip(p_true @ w, 1e-15, None)
    return float(-np.mean(np.log(q))), -(p_true / q[:, None]).mean(axis=0)


def simplex_fit(p_true: np.ndarray) -> np.ndarray:
    """Weights ≥ 0 summing to 1 that minimize the log-loss of the blended probabilities; tiny ones dropped."""
    from scipy.optimize import minimize

    m = p_true.shape[1]
    res = minimize(_nll, np.full(m, 1.0 / m), args=(p_true,), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                   options={"maxiter": 200, "ftol": 1e-10})
    w = np.clip(res.x, 0.0, None)
    w[w < MIN_WEIGHT] = 0.0
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def multiclass_meta(df: DataFrame, cols: list[str], label: str, fold: str, k: int, seed: int) -> dict:
    """Weights on all (sampled) out-of-fold rows, the blend's cross-validated macro-F1 (fit on k-1 folds, scored on
    the k-th, pooled) and log-loss, and each member's out-of-fold macro-F1 and log-loss on the same rows."""
    n = df.count()
    if n > MULTICLASS_ROWS:
        df = df.sample(fraction=MULTICLASS_ROWS / n, seed=seed)
    rows = df.select(label, fold, *cols).collect()
    y = np.array([int(r[0]) for r in rows])
    folds = np.array([int(r[1]) for r in rows])
    probs = np.array([[r[2 + j] for j in range(len(cols))] for r in rows], dtype=float)  # (n, members, k)
    p_true = probs[np.arange(len(y)), :, y]
    blended = np.zeros((len(y), k))
    for f in np.unique(folds):
        w = simplex_fit(p_true[folds != f])
        blended[folds == f] = np.einsum("m,nmk->nk", w, probs[folds == f])
    w = simplex_fit(p_true)
    members = {c: macro_f1(y, probs[:, j, :].argmax(axis=1), k) for j, c in enumerate(cols)}
    return {"weights": [float(x) for x in w], "intercept": 0.0, "cv": macro_f1(y, blended.argmax(axis=1), k),
            "cv_log_loss": _nll(np.ones(1), blended[np.arange(len(y)), y][:, None])[0], "members_cv": members,
            "members_log_loss": {c: _nll(np.ones(1), p_true[:, [j]])[0] for j, c in enumerate(cols)},
            "rows": len(y)}
