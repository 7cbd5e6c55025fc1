"""Holdout metrics and curves, computed by Spark aggregations; only a few hundred numbers reach the driver."""

from __future__ import annotations

import math

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

LOG_ODDS = "logOdds"  # a score kind: rawPrediction[1] - rawPrediction[0], a model's log-odds without rounding


def score_column(kind: str, prefix: str = "") -> Column:
    """The one number per row a model contributes: the prediction (regression), the positive-class probability,
    the positive-class margin (linear SVC has no probability), or the log-odds (naive Bayes, whose probabilities
    round to exactly 0 or 1 for most rows, so that ranking by them ties)."""
    if kind == "prediction":
        return F.col(f"{prefix}prediction")
    if kind == LOG_ODDS:
        raw = vector_to_array(F.col(f"{prefix}rawPrediction"))
        return raw[1] - raw[0]
    return vector_to_array(F.col(f"{prefix}{kind}"))[1]


def regression_metrics(df: DataFrame, label: str, pred: str) -> dict[str, float]:
    y, p = F.col(label).cast("double"), F.col(pred).cast("double")
    row = df.agg(F.sqrt(F.avg((y - p) ** 2)).alias("rmse"), F.avg(F.abs(y - p)).alias("mae"),
                 F.var_pop(y).alias("var"), F.avg((y - p) ** 2).alias("mse"), F.count(p).alias("n"),
                 F.sum(F.when(F.isnan(p) | p.isNull(), 1).otherwise(0)).alias("non_finite")).first()
    r2 = 1 - row["mse"] / row["var"] if row["var"] else float("nan")
    return {"rmse": float(row["rmse"]), "mae": float(row["mae"]), "r2": float(r2),
            "non_finite": int(row["non_finite"])}


def _curve_counts(df: DataFrame, label: str, score: str, points: int = 100) -> tuple[list, float, float]:
    """(threshold, positives at or above it, negatives at or above it), at quantiles of all scores and of the
    positives' scores, so a rare positive class still gets a fine curve where it lives."""
    qs = [i / points for i in range(points)]
    ts = set(df.approxQuantile(score, qs, 0.001))
    ts |= set(df.where(F.col(label) == 1).approxQuantile(score, qs, 0.001))
    ts = sorted(t for t in ts if t is not None and math.isfinite(t))
    y, s = F.col(label), F.col(score)
    aggs = [F.sum(y).alias("P"), F.count(F.lit(1)).alias("N")]
    for i, t in enumerate(ts):
        aggs += [F.sum(F.when(s >= t, y).otherwise(0)).alias(f"tp{i}"), F.sum(F.when(s >= t, 1).otherwise(0))
                 .alias(f"pp{i}")]
    row = df.agg(*aggs).first()
    total_p, total = float(row["P"]), float(row["N"])
    counts = [(t, float(row[f"tp{i}"]), float(row[f"pp{i}"]) - float(row[f"tp{i}"])) for i, t in enumerate(ts)]
    return counts, total_p, total - total_p


def curves(df: DataFrame, label: str, score: str) -> dict:
    """ROC and PR curves, and the threshold with the best F1."""
    counts, p, n = _curve_counts(df, label, score)
    roc, pr, best = [(1.0, 1.0)], [], (0.0, 0.5, 0.0, 0.0)
    for t, tp, fp in counts:
        recall = tp / p if p else 0.0
        precision = tp / (tp + fp) if tp + fp else 1.0
        roc.append((fp / n if n else 0.0, recall))
        pr.append((recall, precision))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if f1 > best[0]:
            best = (f1, t, precision, recall)
    roc.append((0.0, 0.0))
    return {"roc": roc, "pr": pr, "best_f1": best[0], "threshold": best[1], "precision": best[2],
            "recall": best[3]}


def classification_metrics(df: DataFrame, label: str, score: str, threshold: float,
                           rank: str | None = None) -> dict[str, float]:
    """AUCs by `rank` (default: the score; a served model's log-odds, which do not round to 1.0 as its probability
    can), precision, recall and F1 at `threshold` on the score."""
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    ev = BinaryClassificationEvaluator(labelCol=label, rawPredictionCol=rank or score)
    y, hit = F.col(label), F.col(score) >= threshold
    row = df.agg(F.sum(F.when(hit & (y == 1), 1).otherwise(0)).alias("tp"),
                 F.sum(F.when(hit & (y == 0), 1).otherwise(0)).alias("fp"),
                 F.sum(F.when(~hit & (y == 1), 1).otherwise(0)).alias("fn"),
                 F.sum(F.when(F.isnan(score) | F.col(score).isNull(), 1).otherwise(0)).alias("non_finite")).first()
    tp, fp, fn = row["tp"], row["fp"], row["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"roc_auc": ev.setMetricName("areaUnderROC").evaluate(df),
            "pr_auc": ev.setMetricName("areaUnderPR").evaluate(df),
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "precision": precision, "recall": recall, "threshold": threshold, "non_finite": int(row["non_finite"])}


def argmax(probs: Column) -> Column:
    """The index (0-based, as a double like Spark's predictions) of an array's largest element."""
    return (F.array_position(probs, F.array_max(probs)) - 1).cast("double")


def softmax(scores: Column) -> Column:
    """exp(s_i - max) / sum: margins (a one-vs-rest model's per-class scores) as probabilities that sum to 1."""
    top = F.array_max(scores)
    e = F.transform(scores, lambda x: F.exp(x - top))
    total = F.aggregate(e, F.lit(0.0), lambda acc, x: acc + x)
    return F.transform(e, lambda x: x / total)


def class_probabilities(kind: str, prefix: str = "") -> Column:
    """A multi-class model's class probabilities as an array: its `probability` vector, or the softmax of its
    `rawPrediction` (one-vs-rest margins, kind "softmax")."""
    if kind == "softmax":
        return softmax(vector_to_array(F.col(f"{prefix}rawPrediction")))
    return vector_to_array(F.col(f"{prefix}probability"))


def pad_classes(probs: Column, k: int) -> Column:
    """An array of class probabilities as exactly k: a model that saw fewer classes (the highest ones absent from its
    training rows) gets zeros for them."""
    return F.when(F.size(probs) >= k, F.slice(probs, 1, k)).otherwise(
        F.concat(probs, F.array_repeat(F.lit(0.0), F.lit(k) - F.size(probs))))


LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] before the log, as scikit-learn does


def multiclass_metrics(df: DataFrame, label: str, probs: str, classes: tuple[str, ...]) -> dict:
    """Holdout metrics of class probabilities (an array column) against a 0..K-1 label, from one aggregation:
    macro-F1 (over the classes present in the labels or the predictions), log-loss, accuracy, per-class recall and
    F1, and the confusion matrix (rows: true class, columns: predicted)."""
    p = F.col(probs)
    y = F.col(label).cast("int")
    p_true = F.least(F.greatest(F.element_at(p, y + 1), F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
    bad = F.exists(p, lambda x: F.isnan(x) | x.isNull())
    rows = (df.select(y.alias("y"), argmax(p).cast("int").alias("yhat"), (-F.log(p_true)).alias("nll"),
                      bad.alias("bad"))
            .groupBy("y", "yhat").agg(F.count(F.lit(1)).alias("n"), F.sum("nll").alias("nll"),
                                      F.sum(F.col("bad").cast("int")).alias("bad")).collect())
    k = len(classes)
    confusion = [[0] * k for _ in range(k)]
    nll, bad_rows = 0.0, 0
    for r in rows:
        if r["yhat"] is not None and 0 <= r["y"] < k and 0 <= r["yhat"] < k:
            confusion[r["y"]][r["yhat"]] += int(r["n"])
        nll += float(r["nll"] or 0.0)
        bad_rows += int(r["bad"] or 0)
    n = sum(map(sum, confusion))
    recall, f1 = {}, {}
    present = []
    for c in range(k):
        tp, true_c, pred_c = confusion[c][c], sum(confusion[c]), sum(confusion[r][c] for r in range(k))
        recall[classes[c]] = tp / true_c if true_c else None
        prec = tp / pred_c if pred_c else 0.0
        rec = tp / true_c if true_c else 0.0
        f1[classes[c]] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        if true_c or pred_c:
            present.append(classes[c])
    return {"macro_f1": sum(f1[c] for c in present) / len(present) if present else 0.0,
            "log_loss": nll / n if n else float("nan"),
            "accuracy": sum(confusion[c][c] for c in range(k)) / n if n else 0.0,
            "recall_by_class": recall, "f1_by_class": f1, "confusion": confusion, "non_finite": bad_rows}


def brier(df: DataFrame, label: str, p: str) -> float:
    """Mean squared difference between the predicted probability and the 0/1 outcome (lower is better)."""
    return float(df.agg(F.avg((F.col(p) - F.col(label)) ** 2)).first()[0])


def reliability(scored: DataFrame, label: str, bins: int = 10) -> list[dict]:
    """The reliability curve of a model's `probability`: per equal-width bin of p, its rows, mean p and the
    observed share of positives. A calibrated model has observed ≈ mean p in every bin."""
    p = vector_to_array(F.col("probability"))[1]
    b = F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int")
    rows = (scored.select(b.alias("bin"), p.alias("p"), F.col(label).alias("y")).groupBy("bin")
            .agg(F.count(F.lit(1)).alias("n"), F.avg("p").alias("mean_p"), F.avg("y").alias("observed"))
            .orderBy("bin").collect())
    return [{"bin": f"{r['bin'] / bins:.1f}-{(r['bin'] + 1) / bins:.1f}", "n": int(r["n"]),
             "mean_p": float(r["mean_p"]), "observed": float(r["observed"])} for r in rows]


PRIMARY = {"regression": ("rmse", False), "classification": ("pr_auc", True), "multiclass": ("macro_f1", True),
           "clustering": ("silhouette", True), "recommendation": ("ndcg_at_k", True)}


def primary(task: str) -> tuple[str, bool]:
    """The metric that ranks models and gates promotion, and whether larger is better: RMSE, PR-AUC, macro-F1
    (every class counts alike, as the balanced class weights train them), silhouette, NDCG@k (what a user sees of a
    top-N list)."""
    return PRIMARY[task]


def better(task: str, challenger: float, champion: float, margin: float) -> bool:
    """Errors (RMSE): lower by a relative margin. Scores in [-1, 1] (PR-AUC, macro-F1, silhouette, NDCG@k): higher
    by an absolute margin."""
    if PRIMARY[task][1]:
        return challenger >= champion + margin
    return challenger <= champion * (1 - margin)
