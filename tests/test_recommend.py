"""Recommendation on a few thousand simulated movie ratings: ALS cross-validated by NDCG@k and set against a
popularity baseline, one served PipelineModel that fills cold starts (and survives a reload in a new process),
top-N lists that never hold a seen item, and an implicit-counts variant."""

import dataclasses
import datetime as dt
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import (
    feature_pipeline_dir,
    holdout_dir,
    model_result,
    recommendations_dir,
    stacked_model_record,
    train_dir,
    version_dir,
)
from ml_platform.local.simulate import movie_ratings as sim
from ml_platform.spec import SpecError, load_spec
from ml_platform.stores import LocalStore
from ml_platform.train.algorithms import ITEM, USER
from ml_platform.train.features import FeatureError
from ml_platform.train.recommend import (
    build_recommend_pipeline,
    build_top_n,
    cold_start_fill,
    evaluate_recommender,
    fit_recommend_pipeline,
    interactions,
    recommend_leaderboard,
    select_recommender,
    top_n_for_user,
    train_recommenders,
)
from ml_platform.train.training_set import TrainingError, build_training_set
from tests.training_data import land_batches

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "ml_platform" / "specs" / "movie_ratings.yaml"


@pytest.fixture(scope="module")
def rec(spark, tmp_path_factory):
    spec = load_spec(SPEC)
    store = LocalStore(tmp_path_factory.mktemp("recommend") / "data")
    land_batches(spark, store, spec, [1, 2], rows=2500)
    ts = build_training_set(spark, store, spec, "v1")
    fp = build_recommend_pipeline(spark, store, spec, "v1")
    lines = []
    results = train_recommenders(spark, store, spec, "v1", ["als"], 1, log=lines.append)
    selected = select_recommender(spark, store, spec, "v1", results)
    return SimpleNamespace(spec=spec, store=store, ts=ts, fp=fp, results=results, selected=selected, lines=lines)


def _pairs(spark, rec):
    """The train split's (user, movie) pairs with their mean rating, as the recommender trains on them."""
    train = lake.read(spark, rec.store.uri(train_dir(rec.spec, "v1")))
    return train.groupBy("user_id", "movie_id").agg(F.avg("rating").alias("r"))


def test_simulated_ratings_have_fixed_tastes_and_skewed_popularity():
    a = sim.generate(np.random.default_rng([7, 1, 0]), 3000, 10_000_000)
    assert a.equals(sim.generate(np.random.default_rng([7, 1, 0]), 3000, 10_000_000))  # deterministic
    assert list(a.columns) == sim.COLUMNS and all(isinstance(v, str) for v in a.iloc[0])
    assert set(a["rating"]) <= {"1", "2", "3", "4", "5", "1.5", "2.5", "3.5", "4.5"} and a["rating"].str.contains(
        r"\.5").any()
    assert all(dt.date.fromisoformat(d) for d in a["rated_at"].head(50))
    b = sim.generate(np.random.default_rng([7, 2, 0]), 3000, 20_000_000)
    # another batch, other draws, the same tastes: per-movie mean ratings agree
    means = [f.assign(r=f["rating"].astype(float)).groupby("movie_id")["r"].agg(["mean", "size"]) for f in (a, b)]
    both = means[0].join(means[1], lsuffix="_a", rsuffix="_b")
    both = both[(both["size_a"] >= 5) & (both["size_b"] >= 5)]
    assert len(both) > 50 and np.corrcoef(both["mean_a"], both["mean_b"])[0, 1] > 0.6
    counts = a["movie_id"].value_counts()
    assert counts.head(len(counts) // 10).sum() > 0.3 * len(a)  # the top tenth of movies: over 30% of ratings
    assert not a.drop_duplicates().duplicated(["user_id", "movie_id"]).any()  # one rating per pair in a chunk
    broken = sim.broken_lines(np.random.default_rng(1), a.head(8))
    assert len(broken) == 8 and ",four," in broken[0] and ",7," in broken[1] and broken[2].startswith(",")


def test_als_beats_the_popularity_baseline_and_predicts_ratings(rec):
    r = rec.results["als"]
    assert isinstance(r, dict) and r["ok"], r
    hold, pop = r["holdout"], r["popularity"]
    assert hold["ndcg_at_k"] > 1.1 * pop["ndcg_at_k"] > 0, (hold, pop)
    assert hold["precision_at_k"] > pop["precision_at_k"] and hold["coverage"] > pop["coverage"]
    assert hold["rmse"] < 1.2 and hold["non_finite"] == 0
    assert hold["users"] == pop["users"] > 100 and hold["k"] == 10 and r["relevance_threshold"] == 4.0
    assert hold["scored_rows"] + hold["unscored"] == rec.ts["holdout_rows"]
    # every setting of the grid was cross-validated; the refit one is the best by CV NDCG@k
    assert len(r["cv_all"]) == 2 and r["best_params"] == r["search_space"][int(np.argmax(r["cv_all"]))]
    assert r["cv_mean"] == max(r["cv_all"]) and 0 < r["cv_popularity"] < 1
    assert rec.store.read_json(model_result(rec.spec, "v1", "als")) == json.loads(json.dumps(r))
    assert PipelineModel.load(r["model"]).stages[0].rank == 8
    assert rec.lines[1].startswith("movie_ratings/model_als: started: 2 parameter maps x 2 folds")
    assert any("CV done" in ln and "popularity" in ln for ln in rec.lines)
    s = rec.selected
    assert s["served"] == "als" and s["beats_popularity"] and s["holdout"]["non_finite"] == 0
    assert s["choice"].startswith("als {") and f"popularity baseline's {pop['ndcg_at_k']:.4g}" in s["choice"]
    assert rec.store.read_json(stacked_model_record(rec.spec, "v1"))["choice"] == s["choice"]
    assert rec.fp["users"] > 300 and rec.fp["items"] > 250


def test_leaderboard_sets_every_setting_against_popularity(rec):
    board, rows = recommend_leaderboard(rec.spec, rec.results, rec.selected)
    assert [r["model"] for r in rows if r["served"]] == [f"als {rec.results['als']['best_params']}"]
    assert len(rows) == 3 and rows[0]["served"] and rows[1]["model"] == "popularity baseline"
    assert rows[1]["ndcg_at_k"] == rec.results["als"]["popularity"]["ndcg_at_k"]
    assert "| model | ndcg@10 | precision@10 | recall@10 | coverage (top 10) | rmse (rating) |" in board
    assert "- Served: als" in board and "a held-out rating >= 4" in board


def _requests(spark, rec):
    pairs = _pairs(spark, rec).orderBy("user_id", "movie_id").limit(3).collect()
    user, movie = pairs[0]["user_id"], pairs[0]["movie_id"]
    rows = [(p["user_id"], p["movie_id"]) for p in pairs]
    rows += [("nobody", movie), (user, "no-such-movie"), ("nobody", "no-such-movie"), (None, movie)]
    return spark.createDataFrame(rows, "user_id string, movie_id string"), movie


def test_served_model_fills_cold_starts_and_flags_them(spark, rec):
    model = PipelineModel.load(rec.selected["path"])
    assert [type(s).__name__ for s in model.stages] == ["StringIndexerModel", "StringIndexerModel", "ALSModel",
                                                        "ColdStartFill"]
    requests, movie = _requests(spark, rec)
    out = model.transform(requests).collect()
    preds = [r["prediction"] for r in out]
    assert all(p is not None and math.isfinite(p) and 1.0 <= p <= 5.0 for p in preds), preds
    assert [r["cold_start"] for r in out] == [False] * 3 + [True] * 4
    pairs = _pairs(spark, rec)
    item_mean = pairs.where(F.col("movie_id") == movie).agg(F.avg("r")).first()[0]
    global_mean = pairs.agg(F.avg("r")).first()[0]
    by = {(r["user_id"], r["movie_id"]): r["prediction"] for r in out}
    assert by[("nobody", movie)] == pytest.approx(item_mean, abs=1e-9)      # unknown user: the movie's mean
    assert by[(None, movie)] == pytest.approx(item_mean, abs=1e-9)
    assert by[("nobody", "no-such-movie")] == pytest.approx(global_mean, abs=1e-9)  # unknown movie: the mean
    # a known pair is ALS's own prediction, clamped into the label range
    als = model.stages[2].transform(PipelineModel(stages=model.stages[:2]).transform(requests.limit(3)))
    raw = [min(max(r["prediction"], 1.0), 5.0) for r in als.collect()]
    assert preds[:3] == pytest.approx(raw, abs=1e-6)


def test_served_model_round_trip_in_a_new_process(spark, rec, tmp_path):
    model = PipelineModel.load(rec.selected["path"])
    requests, _ = _requests(spark, rec)
    expected = [(r["prediction"], r["cold_start"]) for r in model.transform(requests).orderBy("user_id",
                                                                                                "movie_id").collect()]
    data = str(tmp_path / "requests.parquet")
    requests.write.parquet(data)
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from ml_platform.spark import local_session
from pyspark.ml import PipelineModel
spark = local_session("recommend-reload", threads=1)
m = PipelineModel.load({rec.selected["path"]!r})
print("STAGE", type(m.stages[-1]).__module__, type(m.stages[-1]).__name__)
rows = m.transform(spark.read.parquet({data!r})).orderBy("user_id", "movie_id").collect()
print("PRED", json.dumps([[r["prediction"], r["cold_start"]] for r in rows]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if ln.startswith(("STAGE", "PRED")))
    assert lines["STAGE"] == "ml_platform.train.recommend ColdStartFill"
    got = json.loads(lines["PRED"])
    assert [c for _, c in got] == [c for _, c in expected]
    assert [p for p, _ in got] == pytest.approx([p for p, _ in expected], rel=1e-9)


def test_top_n_lists_hold_n_unseen_items_per_user(spark, rec):
    summary = build_top_n(spark, rec.store, rec.spec, "v1")
    top = lake.read(spark, rec.store.uri(recommendations_dir(rec.spec, "v1")))
    assert top.columns == ["user", "rank", "item", "score"] and summary["path"].endswith("/recommendations")
    pairs = _pairs(spark, rec)
    users = pairs.select("user_id").distinct().count()
    assert summary["users"] == users and summary["rows"] == 10 * users == top.count()
    per = top.groupBy("user").agg(F.count("*").alias("n"), F.min("rank").alias("lo"), F.max("rank").alias("hi"))
    assert per.where((F.col("n") != 10) | (F.col("lo") != 1) | (F.col("hi") != 10)).count() == 0
    seen = top.join(pairs, (top["user"] == pairs["user_id"]) & (top["item"] == pairs["movie_id"]))
    assert seen.count() == 0  # never an item the user has in train
    assert top.where((F.col("score") < 1) | (F.col("score") > 5)).count() == 0
    user = top.orderBy("user").first()["user"]
    mine = [(r["item"], r["score"]) for r in top.where(F.col("user") == user).orderBy("rank").collect()]
    assert all(a[1] >= b[1] for a, b in zip(mine, mine[1:], strict=False))
    one = top_n_for_user(spark, rec.store, rec.spec, "v1", user)
    assert not one["cold_start"] and [x["item"] for x in one["items"]] == [i for i, _ in mine]
    assert [x["score"] for x in one["items"]] == pytest.approx([s for _, s in mine], rel=1e-6)


def test_an_unknown_user_gets_the_popularity_list(spark, rec):
    out = top_n_for_user(spark, rec.store, rec.spec, "v1", "nobody", 5)
    assert out["user"] == "nobody" and out["cold_start"] and len(out["items"]) == 5
    counts = {r["movie_id"]: r["n"] for r in _pairs(spark, rec).groupBy("movie_id").agg(F.count("*").alias("n"))
              .collect()}
    top5 = sorted(counts.values(), reverse=True)[:5]
    assert [x["score"] for x in out["items"]] == top5  # the most-rated movies, most first
    assert all(counts[x["item"]] == x["score"] for x in out["items"])


def test_evaluate_recommender_agrees_with_the_records(spark, rec):
    model = PipelineModel.load(rec.selected["path"])
    ev = evaluate_recommender(spark, rec.spec, model, rec.store.uri(holdout_dir(rec.spec, "v1")),
                              rec.store.uri(train_dir(rec.spec, "v1")))
    hold = rec.results["als"]["holdout"]
    for m in ("ndcg_at_k", "precision_at_k", "recall_at_k", "coverage", "users"):
        assert ev[m] == pytest.approx(hold[m], abs=1e-12) == rec.selected["holdout"][m], m
    assert ev["rmse_known"] == pytest.approx(hold["rmse"], rel=1e-9)
    assert ev["cold_start"] == hold["unscored"] and ev["rows"] == rec.ts["holdout_rows"]
    assert ev["non_finite"] == 0 and ev["rmse"] < 1.2
    assert rec.selected["best_member_holdout"] == hold["ndcg_at_k"]  # the release gate's not-worse check holds


def test_implicit_counts_train(spark, rec):
    """The same interactions as counts (implicit feedback): any held-out interaction is relevant, there is no RMSE,
    and the cold-start fallback is the share of train users who have the item, on the scale of ALS's implicit
    predictions (a preference in [0, 1])."""
    spec = dataclasses.replace(rec.spec, recommend=dataclasses.replace(rec.spec.recommend, implicit=True),
                               algorithms={"als": {"grid": {"rank": [8], "regParam": [0.1], "alpha": [5.0],
                                                            "maxIter": [8]}}})
    for part in ("train", "holdout", "feature_pipeline"):  # the same split and ids, as version v2
        shutil.copytree(rec.store.path(f"{version_dir(spec, 'v1')}/{part}"),
                        rec.store.path(f"{version_dir(spec, 'v2')}/{part}"))
    r = train_recommenders(spark, rec.store, spec, "v2", ["als"], 1, log=lambda _: None)["als"]
    assert isinstance(r, dict) and r["ok"], r
    assert r["implicit"] and r["relevance_threshold"] is None and r["holdout"]["rmse"] is None
    assert r["holdout"]["ndcg_at_k"] > r["popularity"]["ndcg_at_k"] > 0
    assert r["holdout"]["users"] > rec.results["als"]["holdout"]["users"]  # every interaction counts now
    indexers = PipelineModel.load(rec.store.uri(feature_pipeline_dir(spec, "v2")))
    train = interactions(spec, indexers.transform(lake.read(spark, rec.store.uri(train_dir(spec, "v2")))))
    fill = cold_start_fill(spec, train)
    users = train.select(USER).distinct().count()
    first = train.where(F.col(ITEM) == fill.getOrDefault("items")[0]).count()
    assert fill.getOrDefault("fallbacks")[0] == pytest.approx(first / users) and not fill.getOrDefault("clamp")
    assert 0 < fill.getOrDefault("globalFallback") < max(fill.getOrDefault("fallbacks")) <= 1
    served = PipelineModel(stages=list(indexers.stages) + [PipelineModel.load(r["model"]).stages[0], fill])
    out = served.transform(_requests(spark, rec)[0]).collect()
    assert [x["cold_start"] for x in out] == [False] * 3 + [True] * 4
    assert all(math.isfinite(x["prediction"]) for x in out) and all(0 < x["prediction"] <= 1 for x in out[3:])


def test_bad_inputs_fail_clearly(spark, rec, specs):
    train = lake.read(spark, rec.store.uri(train_dir(rec.spec, "v1")))
    with pytest.raises(FeatureError, match="movie_id"):
        fit_recommend_pipeline(train.drop("movie_id"), rec.spec)
    with pytest.raises(FeatureError, match="at least 2 distinct"):
        fit_recommend_pipeline(train.withColumn("user_id", F.lit("u1")), rec.spec)
    with pytest.raises(TrainingError, match="not a recommendation task"):
        train_recommenders(spark, rec.store, specs["used_cars"], "v1", ["gbt"], 1)
    with pytest.raises(SpecError, match="not available for recommendation"):
        train_recommenders(spark, rec.store, rec.spec, "v1", ["gbt"], 1)
    # a user or item id outside what ALS saw never fails the served model; ids are indexed, not parsed
    model = PipelineModel.load(rec.selected["path"])
    odd = spark.createDataFrame([("", ""), ("u1", "1e9")], "user_id string, movie_id string")
    assert model.transform(odd).where(F.isnan("prediction") | F.col("prediction").isNull()).count() == 0
    assert {USER, ITEM} <= set(model.transform(odd).columns)
