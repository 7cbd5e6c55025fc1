"""Multi-class classification on tiny simulated tickets: class probabilities from every kind of member (a
multinomial model, trees, naive Bayes, xgboost, one-vs-rest GBT), a non-negative blend of them, macro-F1 /
log-loss / per-class recall, and a class seen only in the holdout reported, not crashed on."""

import dataclasses

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import train_dir
from ml_platform.stores import LocalStore
from ml_platform.train.explain import explain_models
from ml_platform.train.features import build_feature_pipeline
from ml_platform.train.meta import macro_f1, simplex_fit
from ml_platform.train.models import train_models
from ml_platform.train.stacking import evaluate_pipeline, fit_stack, leaderboard
from ml_platform.train.training_set import build_training_set
from tests.training_data import land_batches, small

ALGS = {"logistic": {"grid": {"regParam": [0.01]}}, "random_forest": {"grid": {"numTrees": [6], "maxDepth": [4]}},
        "naive_bayes": {"grid": {"smoothing": [1.0]}}, "xgboost": {"grid": {"max_depth": [3], "n_estimators": [10]}},
        "gbt": {"grid": {"maxDepth": [2], "maxIter": [3]}}}


@pytest.fixture(scope="module")
def trained(spark, specs, tmp_path_factory):
    spec = small(specs["tickets"], algorithms=ALGS)
    store = LocalStore(tmp_path_factory.mktemp("multiclass") / "data")
    land_batches(spark, store, spec, [1, 2], rows=300)
    ts = build_training_set(spark, store, spec, "v1")
    build_feature_pipeline(spark, store, spec, "v1")
    results = train_models(spark, store, spec, "v1", list(spec.algorithms), 2, log=lambda _: None)
    return spec, store, ts, results


def test_training_set_counts_classes_and_weights_them(trained):
    spec, _, ts, _ = trained
    by = ts["target"]["train_by_class"]
    assert list(by) == list(spec.classes) and all(v > 0 for v in by.values())
    w = ts["class_weights"]
    # balanced: every class's rows weigh the same in total
    totals = [by[c] * w[i] for i, c in enumerate(spec.classes)]
    assert max(totals) == pytest.approx(min(totals))
    assert ts["target"]["holdout_only_classes"] == []


def test_every_member_gives_class_probabilities_and_the_served_model_never_loses(spark, trained):
    spec, store, ts, results = trained
    assert set(results) == set(ALGS) and all(not isinstance(r, Exception) for r in results.values()), results
    for name, r in results.items():
        h = r["holdout"]
        assert 0 <= h["macro_f1"] <= 1 and h["log_loss"] > 0 and sum(map(sum, h["confusion"])) > 0, name
        oof = lake.read(spark, r["oof"]).select(F.size("score").alias("k"), F.aggregate(
            "score", F.lit(0.0), lambda a, x: a + x).alias("s")).agg(F.min("k"), F.max("k"), F.min("s"),
                                                                      F.max("s")).first()
        assert oof[0] == oof[1] == 4 and oof[2] > 0.999 and oof[3] < 1.001, (name, oof)
    assert results["gbt"]["score"] == "softmax"  # one-vs-rest margins, through a softmax
    best = max(r["holdout"]["macro_f1"] for r in results.values())
    assert best > 0.35  # four classes: chance is about 0.25
    stack = fit_stack(spark, store, spec, "v1", results)
    w = stack["meta_coefficients"]
    assert min(w.values()) >= 0 and sum(w.values()) == pytest.approx(1.0)
    assert stack["holdout"]["macro_f1"] >= stack["best_member_holdout"] - 1e-9
    served = PipelineModel.load(stack["path"])
    out = served.transform(lake.read(spark, ts["holdout"]))
    row = out.select(F.min("prediction"), F.max("prediction"), F.min(F.aggregate(vector_to_array("probability"),
                     F.lit(0.0), lambda a, x: a + x)), F.count("*")).first()
    assert 0 <= row[0] and row[1] <= 3 and row[2] > 0.999 and row[3] == ts["holdout_rows"]
    again = evaluate_pipeline(spark, spec, served, ts["holdout"])
    assert again["macro_f1"] == pytest.approx(stack["holdout"]["macro_f1"])
    board, rows = leaderboard(spec, results, stack)
    assert "macro_f1" in board and "◀ served" in board and "recall by class: billing" in board
    importance = explain_models(spark, store, spec, "v1", results, served, stack["served"])
    assert set(importance[stack["served"]]["permutation"]) >= {"product", "channel", "tier"}


def test_simplex_blend_prefers_the_informative_member():
    rng = np.random.default_rng(3)
    n, k = 2000, 3
    y = rng.integers(0, k, n)
    good = np.full((n, k), 0.1)
    good[np.arange(n), y] = 0.8
    noise = rng.dirichlet(np.ones(k), n)
    p_true = np.column_stack([good[np.arange(n), y], noise[np.arange(n), y]])
    w = simplex_fit(p_true)
    assert w[0] > 0.9 and w.sum() == pytest.approx(1.0)
    assert macro_f1(y, good.argmax(axis=1), k) == 1.0


def test_a_class_seen_only_in_the_holdout_is_reported(spark, trained, tmp_path):
    spec, store, ts, _ = trained
    # rewrite the training set so 'account' appears only in the holdout: its summary names it, training still runs
    from ml_platform.train.training_set import _class_stats

    df = lake.read(spark, store.uri(train_dir(spec, "v1"))).withColumn("__holdout", F.lit(False))
    df = df.where(F.col("queue") != 3).unionByName(
        lake.read(spark, ts["holdout"]).withColumn("__holdout", F.lit(True)))
    stats = _class_stats(df, dataclasses.replace(spec))
    assert stats["holdout_only_classes"] == ["account"] and stats["train_by_class"]["account"] == 0
