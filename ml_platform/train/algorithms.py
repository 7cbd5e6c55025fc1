"""The algorithms a spec may name, and their search spaces: a grid and/or N random draws from declared distributions.

Each algorithm says which feature vector it reads: trees take indexed categoricals (`features_tree`, nominal
metadata, so splits are categorical), linear models take one-hot encoded, standardized features
(`features_scaled`). Spec parameter names are the estimator's own Param names.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from pyspark.ml import classification as C
from pyspark.ml import clustering as K
from pyspark.ml import recommendation as A
from pyspark.ml import regression as R

from ml_platform.spec import DatasetSpec, SpecError
from ml_platform.train.metrics import LOG_ODDS
from ml_platform.train.war import WeightedAverageRegressor

TREE_FEATURES = "features_tree"
LINEAR_FEATURES = "features_scaled"
LABEL, WEIGHT, FOLD, ROW_ID = "__label", "__weight", "__fold", "__row_id"
USER, ITEM = "__user", "__item"  # recommendation: the user and item columns as ALS's integer ids
SOFTMAX = "softmax"  # a multiclass score kind: class probabilities as the softmax of one-vs-rest margins
MAX_BINS = 64  # above training.max_categories + 2 (the '__other__' and unseen levels)


@dataclass(frozen=True)
class Algorithm:
    name: str
    task: str
    make: Any                 # (featuresCol, seed) -> an unfitted estimator
    features: str
    weights: bool = True      # accepts weightCol (class weights for imbalance)
    score: str = "probability"  # classification: the positive-class score (metrics.score_column's kinds)


def _tree(cls, **kw):
    return lambda features, seed: cls(featuresCol=features, labelCol=LABEL, seed=seed, maxBins=MAX_BINS, **kw)


def _plain(cls, **kw):
    return lambda features, seed: cls(featuresCol=features, labelCol=LABEL, **kw)


def _one_vs_rest(cls, tree: bool, **kw):
    """A binary Spark learner made multi-class: one model per class. Grid parameters are the inner learner's own
    (maxDepth, regParam, ...); param_maps finds them there."""
    def make(features, seed):
        inner = cls(featuresCol=features, labelCol=LABEL, **({"seed": seed, "maxBins": MAX_BINS} if tree else {}),
                    **kw)
        return C.OneVsRest(classifier=inner, featuresCol=features, labelCol=LABEL, parallelism=1)
    return make


def _clusters(cls, **kw):
    return lambda features, seed: cls(featuresCol=features, seed=seed, **kw)


def _als(features, seed):
    """ALS on integer user/item ids (the feature pipeline indexes them); the rating is the label. `nan` for users or
    items it never saw: the recommender answers those from popularity (train/recommend.py)."""
    return A.ALS(userCol=USER, itemCol=ITEM, ratingCol=LABEL, seed=seed, coldStartStrategy="nan",
                 nonnegative=True)


def _xgboost(task: str):
    """xgboost.spark: one barrier task per fit (num_workers=1), so it fits beside the other models on a small
    machine; its constructor takes snake_case column names, and it predicts through a vectorized pandas UDF."""
    def make(features, seed):
        from xgboost.spark import SparkXGBClassifier, SparkXGBRegressor

        cls = SparkXGBRegressor if task == "regression" else SparkXGBClassifier  # multi-class: softprob, found
        return cls(features_col=features, label_col=LABEL, random_state=seed, num_workers=1, verbosity=0,
                   verbose=False)  # no per-round evaluation lines in the run logs
    return make


REGISTRY: dict[tuple[str, str], Algorithm] = {
    (a.task, a.name): a for a in [
        Algorithm("gbt", "regression", _tree(R.GBTRegressor), TREE_FEATURES, weights=False),
        Algorithm("random_forest", "regression", _tree(R.RandomForestRegressor), TREE_FEATURES, weights=False),
        Algorithm("linear", "regression", _plain(R.LinearRegression, maxIter=100), LINEAR_FEATURES, weights=False),
        Algorithm("xgboost", "regression", _xgboost("regression"), TREE_FEATURES, weights=False),
        # a generalized linear model: the spec's grid picks `family` and `link` (e.g. gamma with log for prices,
        # poisson for counts), as GeneralizedLinearRegression's own parameters
        Algorithm("glm", "regression", _plain(R.GeneralizedLinearRegression, maxIter=50), LINEAR_FEATURES,
                  weights=False),
        Algorithm("weighted_average", "regression", _plain(WeightedAverageRegressor), LINEAR_FEATURES,
                  weights=False),
        Algorithm("logistic", "classification", _plain(C.LogisticRegression, maxIter=100), LINEAR_FEATURES),
        Algorithm("linear_svc", "classification", _plain(C.LinearSVC, maxIter=100), LINEAR_FEATURES,
                  score="rawPrediction"),
        Algorithm("random_forest", "classification", _tree(C.RandomForestClassifier), TREE_FEATURES),
        Algorithm("gbt", "classification", _tree(C.GBTClassifier), TREE_FEATURES),
        Algorithm("xgboost", "classification", _xgboost("classification"), TREE_FEATURES),
        # Gaussian naive Bayes takes any real features, so the scaled vector serves; the multinomial and
        # Bernoulli models would need counts, which these datasets do not have. Its score is its log-odds: a
        # product of many per-feature likelihoods puts most probabilities at exactly 0 or 1 in double precision
        Algorithm("naive_bayes", "classification", _plain(C.NaiveBayes, modelType="gaussian"), LINEAR_FEATURES,
                  score=LOG_ODDS),
        # multi-class: every model's score is its vector of class probabilities
        Algorithm("logistic", "multiclass", _plain(C.LogisticRegression, maxIter=100, family="multinomial"),
                  LINEAR_FEATURES),
        Algorithm("random_forest", "multiclass", _tree(C.RandomForestClassifier), TREE_FEATURES),
        Algorithm("naive_bayes", "multiclass", _plain(C.NaiveBayes, modelType="gaussian"), LINEAR_FEATURES),
        Algorithm("xgboost", "multiclass", _xgboost("multiclass"), TREE_FEATURES),
        Algorithm("gbt", "multiclass", _one_vs_rest(C.GBTClassifier, tree=True), TREE_FEATURES, score=SOFTMAX),
        Algorithm("linear_svc", "multiclass", _one_vs_rest(C.LinearSVC, tree=False, maxIter=100), LINEAR_FEATURES,
                  score=SOFTMAX),
        # clustering: k (the number of clusters) is searched over the spec's grid, by silhouette
        Algorithm("kmeans", "clustering", _clusters(K.KMeans), LINEAR_FEATURES, weights=False, score="cluster"),
        Algorithm("bisecting_kmeans", "clustering", _clusters(K.BisectingKMeans), LINEAR_FEATURES, weights=False,
                  score="cluster"),
        Algorithm("gmm", "clustering", _clusters(K.GaussianMixture), LINEAR_FEATURES, weights=False,
                  score="cluster"),
        Algorithm("als", "recommendation", _als, "", weights=False, score="prediction"),
    ]
}


def algorithm(spec: DatasetSpec, name: str) -> Algorithm:
    try:
        return REGISTRY[(spec.task, name)]
    except KeyError:
        known = sorted(n for t, n in REGISTRY if t == spec.task)
        raise SpecError(f"spec {spec.name}: algorithm {name!r} is not available for {spec.task}; "
                        f"one of {known}") from None


def _draw(rng: random.Random, dist: dict) -> Any:
    (kind, args), = dist.items()
    if kind == "uniform":
        return rng.uniform(*args)
    if kind == "log_uniform":
        return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    if kind == "int_uniform":
        return rng.randint(int(args[0]), int(args[1]))
    if kind == "choice":
        return rng.choice(list(args))
    raise ValueError(f"unknown distribution {kind!r}; one of uniform, log_uniform, int_uniform, choice")


def search_space(spec: DatasetSpec, name: str) -> list[dict[str, Any]]:
    """The parameter settings cross-validation tries: the grid's product, then `random.n` draws (seeded by the
    spec's training seed, so a rerun tries the same settings). Grid values fix the rest of each random draw."""
    entry = spec.algorithms.get(name) or {}
    grid = entry.get("grid") or {}
    combos = [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())] if grid else []
    rnd = dict(entry.get("random") or {})
    n = int(rnd.pop("n", 0))
    rng = random.Random(f"{spec.training.seed}:{spec.name}:{name}")
    base = combos[0] if combos else {}
    try:
        draws = [base | {p: _draw(rng, d) for p, d in rnd.items()} for _ in range(n)]
    except (ValueError, TypeError) as e:
        raise SpecError(f"spec {spec.name}: algorithms.{name}.random: {e}") from None
    return combos + draws or [{}]


def grid_edges(spec: DatasetSpec, name: str, best: dict[str, Any]) -> list[str]:
    """Where the best setting sits at the low or high end of a numeric grid of two or more values: the search may
    be cut short there, so the leaderboard says so."""
    out = []
    for param, values in ((spec.algorithms.get(name) or {}).get("grid") or {}).items():
        nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(nums) < 2 or param not in best:
            continue
        # a grid from 0 cannot go lower, nor one inside [0, 1] higher than 1 (shares, mixing weights)
        if best[param] == min(nums) and best[param] != 0:
            out.append(f"{param}={best[param]} is the lowest value tried; a lower one may do better")
        elif best[param] == max(nums) and not (min(nums) >= 0 and best[param] == 1):
            out.append(f"{param}={best[param]} is the highest value tried; a higher one may do better")
    return out


def edge_notes(results: dict) -> list[str]:
    """The leaderboard's notes on search spaces: each best setting at a grid's edge, and what was tried past it."""
    notes = []
    for n, r in sorted(results.items()):
        if isinstance(r, dict):
            notes += [f"Grid edge: {n}: {e}" for e in r.get("grid_edges", [])]
            if r.get("grid_extended"):
                notes.append(f"Grid extended: {n}: also tried {r['grid_extended']}; best {r['best_params']}")
    return notes


def beyond_edges(spec: DatasetSpec, name: str, best: dict[str, Any]) -> list[dict[str, Any]]:
    """For each numeric grid parameter whose best value is the grid's lowest or highest: the best setting with that
    parameter one step further out (training.extend_grid). A step keeps the grid's spacing: for fractional values
    a ratio where the two outermost are positive and at least 2x apart (regParam 0.01, 0.1 -> 0.001), otherwise
    a difference, as always for whole numbers (maxDepth 5, 8 -> 11). A step that would cross zero, or leave
    [0, 1] for a grid inside it (shares and mixing weights), is not taken."""
    out = []
    for param, values in ((spec.algorithms.get(name) or {}).get("grid") or {}).items():
        nums = sorted({v for v in values if isinstance(v, int | float) and not isinstance(v, bool)})
        if len(nums) < 2 or param not in best or best[param] not in (nums[0], nums[-1]):
            continue
        edge, inner = (nums[0], nums[1]) if best[param] == nums[0] else (nums[-1], nums[-2])
        whole = all(isinstance(v, int) for v in nums)
        if not whole and edge > 0 and inner > 0 and max(edge, inner) / min(edge, inner) >= 2:
            new = edge * edge / inner
        else:
            new = edge + (edge - inner)
        new = int(new) if whole else float(f"{new:.12g}")
        if (nums[0] >= 0 > new) or (nums[0] > 0 and new == 0) or (0 <= nums[0] and nums[-1] <= 1 < new):
            continue
        out.append(best | {param: new})
    return out


def param_maps(estimator, settings: list[dict[str, Any]], where: str) -> list[dict]:
    """Spec settings -> ParamMaps, naming the algorithm and parameter when one does not exist."""
    inner = estimator.getClassifier() if isinstance(estimator, C.OneVsRest) else None
    out = []
    for s in settings:
        pm = {}
        for k, v in s.items():
            owner = inner if inner is not None and inner.hasParam(k) else estimator
            if not owner.hasParam(k):
                raise SpecError(f"{where}: {type(owner).__name__} has no parameter {k!r}")
            p = owner.getParam(k)
            try:
                pm[p] = p.typeConverter(v)
            except TypeError as e:
                raise SpecError(f"{where}: {k}={v!r}: {e}") from None
        out.append(pm)
    return out
