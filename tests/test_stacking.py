"""Training set, out-of-fold scores and the stack on tiny data; bad training inputs fail clearly."""

import dataclasses
import random

import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.regression import LinearRegression
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.data.silver import META, accept_rows
from ml_platform.layout import feature_pipeline_dir, holdout_dir, silver_table
from ml_platform.spec import ColumnSpec, SpecError, parse_spec
from ml_platform.stores import LocalStore
from ml_platform.train.algorithms import FOLD, LABEL, ROW_ID, beyond_edges, edge_notes
from ml_platform.train.explain import explain_models, importance_table
from ml_platform.train.features import FeatureError, build_feature_pipeline
from ml_platform.train.models import featurized, train_models
from ml_platform.train.stacking import evaluate_pipeline, fit_stack, leaderboard, member_pipeline
from ml_platform.train.training_set import TrainingError, build_training_set
from tests.training_data import SMALL, land_batches, small


@pytest.fixture(scope="module")
def trained(spark, specs, tmp_path_factory):
    spec = small(specs["used_cars"], algorithms={"linear": {"grid": {"regParam": [0.01, 0.3]}},
                                                 "random_forest": {"grid": {"numTrees": [5], "maxDepth": [3]}},
                                                 "xgboost": {"grid": {"max_depth": [3], "n_estimators": [30]}}})
    store = LocalStore(tmp_path_factory.mktemp("stack") / "data")
    land_batches(spark, store, spec, [1, 2])
    ts = build_training_set(spark, store, spec, "v1")
    build_feature_pipeline(spark, store, spec, "v1")
    lines, ended = [], []
    results = train_models(spark, store, spec, "v1", list(spec.algorithms), 2, log=lines.append,
                           on_done=lambda n, r: ended.append((n, len(lines))))
    return spec, store, ts, results, lines, ended


def test_training_set_split_is_deterministic_and_disjoint(spark, trained):
    spec, store, ts, *_ = trained
    train = lake.read(spark, ts["train"])
    holdout = lake.read(spark, ts["holdout"])
    assert ts["batches"] == ["batch-00001", "batch-00002"] and ts["train_rows"] + ts["holdout_rows"] == ts["rows"]
    assert train.join(holdout, "listing_id").count() == 0
    assert 0.1 < ts["holdout_rows"] / ts["rows"] < 0.3
    assert {r[FOLD] for r in train.select(FOLD).distinct().collect()} == {0, 1, 2}
    again = build_training_set(spark, store, spec, "v2")
    ids = lambda p: sorted(r[0] for r in lake.read(spark, p).select("listing_id").collect())  # noqa: E731
    assert ids(again["holdout"]) == ids(ts["holdout"])


def test_out_of_fold_scores_come_from_models_that_did_not_see_the_row(spark, trained):
    spec, store, ts, results, *_ = trained
    r = results["linear"]
    oof = lake.read(spark, r["oof"])
    train, _ = featurized(spark, store, spec, "v1")
    assert oof.count() == train.count() == oof.select(ROW_ID).distinct().count()
    # refit the best setting without fold 1 and score fold 1 by hand: the stored scores must match
    best = LinearRegression(featuresCol="features_scaled", labelCol=LABEL, maxIter=100, **r["best_params"])
    model = best.fit(train.where(F.col(FOLD) != 1))
    mine = model.transform(train.where(F.col(FOLD) == 1)).select(ROW_ID, F.col("prediction").alias("mine"))
    both = mine.join(oof, ROW_ID).select(F.max(F.abs(F.col("mine") - F.col("score"))).alias("d"), F.count("*"))
    row = both.first()
    assert row[1] == mine.count() and row["d"] < 1e-6
    # and they are not the refit model's in-sample predictions
    final = PipelineModel.load(r["model"]).stages[0]
    insample = final.transform(train.where(F.col(FOLD) == 1)).select(ROW_ID, F.col("prediction").alias("p"))
    assert insample.join(oof, ROW_ID).where(F.abs(F.col("p") - F.col("score")) > 1e-6).count() > 0
    train.unpersist()


def test_served_model_is_one_pipeline_never_worse_than_its_best_member_and_explained(spark, trained):
    spec, store, ts, results, *_ = trained
    stack = fit_stack(spark, store, spec, "v1", results)
    assert set(stack["base_models"]) == {"linear", "random_forest", "xgboost"}
    assert min(stack["meta_coefficients"].values()) >= 0 and stack["selected"]
    assert stack["served"] in {"stacked", *results} and stack["choice"].startswith(stack["served"])
    assert results["xgboost"]["holdout"]["r2"] > 0.3 and results["xgboost"]["best_params"]["max_depth"] == 3
    out = PipelineModel.load(stack["path"]).transform(lake.read(spark, ts["holdout"]))
    lo, hi = spec.label_range
    if stack["served"] == "stacked":  # the blend of the members with a positive weight, clamped to the label range
        coef, b = stack["meta_coefficients"], stack["meta_intercept"]
        raw = F.lit(b) + sum(F.lit(coef[n]) * F.expm1(F.col(f"__prediction_{n}")) for n in stack["selected"])
    else:  # the member alone, on the price scale
        raw = F.expm1(F.col(f"__prediction_{stack['served']}"))
    manual = F.least(F.greatest(raw, F.lit(lo)), F.lit(hi))
    assert out.select(F.max(F.abs(manual - F.col("prediction")))).first()[0] < 1e-6 * 50_000
    assert out.where((F.col("prediction") < lo) | (F.col("prediction") > hi)).count() == 0
    best = min(r["holdout"]["rmse"] for r in results.values())
    assert stack["holdout"]["non_finite"] == 0 and stack["holdout"]["rmse"] <= best * (1 + 1e-9)
    assert stack["best_member_holdout"] == best
    board, rows = leaderboard(spec, results, stack)
    assert [r["model"] for r in rows if r["served"]] == [stack["served"]] and "Served: " in board
    _explained(spark, spec, store, results, stack)  # the same fitted stack, explained


def test_a_member_served_alone_predicts_what_it_predicted_in_training(spark, trained):
    """The fallback pipeline: feature stages, the member, its price and the clamp; its holdout RMSE is the
    member's own (the clamp only moves predictions towards the label range, where every label lies)."""
    spec, store, ts, results, *_ = trained
    features = list(PipelineModel.load(store.uri(feature_pipeline_dir(spec, "v1"))).stages)
    model, threshold = member_pipeline(spec, features, results, "linear")
    hold = evaluate_pipeline(spark, spec, model, store.uri(holdout_dir(spec, "v1")))
    assert threshold is None and hold["rmse"] <= results["linear"]["holdout"]["rmse"] * (1 + 1e-9)
    assert hold["rmse"] > 0.5 * results["linear"]["holdout"]["rmse"]


def test_classification_stack_with_xgboost_and_naive_bayes(spark, specs, tmp_path):
    """Fraud-shaped data with a findable signal: logistic, Gaussian naive Bayes and xgboost each beat chance on
    PR-AUC, and the logistic stack over them is one pipeline that reloads and scores."""
    spec = small(specs["fraud"], algorithms={k: SMALL[k] for k in ("logistic", "naive_bayes", "xgboost")})
    store = LocalStore(tmp_path / "data")
    cols = ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount", "Class"]
    rng = random.Random(3)
    for n, b in enumerate(("b1", "b2")):
        rows = []
        for i in range(300):
            y = float(rng.random() < 0.2)
            v = [rng.gauss(1.5 * y if j < 3 else 0.0, 1.0) for j in range(28)]
            rows.append(tuple([float(i)] + v + [rng.expovariate(0.02), y]))
        accept_rows(spark, store, spec, b, spark.createDataFrame(rows, cols), f"2026-01-0{n + 1}T00:00:00")
    ts = build_training_set(spark, store, spec, "v1")
    build_feature_pipeline(spark, store, spec, "v1")
    results = train_models(spark, store, spec, "v1", list(spec.algorithms), 2)
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    base_rate = ts["target"]["mean"]
    for name, r in results.items():
        assert r["holdout"]["pr_auc"] > 2 * base_rate, name
    # naive Bayes is scored by its log-odds: its probabilities round to 0 or 1, and would tie
    nb = results["naive_bayes"]
    oof = lake.read(spark, nb["oof"])
    assert nb["score"] == "logOdds" and oof.select("score").distinct().count() > 0.95 * oof.count()
    features = list(PipelineModel.load(store.uri(feature_pipeline_dir(spec, "v1"))).stages)
    alone, _ = member_pipeline(spec, features, results, "naive_bayes")  # served alone: ranked the same way
    hold = evaluate_pipeline(spark, spec, alone, store.uri(holdout_dir(spec, "v1")))
    assert abs(hold["pr_auc"] - nb["holdout"]["pr_auc"]) < 1e-9
    assert abs(hold["roc_auc"] - nb["holdout"]["roc_auc"]) < 1e-9
    stack = fit_stack(spark, store, spec, "v1", results)
    assert stack["holdout"]["pr_auc"] > 2 * base_rate and 0 < stack["threshold"] < 1
    assert stack["holdout"]["pr_auc"] >= max(r["holdout"]["pr_auc"] for r in results.values()) - 1e-9
    assert min(stack["meta_coefficients"].values()) >= 0 and 0 <= stack["holdout"]["brier"] <= 1
    if stack["served"] == "stacked":  # the meta-model is fitted unweighted, so its probabilities keep the base rate
        assert stack["holdout"]["brier"] < base_rate * (1 - base_rate)
    out = PipelineModel.load(stack["path"]).transform(lake.read(spark, ts["holdout"]))
    assert out.where(F.col("probability").isNull()).count() == 0
    assert sum(b["n"] for b in stack["reliability"]) == out.count() == ts["holdout_rows"]
    assert all(0 <= b["mean_p"] <= 1 and 0 <= b["observed"] <= 1 for b in stack["reliability"])


def _explained(spark, spec, store, results, stack):
    served = PipelineModel.load(stack["path"])
    imp = explain_models(spark, store, spec, "v1", results, served, "stacked")
    numeric, categorical = spec.feature_columns()
    assert set(imp) == set(results) | {"stacked"}
    strong = {"year", "age", "mileage", "miles_per_year", "horsepower", "power_hp", "make_name", "model_name"}
    for name in ("xgboost", "random_forest", "stacked"):
        perm = imp[name]["permutation"]
        assert set(perm) <= set(numeric + categorical) and len(perm) > 20
        assert strong & set(list(perm)[:5]), (name, list(perm)[:5])  # the price drivers lead
        assert list(perm.values())[0] > 0
    for name in ("xgboost", "random_forest"):  # trees also have their own importances, one per cleaned column
        assert abs(sum(imp[name]["impurity"].values()) - 1) < 1e-6 and strong & set(list(imp[name]["impurity"])[:5])
    assert imp["linear"]["impurity"] is None
    assert "| xgboost |" in importance_table(imp)


def test_glm_takes_family_and_link_from_the_spec(spark, trained):
    spec, store, *_ = trained
    glm = small(spec, algorithms={"glm": {"grid": {"family": ["gamma"], "link": ["log"], "regParam": [0.01, 0.1]}}})
    res = train_models(spark, store, glm, "v1", ["glm"], 1)["glm"]
    assert isinstance(res, dict) and res["ok"] and res["holdout"]["r2"] > 0.3, res
    model = PipelineModel.load(res["model"]).stages[0]
    assert (model.getOrDefault("family"), model.getOrDefault("link")) == ("gamma", "log")
    assert res["grid_edges"] and "regParam" in res["grid_edges"][0]  # two values, the best is one of the ends


def test_a_best_setting_at_the_grids_edge_is_searched_one_step_beyond_when_asked(spark, trained):
    spec, store, *_ = trained
    # heavy shrinkage: the smallest regParam wins, so the search also tries a tenth of it
    linear = small(spec, algorithms={"linear": {"grid": {"regParam": [3.0, 30.0], "elasticNetParam": [0.0]}}},
                   extend_grid=True)
    res = train_models(spark, store, linear, "v1", ["linear"], 1)["linear"]
    assert isinstance(res, dict), res
    assert res["grid_extended"] == [{"regParam": 0.3, "elasticNetParam": 0.0}]
    assert res["best_params"]["regParam"] == 0.3 and len(res["cv_all"]) == 3 and res["grid_edges"] == []
    assert PipelineModel.load(res["model"]).stages[0].getRegParam() == 0.3
    notes = edge_notes({"linear": res})
    assert notes == ["Grid extended: linear: also tried [{'regParam': 0.3, 'elasticNetParam': 0.0}]; best "
                     "{'regParam': 0.3, 'elasticNetParam': 0.0}"]
    assert beyond_edges(linear, "linear", {"regParam": 30.0, "elasticNetParam": 0.0}) == [
        {"regParam": 300.0, "elasticNetParam": 0.0}]
    depth = small(spec, algorithms={"gbt": {"grid": {"maxDepth": [2, 4], "subsamplingRate": [0.5, 1.0]}}})
    # whole numbers step by their difference; a share never steps past 1
    assert beyond_edges(depth, "gbt", {"maxDepth": 4, "subsamplingRate": 1.0}) == [
        {"maxDepth": 6, "subsamplingRate": 1.0}]


def test_failing_algorithm_is_reported_and_the_others_still_train(spark, trained):
    spec, store, *_ = trained
    bad = small(spec, algorithms={"gbt": {"grid": {"maxDepth": [40]}}, "linear": {"grid": {"regParam": [0.1]}}})
    res = train_models(spark, store, bad, "v1", ["gbt", "linear"], 2)
    assert isinstance(res["gbt"], TrainingError) and "used_cars/model_gbt" in str(res["gbt"])
    assert "maxDepth" in str(res["gbt"]) or "depth" in str(res["gbt"]).lower()
    assert isinstance(res["linear"], dict) and res["linear"]["ok"]


def test_bad_training_inputs_fail_clearly(spark, trained, specs, tmp_path):
    spec, store, *_ = trained
    # constant target
    const = dataclasses.replace(spec, target="year", key="listing_id")
    silver = lake.read(spark, store.uri(silver_table(spec))).drop(*META)
    year_store = LocalStore(tmp_path / "const")
    accept_rows(spark, year_store, const, "b1", silver.withColumn("year", F.lit(2015.0)), "2026-01-01T00:00:00")
    with pytest.raises(TrainingError, match="constant"):
        build_training_set(spark, year_store, const, "v1")
    # an all-null feature not excluded by the spec
    nulls = small(spec, exclude=tuple(c for c in spec.training.exclude if c != "combine_fuel_economy"))
    with pytest.raises(FeatureError, match="combine_fuel_economy.*entirely null"):
        build_feature_pipeline(spark, store, nulls, "v1")
    # a feature the spec names but the data lacks
    extra = dataclasses.replace(spec, columns=spec.columns + (ColumnSpec("turbo_psi", "number"),))
    with pytest.raises(FeatureError, match="turbo_psi"):
        build_feature_pipeline(spark, store, extra, "v1")
    # exclude naming an unknown column is caught when the spec loads
    with pytest.raises(SpecError, match="training.exclude"):
        parse_spec({"name": "x", "task": "regression", "target": "y", "columns": [{"name": "y", "parse": "number"}],
                    "training": {"exclude": ["nope"]}})


def test_single_class_window_fails_clearly(spark, specs, tmp_path):
    spec = small(specs["fraud"])
    store = LocalStore(tmp_path / "data")
    rows = [tuple([float(i)] + [0.1] * 28 + [10.0, 0.0]) for i in range(40)]
    cols = ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount", "Class"]
    accept_rows(spark, store, spec, "b1", spark.createDataFrame(rows, cols), "2026-01-01T00:00:00")
    with pytest.raises(TrainingError, match="single class"):
        build_training_set(spark, store, spec, "v1")


def test_models_report_progress_as_they_train(trained):
    spec, store, ts, results, lines, ended = trained
    for n in spec.algorithms:
        mine = [ln for ln in lines if ln.startswith(f"used_cars/model_{n}: ")]
        assert mine[0].startswith(f"used_cars/model_{n}: started:") and "parameter maps x 3 folds" in mine[0]
        cv = [ln for ln in mine if ": CV done in " in ln][0]
        assert "cv rmse (log1p price)" in cv and str(results[n]["best_params"]) in cv
        assert "finished in" in mine[-1] and f"holdout rmse {results[n]['holdout']['rmse']:.4g}" in mine[-1]
    assert lines[-1] == f"used_cars: {len(spec.algorithms)} of {len(spec.algorithms)} models done"
    # each model was handed on (to MLflow) as it finished, not all at the end
    assert sorted(n for n, _ in ended) == sorted(spec.algorithms) and ended[0][1] < len(lines) - 1


def test_leaderboard_labels_the_scale_of_every_error_column(spark, trained):
    spec, store, ts, results, *_ = trained
    board, rows = leaderboard(spec, results, fit_stack(spark, store, spec, "v1", results))
    head = board.splitlines()[0]
    assert "| rmse (price) | mae (price) | r2 | cv rmse (log1p price) |" in head
    cv = {r["model"]: r["cv"] for r in rows}
    assert all(cv[n] == results[n]["cv_mean"] < 1 for n in results)  # log scale: under 1, while rmse is dollars


def test_rows_without_a_key_are_kept_across_batches(spark, tmp_path):
    """A null key is no identity: keyless rows of every batch stay (a keyed row is replaced by its latest batch)."""
    spec = parse_spec({"name": "keyless", "task": "regression", "target": "y", "key": "id", "columns": [
        {"name": "id", "parse": "string"}, {"name": "x", "parse": "number"}, {"name": "y", "parse": "number"}],
        "training": {"folds": 2}})
    store = LocalStore(tmp_path / "data")
    batches = {"b1": [("1", 1.0, 10.0), ("2", 2.0, 20.0)] + [(None, float(i), float(i)) for i in range(3, 9)],
               "b2": [("1", 1.5, 11.0)] + [(None, float(i), float(i)) for i in range(9, 13)]}
    for n, (key, rows) in enumerate(batches.items()):
        accept_rows(spark, store, spec, key, spark.createDataFrame(rows, "id string, x double, y double"),
                    f"2026-01-0{n + 1}T00:00:00")
    ts = build_training_set(spark, store, spec, "v1")
    rows = lake.read(spark, ts["train"]).unionByName(lake.read(spark, ts["holdout"]))
    assert ts["rows"] == 2 + 6 + 4, ts  # id 1 once (its b2 version), id 2, and all ten keyless rows
    assert rows.where(F.col("id") == "1").first()["y"] == 11.0
    assert rows.where(F.col("id").isNull()).count() == 10
