"""The weighted average regressor: a correlation-weighted linear score on standardized features, as a real Spark ML
Estimator/Model that saves inside a PipelineModel and reloads in another process.

Fit, all in distributed aggregates (one Summarizer pass, one Pearson matrix; nothing is collected but statistics):
- standardize each feature (z = (x - mean) / std, population std); a constant feature gets weight 0;
- optionally add pairwise products z_i * z_j among the features most correlated with the target;
- weight each term by its signed squared Pearson correlation with the target: w = sign(r) r^2 (the direction);
- score s = sum(w * z) has mean 0, so the bias is the target mean; the output scale b is fitted by ridge least
  squares on the standardized target t = (y - mean_y) / std_y, penalizing the final standardized coefficients
  beta = b w:  min_b mean((t - b s)^2) + regParam * |b w|^2  =>  b = (w . r) / (w' R w + regParam |w|^2),
  read off the same correlation matrix R. This is ridge regression restricted to the direction w, so regParam is
  unitless: for a single feature it divides the least-squares coefficient by (1 + regParam); 0 is plain least
  squares. The seed shrank w itself, which the fitted scale undid exactly: regParam changed nothing.

The seed version stopped at the weights: its predictions moved a few dollars around the mean. The fitted scale is
what makes it beat the mean baseline.
"""

from __future__ import annotations

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasLabelCol, HasPredictionCol, HasRegParam
from pyspark.ml.stat import Correlation, Summarizer
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import functions as F


class ConvergenceError(RuntimeError):
    """A fit that cannot produce a usable model (constant target, no usable feature)."""


class _WarParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasRegParam):
    interactions = Param(Params._dummy(), "interactions", "add pairwise products of strongly correlated features",
                         typeConverter=TypeConverters.toBoolean)
    maxInteractionFeatures = Param(Params._dummy(), "maxInteractionFeatures",
                                   "how many of the most target-correlated features form pairs",
                                   typeConverter=TypeConverters.toInt)
    minInteractionCorr = Param(Params._dummy(), "minInteractionCorr",
                               "a feature joins a pair only if |corr with target| is at least this",
                               typeConverter=TypeConverters.toFloat)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(regParam=0.1, interactions=False, maxInteractionFeatures=6, minInteractionCorr=0.2,
                         featuresCol="features", labelCol="label", predictionCol="prediction")


class WeightedAverageRegressor(Estimator, _WarParams, DefaultParamsReadable, DefaultParamsWritable):
    @keyword_only
    def __init__(self, *, featuresCol="features", labelCol="label", predictionCol="prediction", regParam=0.1,
                 interactions=False, maxInteractionFeatures=6, minInteractionCorr=0.2):
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, featuresCol="features", labelCol="label", predictionCol="prediction", regParam=0.1,
                  interactions=False, maxInteractionFeatures=6, minInteractionCorr=0.2):
        return self._set(**self._input_kwargs)

    def _fit(self, dataset):
        fcol, lcol, reg = self.getFeaturesCol(), self.getLabelCol(), self.getRegParam()
        if not reg >= 0:
            raise ValueError(f"weighted_average: regParam must be >= 0, got {reg}")
        df = dataset.select(F.col(fcol).alias("f"), F.col(lcol).cast("double").alias("y")).where(F.col("y").isNotNull())
        stats = df.select(Summarizer.metrics("mean", "std", "count").summary(F.col("f")).alias("s"),
                          F.avg("y").alias("ym"), F.stddev_pop("y").alias("ys")).first()
        n = int(stats["s"]["count"])
        if n < 2:
            raise ConvergenceError(f"weighted_average: {n} labelled rows, need at least 2")
        mean = stats["s"]["mean"].toArray()
        # Summarizer's std divides by n - 1; the population std makes regParam=0 the exact least-squares fit
        std = stats["s"]["std"].toArray() * np.sqrt((n - 1) / n)
        y_mean, y_std = float(stats["ym"]), float(stats["ys"] or 0.0)
        if not y_std > 0:
            raise ConvergenceError(f"weighted_average: the target '{lcol}' is constant ({y_mean}); nothing to learn")
        safe_std = np.where(std > 0, std, 1.0)
        # Pearson correlation ignores each feature's shift and scale: no standardizing pass is needed for it
        r = _corr_with_target(df.select(F.col("f").alias("z"), "y"), len(mean))
        r_target = np.where(std > 0, np.nan_to_num(r[:-1, -1]), 0.0)
        r_feat = np.nan_to_num(r[:-1, :-1])
        pairs: list[int] = []
        if self.getOrDefault(self.interactions):
            pairs = _strong_pairs(r_target, self.getOrDefault(self.maxInteractionFeatures),
                                  self.getOrDefault(self.minInteractionCorr))
        p_mean, p_std = np.zeros(0), np.zeros(0)
        if pairs:
            # the products' own statistics come from one more pass over the expanded design
            arrays = df.select(vector_to_array(F.col("f")).alias("a"), "y")
            expanded = arrays.select(_expanded(F.col("a"), mean, safe_std, pairs).alias("z"), "y")
            r = _corr_with_target(expanded, len(mean) + len(pairs) // 2)
            r_target = np.concatenate([r_target, np.nan_to_num(r[len(mean):-1, -1])])
            r_feat = np.nan_to_num(r[:-1, :-1])
            pstats = expanded.select(Summarizer.metrics("mean", "std").summary(F.col("z")).alias("s")).first()["s"]
            p_mean = pstats["mean"].toArray()[len(mean):]
            p_std = pstats["std"].toArray()[len(mean):] * np.sqrt((n - 1) / n)
        w = np.sign(r_target) * r_target ** 2
        spread = float(w @ r_feat @ w)
        if not np.any(w) or not spread > 0:
            raise ConvergenceError("weighted_average: no feature correlates with the target; every weight is 0")
        # the penalty is on b * w, not on w: a shrunk w alone is undone by the fitted scale
        scale = y_std * float(w @ r_target) / (spread + reg * float(w @ w))
        # fold standardization, weights and scale into coefficients on the raw features (and the products)
        coef = scale * w[: len(mean)] / safe_std
        p_safe = np.where(p_std > 0, p_std, 1.0)
        p_coef = scale * w[len(mean):] / p_safe
        intercept = y_mean - float(coef @ mean) - float(p_coef @ p_mean)
        model = WeightedAverageRegressionModel(
            coefficients=[float(c) for c in coef], intercept=intercept, means=[float(m) for m in mean],
            stds=[float(s) for s in safe_std], pairs=pairs, pairCoefficients=[float(c) for c in p_coef],
            outputScale=scale, weights=[float(x) for x in w])
        return self._copyValues(model)


class WeightedAverageRegressionModel(Model, _WarParams, DefaultParamsReadable, DefaultParamsWritable):
    coefficients = Param(Params._dummy(), "coefficients", "per-feature coefficients on raw features",
                         typeConverter=TypeConverters.toListFloat)
    intercept = Param(Params._dummy(), "intercept", "intercept", typeConverter=TypeConverters.toFloat)
    means = Param(Params._dummy(), "means", "feature means", typeConverter=TypeConverters.toListFloat)
    stds = Param(Params._dummy(), "stds", "feature standard deviations", typeConverter=TypeConverters.toListFloat)
    pairs = Param(Params._dummy(), "pairs", "interaction pairs, flattened (i0, j0, i1, j1, ...)",
                  typeConverter=TypeConverters.toListInt)
    pairCoefficients = Param(Params._dummy(), "pairCoefficients", "coefficients on z_i * z_j",
                             typeConverter=TypeConverters.toListFloat)
    outputScale = Param(Params._dummy(), "outputScale", "ridge-fitted slope of the target on the weighted score",
                        typeConverter=TypeConverters.toFloat)
    weights = Param(Params._dummy(), "weights", "signed squared correlations with the target",
                    typeConverter=TypeConverters.toListFloat)

    @keyword_only
    def __init__(self, *, coefficients=None, intercept=0.0, means=None, stds=None, pairs=None, pairCoefficients=None,
                 outputScale=1.0, weights=None):
        super().__init__()
        self._setDefault(coefficients=[], intercept=0.0, means=[], stds=[], pairs=[], pairCoefficients=[],
                         outputScale=1.0, weights=[])
        self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def _transform(self, dataset):
        tmp = f"__war_{self.uid}"
        dataset = dataset.withColumn(tmp, vector_to_array(F.col(self.getFeaturesCol())))
        arr = F.col(tmp)  # converted once per row, not once per use
        coef = self.getOrDefault(self.coefficients)
        linear = F.aggregate(F.zip_with(arr, F.array(*[F.lit(c) for c in coef]), lambda x, c: x * c),
                             F.lit(0.0), lambda acc, v: acc + v)
        pred = F.lit(self.getOrDefault(self.intercept)) + linear
        means, stds, pairs = self.getOrDefault(self.means), self.getOrDefault(self.stds), self.getOrDefault(self.pairs)
        for k, c in enumerate(self.getOrDefault(self.pairCoefficients)):
            i, j = pairs[2 * k], pairs[2 * k + 1]
            pred = pred + F.lit(c) * ((arr[i] - means[i]) / stds[i]) * ((arr[j] - means[j]) / stds[j])
        return dataset.withColumn(self.getPredictionCol(), pred).drop(tmp)

    @property
    def numFeatures(self) -> int:
        return len(self.getOrDefault(self.coefficients))


def _expanded(arr, mean, std, pairs: list[int]):
    """[x..., z_i * z_j for each pair] as a vector; `arr` must be a column reference, not a conversion."""
    z = [(arr[i] - float(mean[i])) / float(std[i]) for i in range(len(mean))]
    terms = [z[pairs[2 * k]] * z[pairs[2 * k + 1]] for k in range(len(pairs) // 2)]
    return array_to_vector(F.array(*[arr[i] for i in range(len(mean))], *terms))


def _corr_with_target(df, d: int) -> np.ndarray:
    """Pearson matrix of [features..., target], computed by Spark; (d+1) x (d+1) numbers reach the driver."""
    from pyspark.ml.feature import VectorAssembler

    joined = VectorAssembler(inputCols=["z", "y"], outputCol="zy", handleInvalid="skip").transform(df)
    m = Correlation.corr(joined, "zy").first()[0].toArray()
    if m.shape != (d + 1, d + 1):
        raise ConvergenceError(f"weighted_average: correlation matrix has shape {m.shape}, expected {(d + 1, d + 1)}")
    return m


def _strong_pairs(r_target: np.ndarray, top: int, min_corr: float) -> list[int]:
    strong = [int(i) for i in np.argsort(-np.abs(r_target))[:top] if abs(r_target[i]) >= min_corr]
    return [x for a, i in enumerate(strong) for j in strong[a + 1:] for x in (i, j)]

