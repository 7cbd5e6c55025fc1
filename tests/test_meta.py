"""The stack's meta-learner on hand-made out-of-fold scores: non-negative weights from moment sums, honest
cross-validated figures, and the Blend stage's clamp and probability."""

import math
import random

import numpy as np
from pyspark.sql import functions as F

from ml_platform.train.meta import Blend, classification_meta, fold_moments, regression_meta, sse


def _scores(spark, n=900, seed=1):
    """y, a good member (y + small noise), a biased but useful one, and one anti-correlated with y."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = rng.uniform(1000, 20000)
        rows.append((i % 3, y, y + rng.gauss(0, 800), 0.5 * y + 3000 + rng.gauss(0, 1500),
                     30000 - y + rng.gauss(0, 500)))
    return spark.createDataFrame(rows, ["fold", "y", "good", "biased", "anti"])


def test_moments_give_the_same_squared_error_as_the_rows(spark):
    df = _scores(spark)
    moments = fold_moments(df, ["good", "biased"], "y", "fold")
    w, c = np.array([0.7, 0.4]), 250.0
    assert sorted(moments) == [0, 1, 2] and sum(m["n"] for m in moments.values()) == 900
    direct = df.where(F.col("fold") == 1).agg(
        F.sum((F.col("y") - c - 0.7 * F.col("good") - 0.4 * F.col("biased")) ** 2)).first()[0]
    assert abs(sse(moments[1], w, c) - direct) < 1e-6 * direct


def test_regression_weights_are_non_negative_and_the_cv_figure_is_honest(spark):
    df = _scores(spark)
    meta = regression_meta(df, ["good", "biased", "anti"], "y", "fold")
    weights = dict(zip(["good", "biased", "anti"], meta["weights"], strict=True))
    # unconstrained least squares would give `anti` a negative weight; here it is 0 and the good member dominates
    assert weights["anti"] == 0.0 and weights["good"] > 0.5 and min(weights.values()) >= 0
    # the members' out-of-fold RMSE on the same rows: the good member's noise is 800
    assert 700 < meta["members_cv"]["good"] < 900 and meta["members_cv"]["anti"] > 5000
    # the stack's CV RMSE is measured on folds it was not fitted on, so it is no better than the noise allows
    assert 650 < meta["cv"] < 900


def test_classification_meta_has_non_negative_log_odds_weights(spark):
    rng = random.Random(2)
    rows = []
    for i in range(1200):
        y = float(rng.random() < 0.3)
        good = rng.gauss(1.5 if y else -1.5, 1.0)   # log-odds of a useful member
        flipped = -good + rng.gauss(0, 0.3)         # the same signal with the wrong sign
        rows.append((i % 3, y, 1.0, good, flipped, 1 / (1 + math.exp(-good)), 1 / (1 + math.exp(-flipped))))
    df = spark.createDataFrame(rows, ["fold", "label", "w", "good", "flipped", "raw_good", "raw_flipped"])
    meta = classification_meta(df, ["good", "flipped"], {"good": "raw_good", "flipped": "raw_flipped"}, "label",
                               "fold", "w")
    assert meta["weights"][0] > 0.5 and meta["weights"][1] == 0.0
    assert meta["members_cv"]["good"] > 0.8 > 0.3 > meta["members_cv"]["flipped"]
    assert abs(meta["cv"] - meta["members_cv"]["good"]) < 0.05
    assert meta["oof"].count() == 1200
    meta["oof"].unpersist()


def test_blend_clamps_prices_and_gives_probabilities(spark):
    df = spark.createDataFrame([(-5000.0, 1.0), (900.0, -2.0), (5e6, 0.0)], ["price", "logit"])
    out = Blend(inputCols=["price"], weights=[1.0], intercept=0.0, task="regression", clamp=True, lower=500.0,
                upper=2e6).transform(df)
    assert [r[0] for r in out.select("prediction").collect()] == [500.0, 900.0, 2e6]
    out = Blend(inputCols=["logit"], weights=[2.0], intercept=0.5, task="classification", link="sigmoid",
                threshold=0.6).transform(df)
    rows = out.select("probability", "prediction").collect()
    p = [r[0][1] for r in rows]
    assert abs(p[0] - 1 / (1 + np.exp(-2.5))) < 1e-12 and abs(rows[0][0][0] + p[0] - 1) < 1e-12
    assert [r[1] for r in rows] == [1.0, 0.0, 1.0]  # p = 0.924, 0.029, 0.622 at threshold 0.6
