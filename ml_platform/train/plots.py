"""Diagnostic plots as PNG bytes: predicted vs actual and residuals (regression), ROC, PR and
reliability curves (classification). Points come from a bounded sample or from binned counts, never whole
columns."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

SAMPLE_ROWS = 2000


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def regression_plots(scored: DataFrame, actual: str, predicted: str, title: str) -> dict[str, bytes]:
    n = scored.count()
    sample = scored.select(F.col(actual).cast("double").alias("y"), F.col(predicted).cast("double").alias("p"))
    if n > SAMPLE_ROWS:
        sample = sample.sample(fraction=min(1.0, 1.5 * SAMPLE_ROWS / n), seed=1).limit(SAMPLE_ROWS)
    rows = sample.collect()
    y, p = [r["y"] for r in rows], [r["p"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y, p, s=4, alpha=0.4)
    lo, hi = min(y + p), max(y + p)
    ax.plot([lo, hi], [lo, hi], color="k", lw=1)
    ax.set(xlabel="actual", ylabel="predicted", title=f"{title}: predicted vs actual")
    out = {"predicted_vs_actual.png": _png(fig)}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(p, [a - b for a, b in zip(y, p, strict=True)], s=4, alpha=0.4)
    ax.axhline(0, color="k", lw=1)
    ax.set(xlabel="predicted", ylabel="actual - predicted", title=f"{title}: residuals")
    out["residuals.png"] = _png(fig)
    return out


def classification_plots(curve: dict, title: str) -> dict[str, bytes]:
    fig, ax = plt.subplots(figsize=(5, 5))
    fpr, tpr = zip(*sorted(curve["roc"]), strict=True)
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: ROC")
    out = {"roc.png": _png(fig)}
    fig, ax = plt.subplots(figsize=(5, 5))
    rec, prec = zip(*sorted(curve["pr"]), strict=True)
    ax.plot(rec, prec)
    ax.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall", ylim=(0, 1.02))
    out["pr.png"] = _png(fig)
    return out


def reliability_plot(bins: list[dict], title: str) -> bytes:
    """Observed share of positives against mean predicted probability per bin; the diagonal is calibrated."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([b["mean_p"] for b in bins], [b["observed"] for b in bins], marker="o")
    ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive share", title=f"{title}: reliability",
           xlim=(0, 1), ylim=(0, 1))
    return _png(fig)


def confusion_plot(confusion: list[list[int]], classes: tuple[str, ...] | list[str], title: str) -> bytes:
    """The holdout confusion matrix, rows normalized (each true class's share predicted as each class), counts
    written in the cells."""
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    shares = [[v / max(sum(row), 1) for v in row] for row in confusion]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}: confusion (holdout)")
    return _png(fig)
