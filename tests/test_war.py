"""The weighted average regressor: beats the mean, survives save -> load in a new process inside a Pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import VectorAssembler

from ml_platform.train.war import ConvergenceError, WeightedAverageRegressor

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def frame(spark):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 4))
    y = 20_000 + 6_000 * x[:, 0] - 3_000 * x[:, 1] + 2_500 * x[:, 0] * x[:, 1] + rng.normal(size=600) * 800
    rows = [(*map(float, r), float(t)) for r, t in zip(x, y, strict=True)]
    return spark.createDataFrame(rows, ["a", "b", "c", "d", "label"])


def _rmse(df):
    return df.selectExpr("sqrt(avg(pow(label - prediction, 2))) AS r").first()["r"]


def test_beats_the_mean_and_interactions_help(frame):
    std = frame.selectExpr("stddev_pop(label) AS s").first()["s"]
    asm = VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="features")
    plain = Pipeline(stages=[asm, WeightedAverageRegressor(regParam=0.1)]).fit(frame)
    inter = Pipeline(stages=[asm, WeightedAverageRegressor(regParam=0.1, interactions=True,
                                                           minInteractionCorr=0.1)]).fit(frame)
    rmse_plain, rmse_inter = _rmse(plain.transform(frame)), _rmse(inter.transform(frame))
    # the seed's version predicted within a few dollars of the mean: RMSE == std
    assert rmse_plain < 0.6 * std
    assert inter.stages[-1].getOrDefault("pairs")[:2] == [0, 1]
    assert rmse_inter < rmse_plain


def test_round_trip_in_a_new_process(frame, tmp_path):
    asm = VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="features")
    model = Pipeline(stages=[asm, WeightedAverageRegressor(interactions=True, minInteractionCorr=0.1)]).fit(frame)
    path = str(tmp_path / "war_pipeline")
    model.write().overwrite().save(path)
    expected = [r["prediction"] for r in model.transform(frame).orderBy("a").limit(20).collect()]
    data = str(tmp_path / "rows.parquet")
    frame.write.parquet(data)
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from ml_platform.spark import local_session
from pyspark.ml import PipelineModel
spark = local_session("war-reload", threads=1)
m = PipelineModel.load({path!r})
print("STAGE", type(m.stages[-1]).__module__, type(m.stages[-1]).__name__)
rows = m.transform(spark.read.parquet({data!r})).orderBy("a").limit(20).collect()
print("PRED", json.dumps([r["prediction"] for r in rows]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if ln.startswith(("STAGE", "PRED")))
    assert lines["STAGE"] == "ml_platform.train.war WeightedAverageRegressionModel"
    assert json.loads(lines["PRED"]) == pytest.approx(expected, rel=1e-9)


def test_reg_param_shrinks_the_coefficients_toward_the_mean(frame):
    """Ridge on the fitted scale: every coefficient shrinks by the same factor, which falls as regParam grows;
    regParam=0 is the least-squares scale (regressing the label on the prediction gives slope 1)."""
    asm = VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="features")
    data = asm.transform(frame)
    models = {reg: WeightedAverageRegressor(regParam=reg).fit(data) for reg in (0.0, 0.3, 3.0)}
    coefs = {reg: np.array(m.getOrDefault("coefficients")) for reg, m in models.items()}
    ratios = [float(coefs[reg] @ coefs[0.0] / (coefs[0.0] @ coefs[0.0])) for reg in (0.3, 3.0)]
    for reg, ratio in zip((0.3, 3.0), ratios, strict=True):
        np.testing.assert_allclose(coefs[reg], ratio * coefs[0.0], rtol=1e-9)  # same direction, shorter
    assert 1.0 > ratios[0] > ratios[1] > 0.0
    assert ratios[0] < 0.95  # a real shrink, not a rounding difference
    fitted = {reg: m.transform(data) for reg, m in models.items()}
    slope = fitted[0.0].selectExpr("covar_pop(label, prediction) / var_pop(prediction) AS s").first()["s"]
    assert slope == pytest.approx(1.0, abs=1e-9)
    assert _rmse(fitted[0.0]) < _rmse(fitted[0.3]) < _rmse(fitted[3.0])  # on training rows, shrinking costs fit


def test_one_feature_reg_param_divides_the_least_squares_slope(spark):
    df = spark.createDataFrame([(float(x), 3.0 * x + (x % 3) * 0.5) for x in range(12)], ["a", "label"])
    df = VectorAssembler(inputCols=["a"], outputCol="features").transform(df)
    ols = df.selectExpr("covar_pop(a, label) / var_pop(a) AS s").first()["s"]
    for reg in (0.0, 1.0, 4.0):
        coef = WeightedAverageRegressor(regParam=reg).fit(df).getOrDefault("coefficients")
        assert coef == pytest.approx([ols / (1.0 + reg)], rel=1e-9)


def test_negative_reg_param_is_a_clear_error(frame):
    data = VectorAssembler(inputCols=["a"], outputCol="features").transform(frame)
    with pytest.raises(ValueError, match="regParam must be >= 0"):
        WeightedAverageRegressor(regParam=-1.0).fit(data)


def test_constant_target_is_a_clear_error(spark):
    df = spark.createDataFrame([(float(i), 5.0) for i in range(10)], ["a", "label"])
    df = VectorAssembler(inputCols=["a"], outputCol="features").transform(df)
    with pytest.raises(ConvergenceError, match="constant"):
        WeightedAverageRegressor().fit(df)
