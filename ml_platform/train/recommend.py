"""Recommendation: ALS on (user, item, rating or count), cross-validated by what a user sees of a top-N list, set
against a popularity baseline, and one served PipelineModel for (user, item) requests:

  StringIndexer user -> __user ─▶ StringIndexer item -> __item ─▶ ALSModel ─▶ ColdStartFill

Unseen users and items get an index ALS never saw (handleInvalid=keep), so ALS predicts NaN for them and
ColdStartFill answers with a fallback and flags `cold_start`. Top-N lists never hold an item the user has in train.

How a held-out interaction counts as relevant (precision@k, recall@k, NDCG@k with binary gains, k = eval_k):
explicit ratings: rating >= the low end of the label range + 75% of its width (4 stars on a 1..5 scale; the train
mean rating when the range is open); implicit counts: any interaction. Items the user already has in train are
not relevant (they are never recommended). Ranking metrics are averaged over the users ALS knows (in train) that
have at least one relevant held-out item; users seen only in the holdout are cold and get the popularity list.
Recall divides by all of the user's relevant items, NDCG's ideal by min(relevant, k). Coverage: the share of the
train catalogue in the evaluated users' top-N lists. One interaction per (user, item) is trained on: the mean
rating of repeated ratings, or the sum of repeated counts.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from pyspark import keyword_only
from pyspark.ml import Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import IndexToString, StringIndexer, StringIndexerModel
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.recommendation import ALSModel
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import (
    feature_pipeline_dir,
    holdout_dir,
    model_artifact,
    model_result,
    recommendations_dir,
    stacked_model_dir,
    stacked_model_record,
    train_dir,
)
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import (
    FOLD,
    ITEM,
    LABEL,
    USER,
    algorithm,
    edge_notes,
    grid_edges,
    param_maps,
    search_space,
)
from ml_platform.train.features import FeatureError
from ml_platform.train.metrics import primary
from ml_platform.train.models import _root_cause, each_model
from ml_platform.train.training_set import TrainingError

RELEVANT_SHARE = 0.75  # explicit: relevant from the low end of the label range plus this share of its width
POPULAR_KEPT = 1000    # the popularity list kept in the served model's record, for users it never saw


def _rec(spec: DatasetSpec):
    if spec.recommend is None:
        raise TrainingError(f"{spec.name}: task {spec.task} is not a recommendation task (no recommend: block)")
    return spec.recommend


# ---- the indexing pipeline ---------------------------------------------------------------------------------------

def fit_recommend_pipeline(train: DataFrame, spec: DatasetSpec) -> PipelineModel:
    """User and item -> integer ids ALS takes, most frequent first; an id not seen here gets the next free index
    (handleInvalid=keep), one ALS never saw, so it predicts NaN instead of failing."""
    r = _rec(spec)
    missing = [c for c in (r.user, r.item) if c not in train.columns]
    if missing:
        raise FeatureError(f"{spec.name}: recommend columns {missing} are not in the training data (has "
                           f"{len(train.columns)} columns); fix the spec's recommend block or the source")
    row = train.agg(*[F.countDistinct(F.col(f"`{c}`")).alias(c) for c in (r.user, r.item)]).first().asDict()
    few = {c: n for c, n in row.items() if n < 2}
    if few:
        raise FeatureError(f"{spec.name}: a recommender needs at least 2 distinct values of the user and the item "
                           f"column in train; distinct non-null values: {few}")
    return Pipeline(stages=[
        StringIndexer(inputCol=r.user, outputCol=USER, handleInvalid="keep", stringOrderType="frequencyDesc"),
        StringIndexer(inputCol=r.item, outputCol=ITEM, handleInvalid="keep", stringOrderType="frequencyDesc"),
    ]).fit(train)


def build_recommend_pipeline(spark, store: Store, spec: DatasetSpec, version: str) -> dict:
    """Fit on the version's train split and save it where the feature pipeline goes; returns what the asset shows."""
    train = lake.read(spark, store.uri(train_dir(spec, version)))
    model = fit_recommend_pipeline(train, spec)
    path = store.uri(feature_pipeline_dir(spec, version))
    model.write().overwrite().save(path)
    users, items = (len(s.labels) for s in model.stages)
    return {"user": spec.recommend.user, "item": spec.recommend.item, "users": users, "items": items,
            "stages": [type(s).__name__ for s in model.stages], "path": path, "version": version}


def interactions(spec: DatasetSpec, indexed: DataFrame) -> DataFrame:
    """(USER, ITEM, LABEL) as ints and a double, one row per pair: the mean of repeated ratings, the sum of
    repeated counts. Rows without a user or item are left out (their 'unknown' index must stay unknown to ALS)."""
    r = _rec(spec)
    agg = F.sum(LABEL) if r.implicit else F.avg(LABEL)
    return (indexed.where(F.col(f"`{r.user}`").isNotNull() & F.col(f"`{r.item}`").isNotNull()
                          & F.col(LABEL).isNotNull())
            .groupBy(F.col(USER).cast("int").alias(USER), F.col(ITEM).cast("int").alias(ITEM))
            .agg(agg.cast("double").alias(LABEL)))


# ---- ranking metrics -------------------------------------------------------------------------------------------

def relevance_threshold(spec: DatasetSpec, train: DataFrame) -> float | None:
    """The rating a held-out interaction needs to count as relevant (module docstring); None for implicit data,
    where any interaction does."""
    if _rec(spec).implicit:
        return None
    lo, hi = spec.label_range
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + RELEVANT_SHARE * (hi - lo)
    return float(train.agg(F.avg(LABEL)).first()[0])


def user_lists(seen: DataFrame, held: DataFrame | None = None, threshold: float | None = None) -> DataFrame:
    """One row per user: (USER, __seen: its items in `seen`). With held-out interactions, only the users of `seen`
    with at least one relevant held-out item they have not seen, and those items as __relevant. Arrays per user
    keep the ranking to one join and one aggregation, with no window or anti-join over (user, item) rows."""
    out = seen.groupBy(USER).agg(F.collect_set(ITEM).alias("__seen"))
    if held is None:
        return out
    rel = held.where(F.col(LABEL) >= threshold) if threshold is not None else held.where(F.col(LABEL) > 0)
    rel = rel.groupBy(USER).agg(F.collect_set(ITEM).alias("__relevant"))
    return (out.join(rel, USER).withColumn("__relevant", F.array_except("__relevant", "__seen"))
            .where(F.size("__relevant") > 0))


def _most_seen(users: DataFrame) -> int:
    return int(users.agg(F.max(F.size("__seen"))).first()[0] or 0)


def top_als(als: ALSModel, users: DataFrame, n: int, most: int | None = None,
            catalogue: int | None = None) -> DataFrame:
    """`users` (user_lists) with __top: ALS's n best items each has not seen, [{item, score}] best first. ALS ranks
    the whole catalogue per user in one blockified pass and keeps the best m = n + the most items any of these
    users has seen (`most`; at most the catalogue), enough for n unseen ones; its lists grow with the heaviest
    user. Users ALS does not know are left out."""
    most = _most_seen(users) if most is None else most
    catalogue = als.itemFactors.count() if catalogue is None else catalogue
    recs = als.recommendForUserSubset(users.select(USER), max(1, min(n + most, catalogue)))
    unseen = F.filter("recommendations", lambda r: ~F.array_contains(F.col("__seen"), r[ITEM]))
    top = F.transform(F.slice(unseen, 1, n), lambda r: F.struct(r[ITEM].alias("item"),
                                                                r["rating"].cast("double").alias("score")))
    return users.join(recs, USER).select(*users.columns, top.alias("__top"))


def popular(train: DataFrame, length: int) -> DataFrame:
    """One row: __pop, the `length` items most train users have, [{item, score: users who have it}], most first
    (ties by item id)."""
    counts = train.groupBy(ITEM).agg(F.countDistinct(USER).cast("double").alias("score"))
    top = counts.orderBy(F.desc("score"), F.asc(ITEM)).limit(length)
    ordered = F.sort_array(F.collect_list(F.struct((-F.col("score")).alias("k"), F.col(ITEM).alias("item"),
                                                   "score")))
    return top.agg(F.transform(ordered, lambda x: F.struct(x["item"].alias("item"), x["score"].alias("score")))
                   .alias("__pop"))


def top_popular(train: DataFrame, users: DataFrame, n: int, most: int | None = None) -> DataFrame:
    """`users` with __top: the popularity baseline's n best items each has not seen."""
    most = _most_seen(users) if most is None else most
    unseen = F.filter("__pop", lambda x: ~F.array_contains(F.col("__seen"), x["item"]))
    return users.crossJoin(F.broadcast(popular(train, n + most))).select(*users.columns,
                                                                          F.slice(unseen, 1, n).alias("__top"))


def ranking_metrics(lists: DataFrame, k: int, top_n: int | None = None, catalogue: int | None = None) -> dict:
    """precision@k, recall@k and NDCG@k averaged over the users of `lists` (__top and __relevant per user); with
    the catalogue size, the share of it in the first top_n of the lists (coverage). One aggregation each."""
    idcg = [0.0] + [sum(1 / math.log2(i + 1) for i in range(1, m + 1)) for m in range(1, k + 1)]
    rel = F.col("__relevant")
    items = F.slice(F.transform("__top", lambda x: x["item"]), 1, k)
    hits = F.size(F.filter(items, lambda x: F.array_contains(rel, x)))
    dcg = F.aggregate(F.transform(items, lambda x, i: F.when(F.array_contains(rel, x), 1 / F.log2(i + 2))
                                  .otherwise(0.0)), F.lit(0.0), lambda a, b: a + b)
    ideal = F.element_at(F.array(*[F.lit(v) for v in idcg]), (F.least(F.size(rel), F.lit(k)) + 1).cast("int"))
    row = lists.agg(F.avg(hits / k).alias("precision_at_k"), F.avg(hits / F.size(rel)).alias("recall_at_k"),
                    F.avg(dcg / ideal).alias("ndcg_at_k"), F.count(F.lit(1)).alias("users")).first()
    out = {m: float(row[m] or 0.0) for m in ("precision_at_k", "recall_at_k", "ndcg_at_k")}
    out |= {"users": int(row["users"]), "k": k}
    if catalogue:
        listed = lists.select(F.explode(F.slice("__top", 1, top_n or k)).alias("x")).select("x.item").distinct()
        out["coverage"] = listed.count() / catalogue
    return out


# ---- training ---------------------------------------------------------------------------------------------------

def estimator(spark, spec: DatasetSpec, name: str):
    """The registry's ALS with the spec's implicit flag and as many blocks as the session has cores (ALS's own
    default of 10 is for clusters: on small data each block is a task of a few rows). A grid may set them."""
    est = algorithm(spec, name).make("", spec.training.seed).setImplicitPrefs(_rec(spec).implicit)
    blocks = max(1, spark.sparkContext.defaultParallelism)
    return est.setNumUserBlocks(blocks).setNumItemBlocks(blocks)


def _indexed(spark, store: Store, spec: DatasetSpec, version: str) -> tuple[DataFrame, DataFrame]:
    fp = PipelineModel.load(store.uri(feature_pipeline_dir(spec, version)))
    train = fp.transform(lake.read(spark, store.uri(train_dir(spec, version))))
    holdout = fp.transform(lake.read(spark, store.uri(holdout_dir(spec, version))))
    return train, holdout


def _holdout_scores(spec: DatasetSpec, scored: DataFrame, train: DataFrame) -> dict:
    """RMSE of explicit ratings (clamped into the label range, as served) over the holdout rows ALS can score (user
    and item in train); `unscored` counts the others, `cold_users` the holdout users not in train, `non_finite`
    NaN predictions for a known user and item (a model that did not converge). One aggregation."""
    r = _rec(spec)
    p = F.col("prediction")
    lo, hi = spec.label_range
    if math.isfinite(lo) and math.isfinite(hi) and not r.implicit:
        p = F.least(F.greatest(p, F.lit(lo)), F.lit(hi))
    users = train.select(USER).distinct().withColumn("__ku", F.lit(True))
    items = train.select(ITEM).distinct().withColumn("__ki", F.lit(True))
    flagged = scored.join(users, USER, "left").join(items, ITEM, "left")
    known = F.col("__ku").isNotNull() & F.col("__ki").isNotNull()
    row = flagged.agg(
        F.sqrt(F.avg(F.when(known, (F.col(LABEL) - p) ** 2))).alias("rmse"), F.count(F.lit(1)).alias("n"),
        F.sum(known.cast("int")).alias("known"), F.countDistinct(F.when(F.col("__ku").isNull(), F.col(USER)))
        .alias("cold_users"), F.sum(F.when(known & (F.isnan(p) | p.isNull()), 1).otherwise(0)).alias("nf")).first()
    rmse = None if r.implicit or row["rmse"] is None else float(row["rmse"])
    return {"rmse": rmse, "scored_rows": int(row["known"] or 0), "unscored": int(row["n"]) - int(row["known"] or 0),
            "cold_users": int(row["cold_users"]), "non_finite": int(row["nf"] or 0)}


def train_recommender(spark, store: Store, spec: DatasetSpec, version: str, name: str, train: DataFrame,
                      holdout: DataFrame, log=print) -> dict:
    """One recommender (models.train_algorithm's contract): every setting of its search space fitted on k-1 folds
    and ranked by NDCG@k on the k-th (the popularity baseline measured on the same folds), the best refit on all
    of train, measured on the holdout; model and result.json saved."""
    where = f"{spec.name}/model_{name}"
    rec = _rec(spec)
    k = rec.eval_k
    est = estimator(spark, spec, name)
    settings = search_space(spec, name)
    maps = param_maps(est, settings, f"spec {spec.name}: algorithms.{name}")
    folds = spec.training.folds
    threshold = relevance_threshold(spec, train)
    log(f"{where}: started: {len(maps)} parameter maps x {folds} folds, ranked by NDCG@{k}")
    t0 = time.perf_counter()
    data, full = [], None
    try:
        for f in range(folds):
            fit = interactions(spec, train.where(F.col(FOLD) != f)).persist()
            users = user_lists(fit, interactions(spec, train.where(F.col(FOLD) == f)), threshold).persist()
            data.append((fit, users, _most_seen(users), fit.select(ITEM).distinct().count()))

        def one(job):
            i, f = job
            fit, users, most, catalogue = data[f]
            return ranking_metrics(top_als(est.fit(fit, maps[i]), users, k, most, catalogue), k)["ndcg_at_k"]

        with ThreadPoolExecutor(max_workers=max(1, spec.training.parallelism)) as pool:
            jobs = [(i, f) for i in range(len(maps)) for f in range(folds)]
            scores = dict(zip(jobs, pool.map(one, jobs), strict=True))
        pop_cv = [ranking_metrics(top_popular(fit, users, k, most), k)["ndcg_at_k"] for fit, users, most, _ in data]
        per = [[scores[(i, f)] for f in range(folds)] for i in range(len(maps))]
        avg, std = [statistics.fmean(s) for s in per], [statistics.pstdev(s) for s in per]
        best = max(range(len(avg)), key=lambda i: avg[i])
        full = interactions(spec, train).persist()
        model = est.fit(full, maps[best])
        train_seconds = time.perf_counter() - t0
        log(f"{where}: CV done in {train_seconds:.0f}s: best {settings[best]}, cv ndcg_at_k {avg[best]:.4g} ± "
            f"{std[best]:.2g} (popularity {statistics.fmean(pop_cv):.4g}); now scoring the holdout")
        t1 = time.perf_counter()
        hold, pop_hold = holdout_metrics(spec, model, full, holdout, threshold)
        validation_seconds = time.perf_counter() - t1
    except Exception as e:  # noqa: BLE001 - any ALS failure becomes a clear error on this model's asset
        raise TrainingError(f"{where}: training failed: {_root_cause(e)}") from e
    finally:
        for fit, users, *_ in data:
            fit.unpersist()
            users.unpersist()
        if full is not None:
            full.unpersist()
    if hold["non_finite"]:
        raise TrainingError(f"{where}: did not converge: {hold['non_finite']} NaN holdout predictions for users and "
                            f"items in train with {settings[best]}")
    model_uri = store.uri(model_artifact(spec, version, name))
    PipelineModel(stages=[model]).write().overwrite().save(model_uri)
    result = {
        "algorithm": name, "version": version, "features": "", "score": "prediction",
        "implicit": rec.implicit, "relevance_threshold": threshold,
        "search_space": settings, "best_params": settings[best], "param_maps": len(maps), "folds": folds,
        "grid_edges": grid_edges(spec, name, settings[best]),
        "cv_metric": "ndcg_at_k", "cv_mean": avg[best], "cv_std": std[best], "cv_all": avg, "cv_std_all": std,
        "cv_popularity": statistics.fmean(pop_cv), "holdout": hold, "popularity": pop_hold, "threshold": None,
        "train_seconds": round(train_seconds, 2), "validation_seconds": round(validation_seconds, 2),
        "model": model_uri, "oof": None, "ok": True,
    }
    store.write_json(model_result(spec, version, name), result)
    log(f"{where}: finished in {time.perf_counter() - t0:.0f}s: holdout ndcg_at_k {hold['ndcg_at_k']:.4g} "
        f"(popularity {pop_hold['ndcg_at_k']:.4g})")
    return result


def _ranking(spec: DatasetSpec, als: ALSModel, train: DataFrame, hold: DataFrame, threshold: float | None,
             baseline: bool) -> tuple[dict, dict | None]:
    """Ranking metrics of ALS's top-N lists (and the popularity baseline's) for the holdout's evaluable users.
    `train` and `hold` are interactions (USER, ITEM, LABEL)."""
    rec = _rec(spec)
    k, n = rec.eval_k, max(rec.eval_k, rec.top_n)
    users = user_lists(train, hold, threshold).persist()
    most, catalogue = _most_seen(users), train.select(ITEM).distinct().count()
    out = []
    for lists in [top_als(als, users, n, most, catalogue)] + ([top_popular(train, users, n, most)] if baseline else []):
        lists = lists.persist()
        out.append(ranking_metrics(lists, k, rec.top_n, catalogue))
        lists.unpersist()
    users.unpersist()
    return out[0], (out[1] if baseline else None)


def holdout_metrics(spec: DatasetSpec, als: ALSModel, train: DataFrame, holdout: DataFrame,
                    threshold: float | None) -> tuple[dict, dict]:
    """ALS and the popularity baseline on the holdout: ranking metrics on the same users, and ALS's RMSE.
    `train` is the interactions ALS was fitted on; `holdout` is indexed."""
    ranking, baseline = _ranking(spec, als, train, interactions(spec, holdout), threshold, baseline=True)
    scored = als.transform(holdout.select(F.col(USER).cast("int").alias(USER), F.col(ITEM).cast("int").alias(ITEM),
                                          LABEL))
    return _holdout_scores(spec, scored, train) | ranking, baseline


def train_recommenders(spark, store: Store, spec: DatasetSpec, version: str, names: list[str], concurrent: int,
                       log=print, on_done=None) -> dict[str, dict | Exception]:
    """models.train_models for recommenders: each algorithm cross-validated over the training set's folds by
    NDCG@k, refit on all of train, measured on the holdout beside the popularity baseline. A failure is returned
    in place of its result, never raised; `on_done(name, result or error)` runs as each ends."""
    _rec(spec)
    for name in names:
        algorithm(spec, name)  # unknown names fail before any work starts
    log(f"{spec.name}: training {len(names)} recommenders, {max(1, concurrent)} at a time: {', '.join(names)}")
    train, holdout = _indexed(spark, store, spec, version)
    train = train.persist()
    train.count()
    try:
        return each_model(store, spec, version, names, concurrent, lambda name: train_recommender(
            spark, store, spec, version, name, train, holdout, log), log, on_done)
    finally:
        train.unpersist()


# ---- the served model -------------------------------------------------------------------------------------------

class ColdStartFill(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """ALS's NaN (a user or item it never saw) -> a fallback, flagged in a boolean `cold_start` column. The fallback
    is the item's value in `fallbacks` (same position as its index in `items`) when the item is known, else
    `globalFallback`: for ratings the item's mean rating in train and the train mean; for implicit data the share
    of train users who have the item and the share of all (user, item) pairs present, on the scale of ALS's
    implicit predictions. Explicit predictions are clamped into [lower, upper] when `clamp`."""

    items = Param(Params._dummy(), "items", "item indices that have a fallback", typeConverter=TypeConverters.toListInt)
    fallbacks = Param(Params._dummy(), "fallbacks", "the fallback of each item in items",
                      typeConverter=TypeConverters.toListFloat)
    globalFallback = Param(Params._dummy(), "globalFallback", "the fallback of an unknown item",
                           typeConverter=TypeConverters.toFloat)
    clamp = Param(Params._dummy(), "clamp", "clamp predictions into [lower, upper]",
                  typeConverter=TypeConverters.toBoolean)
    lower = Param(Params._dummy(), "lower", "clamp, low end", typeConverter=TypeConverters.toFloat)
    upper = Param(Params._dummy(), "upper", "clamp, high end", typeConverter=TypeConverters.toFloat)

    @keyword_only
    def __init__(self, *, items=None, fallbacks=None, globalFallback=0.0, clamp=False, lower=0.0, upper=0.0):
        super().__init__()
        self._setDefault(items=[], fallbacks=[], globalFallback=0.0, clamp=False, lower=0.0, upper=0.0)
        self._set(**self._input_kwargs)

    def _transform(self, dataset):
        get = self.getOrDefault
        table = dataset.sparkSession.createDataFrame(
            list(zip(get(self.items), get(self.fallbacks), strict=True)), "__cs_item int, __cs_fallback double")
        p = F.col("prediction").cast("double")
        cold = p.isNull() | F.isnan(p)
        out = F.when(cold, F.coalesce(F.col("__cs_fallback"), F.lit(get(self.globalFallback)))).otherwise(p)
        if get(self.clamp):
            out = F.least(F.greatest(out, F.lit(get(self.lower))), F.lit(get(self.upper)))
        joined = dataset.join(F.broadcast(table), F.col(ITEM).cast("int") == F.col("__cs_item"), "left")
        return (joined.withColumn("cold_start", cold).withColumn("prediction", out)
                .drop("__cs_item", "__cs_fallback"))


def cold_start_fill(spec: DatasetSpec, train: DataFrame) -> ColdStartFill:
    """The fallback stage from the interactions ALS was fitted on (ColdStartFill says what it holds)."""
    lo, hi = spec.label_range
    if _rec(spec).implicit:
        users = train.select(USER).distinct().count()
        rows = train.groupBy(ITEM).agg((F.count(F.lit(1)) / users).alias("v")).collect()
        glob = sum(r["v"] for r in rows) / max(1, len(rows))  # pairs present / (users x items)
        clamp = False
    else:
        rows = train.groupBy(ITEM).agg(F.avg(LABEL).alias("v")).collect()
        glob = float(train.agg(F.avg(LABEL)).first()[0])
        clamp = math.isfinite(lo) and math.isfinite(hi)
    rows = sorted(rows, key=lambda r: r[ITEM])
    return ColdStartFill(items=[int(r[ITEM]) for r in rows], fallbacks=[float(r["v"]) for r in rows],
                         globalFallback=float(glob), clamp=clamp, lower=float(lo) if clamp else 0.0,
                         upper=float(hi) if clamp else 0.0)


def _parts(model: PipelineModel) -> tuple[StringIndexerModel, StringIndexerModel, ALSModel]:
    idx = {s.getOutputCol(): s for s in model.stages if isinstance(s, StringIndexerModel)}
    als = [s for s in model.stages if isinstance(s, ALSModel)]
    if USER not in idx or ITEM not in idx or not als:
        raise TrainingError(f"not a served recommender: stages {[type(s).__name__ for s in model.stages]}")
    return idx[USER], idx[ITEM], als[0]


def _served_interactions(spec: DatasetSpec, model: PipelineModel, frame: DataFrame) -> DataFrame:
    user_idx, item_idx, _ = _parts(model)
    return interactions(spec, PipelineModel(stages=[user_idx, item_idx]).transform(frame))


def evaluate_recommender(spark, spec: DatasetSpec, model: PipelineModel, holdout_uri: str, train_uri: str) -> dict:
    """A served recommender on a holdout (the promotion gate): RMSE of its `prediction` on every row (cold ones
    answered by the fallback; explicit ratings only), `rmse_known` on the rows ALS scores, `cold_start` rows,
    NaN predictions (`non_finite`), and the ranking metrics of its ALS top-N lists (items in train excluded)."""
    rec = _rec(spec)
    _, _, als = _parts(model)
    train = _served_interactions(spec, model, lake.read(spark, train_uri)).persist()
    holdout = lake.read(spark, holdout_uri)
    p, y = F.col("prediction"), F.col(LABEL)
    row = model.transform(holdout).agg(
        F.sqrt(F.avg((y - p) ** 2)).alias("rmse"), F.count(F.lit(1)).alias("n"),
        F.sqrt(F.avg(F.when(~F.col("cold_start"), (y - p) ** 2))).alias("rmse_known"),
        F.sum(F.col("cold_start").cast("int")).alias("cold"),
        F.sum(F.when(p.isNull() | F.isnan(p), 1).otherwise(0)).alias("nf")).first()
    ranking, _ = _ranking(spec, als, train, _served_interactions(spec, model, holdout),
                          relevance_threshold(spec, train), baseline=False)
    train.unpersist()
    explicit = lambda v: None if rec.implicit or v is None else float(v)  # noqa: E731
    return {"rmse": explicit(row["rmse"]), "rmse_known": explicit(row["rmse_known"]), "rows": int(row["n"]),
            "cold_start": int(row["cold"] or 0), "non_finite": int(row["nf"] or 0)} | ranking


def select_recommender(spark, store: Store, spec: DatasetSpec, version: str, results: dict[str, dict]) -> dict:
    """What to serve (the recommender with the best cross-validated NDCG@k; there is one, ALS) as one
    PipelineModel: the indexers, the refit ALS model and ColdStartFill, saved where the stacked model goes. The
    result has stacking.fit_stack's keys; the choice sentence sets it against the popularity baseline; `popular`
    keeps the most popular items (up to POPULAR_KEPT), the list users the model never saw get."""
    ok = {n: r for n, r in results.items() if isinstance(r, dict) and r.get("ok")}
    if not ok:
        raise TrainingError(f"{spec.name}: no trained recommender to serve; results: {sorted(results)}")
    metric, _ = primary(spec.task)
    names = sorted(ok)
    served = max(names, key=lambda n: ok[n]["cv_mean"])
    r = ok[served]
    t0 = time.perf_counter()
    indexers = PipelineModel.load(store.uri(feature_pipeline_dir(spec, version)))
    als = PipelineModel.load(r["model"]).stages[0]
    train_uri, holdout_uri = store.uri(train_dir(spec, version)), store.uri(holdout_dir(spec, version))
    train = interactions(spec, indexers.transform(lake.read(spark, train_uri))).persist()
    model = PipelineModel(stages=list(indexers.stages) + [als, cold_start_fill(spec, train)])
    labels = indexers.stages[1].labels
    popular_items = [{"item": labels[x["item"]], "score": x["score"]}
                     for x in popular(train, min(POPULAR_KEPT, len(labels))).first()["__pop"]]
    train.unpersist()
    path = store.uri(stacked_model_dir(spec, version))
    model.write().overwrite().save(path)
    fit_seconds = time.perf_counter() - t0
    hold = evaluate_recommender(spark, spec, model, holdout_uri, train_uri)
    pop = r["popularity"]
    k = hold["k"]
    beats = hold[metric] > pop[metric]
    choice = (f"{served} {r['best_params']}: holdout NDCG@{k} {hold[metric]:.4g} vs the popularity baseline's "
              f"{pop[metric]:.4g}, precision@{k} {hold['precision_at_k']:.4g} vs {pop['precision_at_k']:.4g}, "
              f"recall@{k} {hold['recall_at_k']:.4g} vs {pop['recall_at_k']:.4g} over {hold['users']} users; "
              f"CV NDCG@{k} {r['cv_mean']:.4g} ± {r['cv_std']:.2g} vs {r['cv_popularity']:.4g}")
    if not beats:
        choice += ("; it does not beat the popularity baseline on the holdout (served anyway: cold-start users get "
                   "the popularity list)")
    best = max(names, key=lambda n: ok[n]["holdout"][metric])
    result = {"version": version, "base_models": names, "selected": [served], "meta_coefficients": {served: 1.0},
              "meta_intercept": 0.0, "threshold": None, "served": served, "choice": choice,
              "cv": {n: ok[n]["cv_mean"] for n in names} | {"popularity": r["cv_popularity"]},
              "stack_holdout": None, "holdout": hold, "popularity_holdout": pop, "beats_popularity": beats,
              "best_member": best, "best_member_holdout": ok[best]["holdout"][metric], "best_params": r["best_params"],
              "fit_seconds": round(fit_seconds, 2), "path": path, "popular": popular_items}
    store.write_json(stacked_model_record(spec, version), result)
    return result


def recommend_leaderboard(spec: DatasetSpec, results: dict[str, dict], selected: dict) -> tuple[str, list[dict]]:
    """A markdown table: every ALS setting tried (its CV NDCG@k; the refit best also on the holdout) and the
    popularity baseline, best first; then what is served and why, the relevance rule and grid-edge notes."""
    k = _rec(spec).eval_k
    cols = ["ndcg_at_k", "precision_at_k", "recall_at_k", "coverage", "rmse"]
    rows = []
    for name, r in sorted(results.items()):
        if not (isinstance(r, dict) and r.get("ok")):
            continue
        for s, cv, sd in zip(r["search_space"], r["cv_all"], r["cv_std_all"], strict=True):
            best = s == r["best_params"]
            hold = (selected["holdout"] if name == selected["served"] else r["holdout"]) if best else {}
            rows.append({"model": f"{name} {s}", **{c: hold.get(c) for c in cols}, "cv": cv, "cv_std": sd,
                         "served": best and name == selected["served"],
                         "train_s": r["train_seconds"] if best else None})
    pop = selected.get("popularity_holdout") or {}
    rows.append({"model": "popularity baseline", **{c: pop.get(c) for c in cols},
                 "cv": selected["cv"].get("popularity"), "cv_std": None, "served": False, "train_s": None})
    rows.sort(key=lambda r: (r["ndcg_at_k"] is None, -(r["ndcg_at_k"] or 0), -(r["cv"] or 0)))
    fmt = lambda v: "" if v is None else format(v, ".4g")  # noqa: E731
    label = {"ndcg_at_k": f"ndcg@{k}", "precision_at_k": f"precision@{k}", "recall_at_k": f"recall@{k}",
             "coverage": f"coverage (top {_rec(spec).top_n})", "rmse": f"rmse ({spec.target})"}
    head = ("| model | " + " | ".join(label[c] for c in cols) + f" | cv ndcg@{k} | train s |\n|---|"
            + "---|" * (len(cols) + 2))
    body = "\n".join(f"| {r['model']}{' ◀ served' if r['served'] else ''} | " + " | ".join(fmt(r[c]) for c in cols)
                     + f" | {fmt(r['cv'])}{' ± ' + fmt(r['cv_std']) if r['cv_std'] is not None else ''} | "
                     f"{fmt(r['train_s'])} |" for r in rows)
    hold = selected["holdout"]
    threshold = next((r.get("relevance_threshold") for r in results.values() if isinstance(r, dict)), None)
    rule = ("any held-out interaction" if threshold is None else f"a held-out rating >= {threshold:.3g}")
    notes = [f"Served: {selected['choice']}.",
             f"Relevant: {rule}, items the user has in train excluded; {hold['users']} users evaluated; "
             f"{hold['cold_start']} of {hold['rows']} holdout rows were cold starts (answered by the fallback)."]
    notes += edge_notes(results)
    return head + "\n" + body + "\n\n" + "\n".join(f"- {n}" for n in notes), rows


# ---- top-N lists ------------------------------------------------------------------------------------------------

_LOADED: OrderedDict[str, tuple[str, PipelineModel, dict[str, int]]] = OrderedDict()
_LOADED_KEPT = 4
_LOADING = threading.Lock()


def _served(store: Store, spec: DatasetSpec, version: str) -> tuple[dict, PipelineModel, dict[str, int]]:
    """A version's served recommender: its record, its PipelineModel and its users' ids, loaded once per written
    record (a request for one user must not pay a model load; a re-selected version is loaded again)."""
    record = store.read_json(stacked_model_record(spec, version))
    if record is None or "popular" not in record:
        raise TrainingError(f"{spec.name}: training version {version} has no served recommender; materialize "
                            f"{spec.name}/stacked_model for it first")
    stamp = json.dumps(record, sort_keys=True, default=str)
    with _LOADING:
        hit = _LOADED.get(record["path"])
        if hit is None or hit[0] != stamp:
            model = PipelineModel.load(record["path"])
            hit = (stamp, model, {v: i for i, v in enumerate(_parts(model)[0].labels)})
            _LOADED[record["path"]] = hit
            while len(_LOADED) > _LOADED_KEPT:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(record["path"])
    return record, hit[1], hit[2]


def _bounds(model: PipelineModel) -> tuple[float, float] | None:
    fill = [s for s in model.stages if isinstance(s, ColdStartFill)]
    if fill and fill[0].getOrDefault("clamp"):
        return fill[0].getOrDefault("lower"), fill[0].getOrDefault("upper")
    return None


def build_top_n(spark, store: Store, spec: DatasetSpec, version: str) -> dict:
    """The top-N (spec.recommend.top_n) unseen items of every user in train, by the served model, with the
    original user and item values: a Delta table (user, rank, item, score) at layout.recommendations_dir. The score is
    ALS's prediction, clamped as the served model clamps it; the rank follows the unclamped one."""
    _, model, _ = _served(store, spec, version)
    user_idx, item_idx, als = _parts(model)
    train = _served_interactions(spec, model, lake.read(spark, store.uri(train_dir(spec, version))))
    score, bounds = F.col("x.score"), _bounds(model)
    if bounds:
        score = F.least(F.greatest(score, F.lit(bounds[0])), F.lit(bounds[1]))
    rows = (top_als(als, user_lists(train), _rec(spec).top_n).select(USER, F.posexplode("__top").alias("pos", "x"))
            .select(USER, (F.col("pos") + 1).alias("rank"), F.col("x.item").alias(ITEM), score.alias("score")))
    rows = IndexToString(inputCol=USER, outputCol="user", labels=user_idx.labels).transform(rows)
    rows = IndexToString(inputCol=ITEM, outputCol="item", labels=item_idx.labels).transform(rows)
    path = store.uri(recommendations_dir(spec, version))
    lake.overwrite(rows.select("user", "rank", "item", "score"), path)
    out = lake.read(spark, path).agg(F.countDistinct("user").alias("users"), F.count(F.lit(1)).alias("rows")).first()
    return {"users": int(out["users"]), "rows": int(out["rows"]), "path": path}


def top_n_for_user(spark, store: Store, spec: DatasetSpec, version: str, user, n: int | None = None) -> dict:
    """One user's top n (default spec.recommend.top_n) unseen items by the served model, {user, items: [{item,
    score}], cold_start}, as build_top_n lists them; a user not in train gets the most popular items (score: how
    many train users have it; at most POPULAR_KEPT) with cold_start true. Two small Spark jobs for a known user
    (the user's train rows, read by its id; ALS's list for one user), none for an unknown one."""
    n = n or _rec(spec).top_n
    record, model, users = _served(store, spec, version)
    _, item_idx, als = _parts(model)
    index, rows = users.get(str(user)), []
    if index is not None:
        col = _rec(spec).user
        mine = lake.read(spark, store.uri(train_dir(spec, version))).where(
            F.col(f"`{col}`").cast("string") == str(user)).select(_rec(spec).item)
        seen = {int(r[0]) for r in item_idx.transform(mine).select(ITEM).distinct().collect()}
        rows = als.recommendForUserSubset(spark.createDataFrame([(index,)], f"{USER} int"), n + len(seen)).collect()
    if not rows:
        return {"user": user, "items": record["popular"][:n], "cold_start": True}
    bounds, labels = _bounds(model), item_idx.labels
    top = [x for x in rows[0]["recommendations"] if x[ITEM] not in seen][:n]
    return {"user": user, "items": [{"item": labels[x[ITEM]], "score": float(
        min(max(x["rating"], bounds[0]), bounds[1]) if bounds else x["rating"])} for x in top], "cold_start": False}
