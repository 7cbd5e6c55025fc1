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


PRIMARY = {"regression": ("rmse", False), "classification": ("pr_auc", True), "multiclass": ("log_loss", False),
           "clustering": ("silhouette", True), "recommendation": ("ndcg_at_k", True)}


def primary(task: str) -> tuple[str, bool]:
    """The metric that ranks models and gates promotion, and whether larger is better: RMSE, PR-AUC, multi-class
    log-loss (a proper score of the class probabilities the stack blends), silhouette, NDCG@k (what a user sees of a
    top-N list)."""
    return PRIMARY[task]


def better(task: str, challenger: float, champion: float, margin: float) -> bool:
    """Errors (RMSE, log-loss): lower by a relative margin. Scores in [-1, 1] (PR-AUC, silhouette, NDCG@k): higher
    by an absolute margin."""
    if PRIMARY[task][1]:
        return challenger >= champion + margin
    return challenger <= champion * (1 - margin)
