import pytest

from ml_platform.spec import SpecError, parse_spec


def test_builtin_specs(specs):
    cars, fraud = specs["used_cars"], specs["fraud"]
    assert len(cars.columns) == 66
    assert (cars.task, cars.target, cars.key) == ("regression", "price", "listing_id")
    assert {"power_hp", "power_rpm", "torque_lbft", "torque_rpm", "age", "miles_per_year"} <= set(cars.cleaned_columns)
    assert "description" not in cars.cleaned_columns
    assert fraud.column_names == ["Time", *[f"V{i}" for i in range(1, 29)], "Amount", "Class"]
    assert fraud.task == "classification" and fraud.key is None
    assert {"gbt", "random_forest", "linear", "xgboost", "weighted_average"} <= set(cars.algorithms)
    assert {"logistic", "linear_svc", "random_forest", "gbt", "xgboost", "naive_bayes"} <= set(fraud.algorithms)
    numeric, categorical = cars.feature_columns()
    assert "price" not in numeric and "listing_id" not in numeric + categorical and "make_name" in categorical
    assert "is_new" in numeric and "combine_fuel_economy" not in numeric  # booleans count; excluded ones do not
    assert cars.training.log_target and fraud.training.thresholds == {"min_roc_auc": 0.7}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("target"), "missing 'target'"),
    (lambda d: d.update(target="nope"), "target 'nope' is not among the columns"),
    (lambda d: d["columns"].append({"name": "x", "parse": "guess"}), r"columns\[2\] \(x\): unknown parse rule"),
    (lambda d: d["columns"].append({"name": "y", "parse": "unit"}), "parse 'unit' needs 'unit'"),
    (lambda d: d.update(task="ranking"), "task must be one of"),
    (lambda d: d.update(checks={"max_null_rate": {"ghost": 0.1}}), "unknown columns"),
])
def test_bad_spec_names_the_field(mutate, message):
    data = {"name": "t", "task": "regression", "target": "y", "columns": [
        {"name": "k", "parse": "string"}, {"name": "y", "parse": "number"}]}
    mutate(data)
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "t.yaml")
