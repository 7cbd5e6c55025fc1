"""Clustering: each algorithm tries every setting of its grid (typically k), keeps the one with the best silhouette
on the train split, and reports it on the holdout; the served model is the algorithm with the best holdout
silhouette, as one PipelineModel:

  feature stages ─▶ fitted clusterer: `prediction` (the cluster id; GMM also `probability`, its memberships)

The same contracts as supervised training (models.train_models, stacking.fit_stack and leaderboard), so the
release step and the assets treat both alike. There is no label, so no cross-validation: settings are compared by
silhouette (squared Euclidean, on `features_scaled`) on a deterministic sample of the train split, which leaves the
holdout unseen by the choice. Spark's silhouette for squared Euclidean distances is exact and linear in rows (per
cluster sums), so the sample only bounds the time of one evaluation per setting.
"""

from __future__ import annotations

import time

from pyspark.ml import PipelineModel
from pyspark.ml.clustering import GaussianMixtureModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.layout import (
    feature_pipeline_dir,
    model_artifact,
    model_result,
    stacked_model_dir,
    stacked_model_record,
)
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.algorithms import (
    LINEAR_FEATURES,
    ROW_ID,
    algorithm,
    edge_notes,
    grid_edges,
    param_maps,
    search_space,
)
from ml_platform.train.models import _root_cause, each_model, featurized
from ml_platform.train.training_set import TrainingError

SAMPLE_ROWS = 20_000  # train rows the silhouette of each setting is measured on
# fits per setting, from consecutive seeds, keeping the best of the algorithm's own objective (as scikit-learn's
# n_init): k-means, bisecting k-means and EM all stop in local optima, and on well-separated segments one seed in
# four or so merges two segments and splits another (a k=4 silhouette of 0.67 instead of 0.80 on the customers)
RESTARTS = 3


def _n_clusters(fitted) -> int:
    """Clusters a fitted model has (some may hold no rows): GMM's components, the others' centers."""
    return len(fitted.weights) if isinstance(fitted, GaussianMixtureModel) else len(fitted.clusterCenters())


def objective(fitted) -> float:
    """What the fit itself optimizes, larger is better: GMM's log-likelihood, minus the others' within-cluster sum of
    squared distances."""
    if isinstance(fitted, GaussianMixtureModel):
        return float(fitted.summary.logLikelihood)
    return -float(fitted.summary.trainingCost)


def fit_restarts(est, train: DataFrame, params: dict, seed: int, restarts: int = RESTARTS) -> tuple:
    """(fitted, objective, seed): the best of `restarts` fits from seeds seed, seed + 1, ...; one fit when the
    setting fixes its own seed."""
    seed_param = est.getParam("seed")
    seeds = [params[seed_param]] if seed_param in params else [seed + r for r in range(max(1, restarts))]
    best = None
    for sd in seeds:
        model = est.fit(train, params | {seed_param: sd})
        if best is None or objective(model) > best[1]:
            best = (model, objective(model), sd)
    return best


def _silhouette(scored: DataFrame) -> float:
    return float(ClusteringEvaluator(featuresCol=LINEAR_FEATURES, predictionCol="prediction", metricName="silhouette",
                                     distanceMeasure="squaredEuclidean").evaluate(scored))


def cluster_metrics(scored: DataFrame, k: int) -> dict:
    """Silhouette, rows per cluster id (every id of the model, empty ones as 0; ids as texts, as in JSON), k, the
    smallest cluster's share and the rows with no cluster or a NaN membership. With fewer than two clusters holding
    rows the silhouette is undefined (Spark refuses it): it is reported as 0, no structure found."""
    bad = F.col("prediction").isNull()
    if "probability" in scored.columns:
        bad = bad | F.exists(vector_to_array(F.col("probability")), lambda p: F.isnan(p))
    scored = scored.withColumn("__bad", bad)
    rows = scored.groupBy("prediction").agg(F.count(F.lit(1)).alias("n"),
                                            F.sum(F.col("__bad").cast("int")).alias("bad")).collect()
    counts = {int(r["prediction"]): int(r["n"]) for r in rows if r["prediction"] is not None}
    sizes = {str(c): counts.get(c, 0) for c in sorted(set(range(k)) | set(counts))}
    n = sum(sizes.values())
    held = [r["prediction"] for r in rows if r["prediction"] is not None and r["n"] > (r["bad"] or 0)]
    silhouette = _silhouette(scored.where(~F.col("__bad"))) if len(held) >= 2 else 0.0
    return {"silhouette": silhouette, "sizes": sizes, "k": k,
            "smallest_share": min(sizes.values()) / n if n else 0.0,
            "non_finite": sum(int(r["bad"] or 0) for r in rows)}


def silhouette_sample(train: DataFrame, seed: int) -> DataFrame:
    """At most SAMPLE_ROWS train rows, the same ones on every run (by a hash of the row id), cached."""
    sample = train.orderBy(F.xxhash64(F.lit(seed), F.col(ROW_ID))).limit(SAMPLE_ROWS).persist()
    sample.count()
    return sample


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"


def train_clusterer(store: Store, spec: DatasetSpec, version: str, name: str, train: DataFrame, sample: DataFrame,
                    holdout: DataFrame, log=print, restarts: int = RESTARTS) -> dict:
    """Fit every setting on the train split (the best of `restarts` seeds), keep the best train-sample silhouette,
    report it on the holdout and save it. A setting that fails or finds one cluster is recorded with its reason and
    skipped."""
    where = f"{spec.name}/model_{name}"
    alg = algorithm(spec, name)
    est = alg.make(alg.features, spec.training.seed)
    settings = search_space(spec, name)
    maps = param_maps(est, settings, f"spec {spec.name}: algorithms.{name}")
    log(f"{where}: started: {len(maps)} settings x {restarts} seeds, silhouette on {sample.count()} train rows")
    t0 = time.perf_counter()
    fitted, scores, seeds, skipped = {}, [], [], []
    for i, (s, pm) in enumerate(zip(settings, maps, strict=True)):
        try:
            model, _, seed = fit_restarts(est, train, pm, spec.training.seed, restarts)
            found = model.transform(sample).select("prediction").distinct().count()
            if found < 2:
                raise ValueError(f"found {found} cluster{'s' * (found != 1)}; a clustering needs two or more")
            scores.append(_silhouette(model.transform(sample)))
            fitted[i] = model
            seeds.append(seed)
            log(f"{where}: {_params_text(s)}: train silhouette {scores[-1]:.4g} (seed {seed})")
        except Exception as e:  # noqa: BLE001 - one bad setting is reported, the others still run
            scores.append(None)
            seeds.append(None)
            skipped.append({"params": s, "reason": _root_cause(e)})
            log(f"{where}: {_params_text(s)}: skipped: {skipped[-1]['reason']}")
    if not fitted:
        raise TrainingError(f"{where}: every setting failed: "
                            + "; ".join(f"{_params_text(x['params'])}: {x['reason']}" for x in skipped))
    best = max(fitted, key=lambda i: scores[i])
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    hold = cluster_metrics(fitted[best].transform(holdout), _n_clusters(fitted[best]))
    validation_seconds = time.perf_counter() - t1
    model_uri = store.uri(model_artifact(spec, version, name))
    PipelineModel(stages=[fitted[best]]).write().overwrite().save(model_uri)
    result = {
        "algorithm": name, "version": version, "features": alg.features, "score": alg.score,
        "search_space": settings, "best_params": settings[best], "param_maps": len(maps), "folds": 0,
        "grid_edges": grid_edges(spec, name, settings[best]), "cv_metric": "silhouette",
        "cv_mean": scores[best], "cv_std": 0.0, "cv_all": scores, "skipped": skipped, "holdout": hold,
        "restarts": restarts, "seeds": seeds,
        "threshold": None, "train_seconds": round(train_seconds, 2),
        "validation_seconds": round(validation_seconds, 2), "model": model_uri, "ok": True,
    }
    store.write_json(model_result(spec, version, name), result)
    log(f"{where}: finished in {time.perf_counter() - t0:.0f}s: {_params_text(settings[best])}, holdout silhouette "
        f"{hold['silhouette']:.4g}, smallest cluster {hold['smallest_share']:.1%}")
    return result


def train_clusterers(spark, store: Store, spec: DatasetSpec, version: str, names: list[str], concurrent: int,
                     log=print, on_done=None, restarts: int = RESTARTS) -> dict[str, dict | Exception]:
    """models.train_models for clustering: several algorithms on one cached train split, `concurrent` at a time; a
    failure is returned in place of its result, never raised; `on_done(name, result or error)` as each ends."""
    for name in names:
        algorithm(spec, name)  # unknown names fail before any work starts
    log(f"{spec.name}: clustering with {len(names)} algorithms, {max(1, concurrent)} at a time: {', '.join(names)}")
    train, holdout = featurized(spark, store, spec, version)
    holdout = holdout.persist()  # every algorithm's holdout metrics read it, several passes each
    sample = silhouette_sample(train, spec.training.seed)
    try:
        return each_model(store, spec, version, names, concurrent, lambda name: train_clusterer(
            store, spec, version, name, train, sample, holdout, log, restarts), log, on_done)
    finally:
        sample.unpersist()
        holdout.unpersist()
        train.unpersist()


def evaluate_clusterer(spark, spec: DatasetSpec, model: PipelineModel, holdout_uri: str) -> dict:
    """A served clustering PipelineModel (feature stages, then the clusterer) scored on a holdout: silhouette on
    the features it clustered, sizes, k, the smallest share and non-finite rows, as cluster_metrics."""
    return cluster_metrics(model.transform(lake.read(spark, holdout_uri)), _n_clusters(model.stages[-1]))


def select_clusterer(spark, store: Store, spec: DatasetSpec, version: str, results: dict) -> dict:
    """Serve the algorithm with the best holdout silhouette, after the version's fitted feature stages, and save it.
    Returns what stacking.fit_stack returns (no meta-model: its fields are empty), with the choice in words."""
    ok = {n: r for n, r in results.items() if isinstance(r, dict) and r.get("ok")}
    if not ok:
        raise TrainingError(f"{spec.name}: no clustering model trained; nothing to serve ({sorted(results)} failed)")
    t0 = time.perf_counter()
    hold = {n: r["holdout"]["silhouette"] for n, r in ok.items()}
    served = max(sorted(ok), key=lambda n: hold[n])
    features = list(PipelineModel.load(store.uri(feature_pipeline_dir(spec, version))).stages)
    model = PipelineModel(stages=features + [PipelineModel.load(ok[served]["model"]).stages[0]])
    path = store.uri(stacked_model_dir(spec, version))
    model.write().overwrite().save(path)
    # the served pipeline is the version's own feature stages and the very model its holdout metrics were measured
    # on, so they are its metrics (evaluate_clusterer measures them again, for the promotion gate)
    holdout = dict(ok[served]["holdout"])
    others = [f"{n} {hold[n]:.3f} ({_params_text(ok[n]['best_params'])})" for n in sorted(ok, key=lambda n: -hold[n])
              if n != served]
    choice = (f"{served} with {_params_text(ok[served]['best_params'])} ({holdout['k']} clusters): the best holdout "
              f"silhouette, {holdout['silhouette']:.3f} (train {ok[served]['cv_mean']:.3f})"
              + (f"; {', '.join(others)}" if others else "; the only model trained"))
    result = {"version": version, "base_models": sorted(ok), "selected": [served], "meta_coefficients": {},
              "meta_intercept": 0.0, "threshold": None, "served": served, "choice": choice,
              "cv": {n: r["cv_mean"] for n, r in ok.items()}, "stack_holdout": None, "holdout": holdout,
              "best_member": served, "best_member_holdout": hold[served],
              "fit_seconds": round(time.perf_counter() - t0, 2), "path": path}
    store.write_json(stacked_model_record(spec, version), result)
    return result


def cluster_leaderboard(spec: DatasetSpec, results: dict, selected: dict) -> tuple[str, list[dict]]:
    """A markdown table of the algorithms, best holdout silhouette first, the served one marked; then what was
    served and why, its cluster sizes on the holdout, best settings at the edge of their grid and skipped settings."""
    ok = {n: r for n, r in results.items() if isinstance(r, dict) and r.get("ok")}
    rows = [{"model": n, "k": r["holdout"]["k"], "silhouette": r["holdout"]["silhouette"], "train_silhouette":
             r["cv_mean"], "smallest_share": r["holdout"]["smallest_share"], "train_s": r["train_seconds"],
             "served": n == selected["served"]} for n, r in ok.items()]
    rows.sort(key=lambda r: -r["silhouette"])
    head = ("| model | k | holdout silhouette | train silhouette | smallest cluster | train s |\n"
            "|---|---|---|---|---|---|")
    body = "\n".join(f"| {r['model']}{' ◀ served' if r['served'] else ''} | {r['k']} | {r['silhouette']:.4g} | "
                     f"{r['train_silhouette']:.4g} | {r['smallest_share']:.1%} | {r['train_s']} |" for r in rows)
    sizes = selected["holdout"]["sizes"]
    total = sum(sizes.values()) or 1
    notes = [f"Served: {selected['choice']}.",
             f"Cluster sizes of {selected['served']} on the holdout ({total} rows): "
             + ", ".join(f"{c}: {v} ({v / total:.0%})" for c, v in sizes.items())]
    notes += edge_notes(ok)
    notes += [f"Skipped: {n} {_params_text(x['params'])}: {x['reason']}" for n, r in sorted(ok.items())
              for x in r.get("skipped", [])]
    notes += [f"Failed: {n}: {r if isinstance(r, Exception) else r.get('error')}" for n, r in sorted(results.items())
              if n not in ok]
    return head + "\n" + body + "\n\n" + "\n".join(f"- {n}" for n in notes), rows
