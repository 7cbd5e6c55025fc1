"""What trains, chooses, ranks and judges each task kind, in one table: supervised tasks (regression, binary and
multi-class classification) cross-validate base models and stack them (models.py, stacking.py); clustering
searches k and serves the best silhouette (clustering.py); recommendation serves ALS against a popularity
baseline (recommend.py). The jobs and the release step ask here, so a task kind is a row, not a branch in each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ml_platform.layout import holdout_dir, train_dir
from ml_platform.spec import DatasetSpec


@dataclass(frozen=True)
class Kind:
    features: Callable     # (spark, store, spec, version) -> summary; saves the fitted feature stages
    train: Callable        # (spark, store, spec, version, names, concurrent, log=, on_done=) -> {name: result|error}
    select: Callable       # (spark, store, spec, version, results) -> what is served (stacking.fit_stack's keys)
    leaderboard: Callable  # (spec, results, selected) -> (markdown, rows)
    evaluate: Callable     # (spark, store, spec, model, version) -> a served model's metrics on that holdout
    stacks: bool           # a meta-model over members (its own check against the best member is meaningful)


def _supervised() -> Kind:
    from ml_platform.train.features import build_feature_pipeline
    from ml_platform.train.models import train_models
    from ml_platform.train.stacking import evaluate_pipeline, fit_stack, leaderboard

    return Kind(build_feature_pipeline, train_models, fit_stack, leaderboard,
                lambda spark, store, spec, model, v: evaluate_pipeline(spark, spec, model, store.uri(
                    holdout_dir(spec, v))), stacks=True)


def _clustering() -> Kind:
    from ml_platform.train.clustering import cluster_leaderboard, evaluate_clusterer, select_clusterer, train_clusterers
    from ml_platform.train.features import build_feature_pipeline

    return Kind(build_feature_pipeline, train_clusterers, select_clusterer, cluster_leaderboard,
                lambda spark, store, spec, model, v: evaluate_clusterer(spark, spec, model, store.uri(
                    holdout_dir(spec, v))), stacks=False)


def _recommendation() -> Kind:
    from ml_platform.train.recommend import (
        build_recommend_pipeline,
        evaluate_recommender,
        recommend_leaderboard,
        select_recommender,
        train_recommenders,
    )

    return Kind(build_recommend_pipeline, train_recommenders, select_recommender, recommend_leaderboard,
                lambda spark, store, spec, model, v: evaluate_recommender(
                    spark, spec, model, store.uri(holdout_dir(spec, v)), store.uri(train_dir(spec, v))),
                stacks=False)


def kind(spec: DatasetSpec) -> Kind:
    """The functions of `spec`'s task kind (imported on call: a job for the data layers needs none of them)."""
    if spec.task == "clustering":
        return _clustering()
    if spec.task == "recommendation":
        return _recommendation()
    return _supervised()
