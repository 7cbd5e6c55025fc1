"""Recommendation benchmark, one run, side by side on the same train/holdout split of simulated movie ratings: the
platform's ALS (train/recommend.py: cross-validated by NDCG@10, refit, measured on the holdout) vs scikit-learn's
NMF on a single machine, on RMSE and NDCG@10, with wall times (a noisy 2-core machine: compare ratios).

`implicit` is not a dependency, so the single-machine baseline is scikit-learn's NMF, in two forms: on the
user x movie matrix with missing ratings as 0 (sparse; the usual top-N use, whose reconstruction is no rating) and
on the matrix with missing ratings filled by the user's train mean (dense; predicts ratings). Every method is
measured by the same rules as the platform (recommend.py's docstring): a held-out rating >= 4 is relevant, items
the user has in train are never recommended, users in train with a relevant held-out movie are evaluated. The
platform's ALS NDCG@10 is also recomputed here in numpy from its factors, a check on the Spark metric code, and
the platform's ALS estimator is fitted once more with implicitPrefs (the ratings as confidences) for comparison
with the zero-filled NMF, which also learns which movies a user rates rather than how.

  .venv/bin/python bench/recommend_bench.py --rows 200000 --users 6000 --movies 3000
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "recommend"

from pyspark.ml import PipelineModel  # noqa: E402

from ml_platform.layout import accepted_marker, batch_record_path, silver_dir  # noqa: E402
from ml_platform.local.simulate import movie_ratings as sim  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import load_spec  # noqa: E402
from ml_platform.stores import LocalStore  # noqa: E402
from ml_platform.train.recommend import (  # noqa: E402
    build_recommend_pipeline,
    estimator,
    interactions,
    recommend_leaderboard,
    select_recommender,
    train_recommenders,
)
from ml_platform.train.training_set import build_training_set  # noqa: E402

K = 10
THRESHOLD = 4.0


def land_cleaned(spark, store: LocalStore, spec, rows: int, users: int, movies: int, batches: int = 4) -> None:
    """Simulated batches written as the cleaning layer would (typed, whole-row duplicates dropped, accepted): the
    simulator's own batch files use its small universe, and cleaning is not what this bench measures."""
    for b in range(1, batches + 1):
        frame = sim.generate(np.random.default_rng([3, b, 0]), rows // batches, b * 10_000_000, users, movies)
        frame = frame.drop_duplicates().assign(rating=lambda f: f["rating"].astype(float),
                                               rated_at=lambda f: f["rated_at"].map(dt.date.fromisoformat))
        key = f"batch-{b:05d}"
        spark.createDataFrame(frame, "user_id string, movie_id string, rating double, rated_at date") \
            .write.mode("overwrite").parquet(store.uri(silver_dir(spec, key)))
        store.write_json(batch_record_path(spec, key), {"partition": key, "ingested_at": f"2026-01-0{b}",
                                                        "sha256": key, "duplicate_of": None})
        store.write_json(accepted_marker(spec, key), {"partition": key})


def ranking(scores: np.ndarray, train: pd.DataFrame, holdout: pd.DataFrame) -> dict:
    """NDCG@K, precision@K and recall@K of `scores` (users x items) by the platform's rules."""
    seen = train.groupby("u")["i"].apply(set).to_dict()
    rel = holdout[holdout["r"] >= THRESHOLD].groupby("u")["i"].apply(set).to_dict()
    ndcg, prec, rec = [], [], []
    for u, items in rel.items():
        if u not in seen or not (items := items - seen[u]):
            continue
        s = scores[u].copy()
        s[list(seen[u])] = -np.inf
        top = np.argsort(-s, kind="stable")[:K]
        gains = [1 / np.log2(r + 2) for r, i in enumerate(top) if i in items]
        ideal = sum(1 / np.log2(r + 2) for r in range(min(len(items), K)))
        ndcg.append(sum(gains) / ideal)
        prec.append(len(gains) / K)
        rec.append(len(gains) / len(items))
    return {"ndcg_at_k": float(np.mean(ndcg)), "precision_at_k": float(np.mean(prec)),
            "recall_at_k": float(np.mean(rec)), "users": len(ndcg)}


def rmse(scores: np.ndarray, holdout: pd.DataFrame) -> float:
    known = holdout[holdout["known"]]
    p = np.clip(scores[known["u"].to_numpy(), known["i"].to_numpy()], 1.0, 5.0)
    return float(np.sqrt(np.mean((p - known["r"].to_numpy()) ** 2)))


def factors(frame, n: int, rank: int) -> np.ndarray:
    """ALS factors (id, features) as an n x rank matrix by id; ids it has no factor for (never seen) are zeros."""
    out = np.zeros((n, rank))
    for row in frame.collect():
        out[row["id"]] = row["features"]
    return out


def nmf_baselines(train: pd.DataFrame, holdout: pd.DataFrame, n_users: int, n_items: int, rank: int) -> dict:
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import NMF

    out = {}
    pairs = train.groupby(["u", "i"], as_index=False)["r"].mean()
    sparse = csr_matrix((pairs["r"], (pairs["u"], pairs["i"])), shape=(n_users, n_items))
    t0 = time.perf_counter()
    m = NMF(n_components=rank, init="nndsvda", max_iter=300, random_state=7)
    w = m.fit_transform(sparse)
    scores = w @ m.components_
    out["nmf (missing = 0)"] = {"fit_s": time.perf_counter() - t0, "rmse": rmse(scores, holdout)} | ranking(
        scores, train, holdout)
    t0 = time.perf_counter()
    user_mean = pairs.groupby("u")["r"].mean().reindex(range(n_users)).fillna(pairs["r"].mean()).to_numpy()
    dense = np.repeat(user_mean[:, None], n_items, axis=1)
    dense[pairs["u"], pairs["i"]] = pairs["r"]
    m = NMF(n_components=rank, init="nndsvda", max_iter=300, random_state=7)
    w = m.fit_transform(dense)
    scores = w @ m.components_
    out["nmf (missing = user mean)"] = {"fit_s": time.perf_counter() - t0, "rmse": rmse(scores, holdout)} | ranking(
        scores, train, holdout)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=6000)
    ap.add_argument("--movies", type=int, default=3000)
    ap.add_argument("--rank", type=int, default=10)
    args = ap.parse_args()
    spark = local_session("recommend-bench", driver_memory="4g")
    spec = load_spec(ROOT / "ml_platform" / "specs" / "movie_ratings.yaml")
    spec = dataclasses.replace(spec, algorithms={"als": {"grid": {"rank": [args.rank], "regParam": [0.05, 0.1, 0.2],
                                                                  "maxIter": [10]}}})
    shutil.rmtree(OUT, ignore_errors=True)
    store = LocalStore(OUT / "data")
    t0 = time.perf_counter()
    land_cleaned(spark, store, spec, args.rows, args.users, args.movies)
    ts = build_training_set(spark, store, spec, "v1")
    fp = build_recommend_pipeline(spark, store, spec, "v1")
    print(f"data: {ts['train_rows']} train / {ts['holdout_rows']} holdout ratings, {fp['users']} users, "
          f"{fp['items']} movies ({time.perf_counter() - t0:.0f}s to simulate and split)", flush=True)
    t0 = time.perf_counter()
    results = train_recommenders(spark, store, spec, "v1", ["als"], 1)
    als_s = time.perf_counter() - t0
    r = results["als"]
    if isinstance(r, Exception):
        raise r
    selected = select_recommender(spark, store, spec, "v1", results)
    board, _ = recommend_leaderboard(spec, results, selected)

    # the same split on the driver, indexed as ALS indexed it
    idx = PipelineModel.load(fp["path"]).stages
    users = {v: i for i, v in enumerate(idx[0].labels)}
    items = {v: i for i, v in enumerate(idx[1].labels)}

    def frame(uri):
        f = spark.read.parquet(uri).select("user_id", "movie_id", "rating").toPandas()
        return pd.DataFrame({"u": f["user_id"].map(users), "i": f["movie_id"].map(items), "r": f["rating"]})

    train, holdout = frame(ts["train"]), frame(ts["holdout"])
    holdout["known"] = holdout["u"].notna() & holdout["i"].notna()
    holdout = holdout.fillna({"u": -1, "i": -1}).astype({"u": int, "i": int})
    als = PipelineModel.load(r["model"]).stages[0]
    check = ranking(factors(als.userFactors, len(users), als.rank) @ factors(als.itemFactors, len(items), als.rank).T,
                    train, holdout)
    best = dict(r["best_params"])
    full = interactions(spec, PipelineModel.load(fp["path"]).transform(spark.read.parquet(ts["train"]))).cache()
    full.count()
    t0 = time.perf_counter()  # one fit of the best setting on all of train, beside NMF's one fit
    estimator(spark, spec, "als").setParams(**best).fit(full).userFactors.count()
    one_fit = time.perf_counter() - t0
    # the same ratings as implicit feedback (the rating as the confidence), one fit: which movies a user rates
    implicit = dataclasses.replace(spec, recommend=dataclasses.replace(spec.recommend, implicit=True))
    t0 = time.perf_counter()
    imp = estimator(spark, implicit, "als").setParams(**best).fit(full)
    imp.userFactors.count()
    imp_s = time.perf_counter() - t0
    implicit_ranking = ranking(factors(imp.userFactors, len(users), imp.rank)
                               @ factors(imp.itemFactors, len(items), imp.rank).T, train, holdout) | {"fit_s": imp_s}
    baselines = nmf_baselines(train, holdout, len(users), len(items), args.rank)

    h, pop = r["holdout"], r["popularity"]
    table = [("ALS (platform, Spark)", h["rmse"], h["ndcg_at_k"], h["precision_at_k"], h["recall_at_k"],
              f"{one_fit:.1f} (one fit); {als_s:.0f} (CV {len(r['cv_all'])}x{r['folds']} + refit + holdout)"),
             ("popularity baseline", None, pop["ndcg_at_k"], pop["precision_at_k"], pop["recall_at_k"], ""),
             ("ALS implicit (platform estimator, one fit, no CV)", None, implicit_ranking["ndcg_at_k"],
              implicit_ranking["precision_at_k"], implicit_ranking["recall_at_k"], f"{imp_s:.1f}")]
    table += [(n, b["rmse"], b["ndcg_at_k"], b["precision_at_k"], b["recall_at_k"], f"{b['fit_s']:.1f}")
              for n, b in baselines.items()]
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"\n| method | rmse | ndcg@{K} | precision@{K} | recall@{K} | wall s |\n|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row[0]} | " + " | ".join(fmt(v) for v in row[1:5]) + f" | {row[5]} |")
    print(f"\nusers evaluated: {h['users']} (numpy recount of ALS: ndcg@{K} {check['ndcg_at_k']:.4f} over "
          f"{check['users']} users); best ALS setting {best}; unscored holdout rows {h['unscored']}")
    print("\n" + board)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "result.json").write_text(json.dumps({
        "rows": args.rows, "users": args.users, "movies": args.movies, "rank": args.rank, "als": r,
        "als_wall_s": als_s, "als_one_fit_s": one_fit, "als_numpy_check": check, "baselines": baselines,
        "als_implicit_one_fit": implicit_ranking,
        "selected": {k: v for k, v in selected.items() if k != "path"}}, indent=1, default=str))
    spark.stop()


if __name__ == "__main__":
    main()
