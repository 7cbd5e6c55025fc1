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


def _base(**extra) -> dict:
    return {"name": "t", "task": "classification", "target": "y", "key": "k", "columns": [
        {"name": "k", "parse": "string"}, {"name": "x", "parse": "number"}, {"name": "y", "parse": "category"}],
        "positive": "bad"} | extra


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(bogus=1), "spec t.yaml: the top level has unknown field 'bogus'; allowed: name, task,"),
    (lambda d: d["columns"][1].update(rnage=[0, 1]), r"columns\[1\] has unknown field 'rnage'; allowed: name, parse,"),
    (lambda d: d.update(derived=[{"name": "d", "rule": "per_year", "from": ["x", "x"], "form": 1}]),
     r"derived\[0\] has unknown field 'form'; allowed: name, rule, from"),
    (lambda d: d.update(checks={"max_quarantine_shares": 0.1}),
     "checks has unknown field 'max_quarantine_shares'; allowed: max_null_rate, max_quarantine_share"),
    (lambda d: d.update(training={"fold": 3}), "training has unknown field 'fold'; allowed: window, holdout, folds"),
    (lambda d: d.update(serving={"poll": 1}), "serving has unknown field 'poll'; allowed: window_seconds,"),
    (lambda d: d.update(key=""), "key is empty; .*position: .*key: null"),
    (lambda d: d.update(key="ghost"), r"key 'ghost' is not among the columns; declared: \['k', 'x', 'y'\]"),
    (lambda d: d["columns"].append({"name": "", "parse": "drop"}), "name must be a non-empty text.*position: 0"),
    (lambda d: d["columns"].append({"name": "i", "parse": "drop", "position": -1}), "position must be a column"),
    (lambda d: d.pop("positive"), "target 'y' has parse 'category'; a classification target needs parse bool or "
                                  "number or give 'positive: <label>'"),
    (lambda d: d.update(classes=["a", "b"]), "either positive .* or classes"),
    (lambda d: d.pop("positive") and d.update(classes=["a", "b", "c"]), "for more classes use task: multiclass"),
    (lambda d: d.pop("positive") and d.update(classes=["a", "a"]), "classes lists a label twice"),
    (lambda d: d.pop("positive") and d.update(task="multiclass", classes=["a", "b"]),
     "needs three or more classes.*task: classification"),
    (lambda d: d.update(task="multiclass"), "positive is for binary classification"),
    (lambda d: d.pop("positive") and d.update(task="multiclass"), "a multiclass spec lists its classes"),
    (lambda d: d.pop("positive") and d.update(task="clustering"), "a clustering spec has no target"),
    (lambda d: d.pop("positive") and d.pop("target") and d.update(task="clustering", training={"exclude": ["x"]}),
     r"clustering needs numeric features .* categorical \['y'\], excluded \['x'\]"),
    (lambda d: d.pop("positive") and d["columns"][1].update(parse="string") or d.update(
        task="recommendation", target="x", key=None, recommend={"user": "k", "item": "y"}),
     "target 'x' has parse 'string'; a recommendation target needs parse number"),
    (lambda d: d.pop("positive") and d.update(task="recommendation", target="x"), "needs recommend: {user"),
    (lambda d: d.pop("positive") and d.update(task="recommendation", target="x", key=None, recommend={"user": "k"}),
     "needs recommend: {user"),
    (lambda d: d.pop("positive") and d.update(task="recommendation", target="x", key=None,
                                              recommend={"user": "k", "item": "k"}),
     "recommend.user and recommend.item are the same column"),
    (lambda d: d.pop("positive") and d.update(task="recommendation", target="x", key=None,
                                              recommend={"user": "k", "item": "y", "top_n": 0}),
     r"recommend.top_n must be a whole number in \[1, 1000\]"),
    (lambda d: d.update(recommend={"user": "k", "item": "x"}), "recommend is for task recommendation"),
    (lambda d: d.pop("positive") and d.update(task="recommendation", target="x", key=None,
                                              recommend={"user": "k", "item": "y"}, algorithms={"gbt": {}}),
     "algorithms.gbt does not fit task 'recommendation'; 'gbt' is a regression and classification and multiclass "
     "algorithm; a recommendation spec may use als"),
    (lambda d: d.pop("positive") and d.pop("target") and d.update(task="clustering", algorithms={"logistic": {}}),
     "algorithms.logistic does not fit task 'clustering'; 'logistic' is a classification and multiclass algorithm; "
     "a clustering spec may use kmeans, bisecting_kmeans, gmm"),
    (lambda d: d.update(positive=True), "True is not a label; quote labels as they appear in the file"),
    (lambda d: d.update(label_range=[0, 1]), "label_range is for numeric labels"),
    (lambda d: d.update(task="regression"), "positive / classes are for classification targets"),
    (lambda d: d.update(name="my data"), "name must be letters, digits and _"),
    (lambda d: d.update(algorithms={"glm": {}}), "algorithms.glm does not fit task 'classification'; 'glm' is a "
                                                 "regression algorithm; a classification spec may use logistic"),
    (lambda d: d.update(algorithms={"logistic": {}, "als": {}}), "algorithms.als does not fit task 'classification'; "
                                                                 "'als' is a recommendation algorithm"),
])
def test_spec_errors_name_file_field_and_allowed_values(mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(SpecError, match=message):
        parse_spec(data, "t.yaml")


def test_text_labels_positions_and_unlabelled_parse():
    s = parse_spec(_base(columns=[{"position": 0, "name": "row_index", "parse": "drop"}] + _base()["columns"],
                         unlabelled=["?", 0]), "t.yaml")
    assert (s.positive, s.classes, s.text_labels, s.label_range) == ("bad", (), True, (0.0, 1.0))
    assert s.column("row_index").position == 0 and "row_index" not in s.cleaned_columns
    assert s.unlabelled == ("?", "0")  # text labels compare as text
    two = parse_spec({k: v for k, v in _base(classes=["good", 1]).items() if k != "positive"}, "t.yaml")
    assert two.classes == ("good", "1") and two.positive is None
    cars = parse_spec(_base(task="regression", target="x", positive=None, unlabelled=[0, "99,999,999"]), "t.yaml")
    assert cars.unlabelled == (0.0, 99999999.0) and not cars.text_labels
    with pytest.raises(SpecError, match=r"unlabelled\[0\]: 'none' is not a number"):
        parse_spec(_base(task="regression", target="x", positive=None, unlabelled=["none"]), "t.yaml")


def test_shipped_used_cars_marks_price_sentinels_unlabelled(specs):
    assert specs["used_cars"].unlabelled == (0.0, 99999999.0)


def test_empty_header_cells_take_the_name_declared_by_position():
    from ml_platform.data.ingest import check_header

    spec = parse_spec(_base(columns=[{"position": 0, "name": "row_index", "parse": "string"}]
                            + _base()["columns"]), "t.yaml")
    head = b",k,x,,y\n0,a,1,zz,good\n"
    h = check_header(head, spec, len(head))
    assert h.columns == ["row_index", "k", "x", "_c3", "y"]
    assert h.extra == ["_c3"] and h.missing == []


def test_quarantine_message_names_dominant_reasons_and_unlabelled_are_not_nulls(specs):
    from ml_platform.data.checks import cleaned_checks, expected_schema

    spec = specs["used_cars"]
    s = {"duplicate_of": None, "rows_in": 100, "cleaned": 50, "quarantined": 50, "unlabelled": 10,
         "target_min": 600.0, "target_max": 9e4, "null_rate": {c: 0.0 for c in spec.cleaned_columns} | {"price": 0.2},
         "all_null_columns": [], "schema": expected_schema(spec),
         "top_reasons": {"year: missing or invalid value 'unknown'": 30, "price: 1 outside [500, 2e+06]": 5},
         "quarantined_by_field": {"year": 30, "price": 20}}
    out = {o.name: o for o in cleaned_checks(spec, s)}
    q = out["quarantine_share"]
    assert not q.passed and "mostly year (30 rows, e.g. \"year: missing or invalid value 'unknown'\"), " \
                             "price (20 rows, e.g. 'price: 1 outside [500, 2e+06]')" in q.description
    assert "10 unlabelled" in out["cleaned_rows"].description
    # the 10 null prices of unlabelled rows are kept on purpose; only other null prices count against the 0.0 limit
    assert out["null_rates"].passed
    worse = {o.name: o for o in cleaned_checks(spec, s | {"null_rate": s["null_rate"] | {"price": 0.3}})}
    assert not worse["null_rates"].passed and "'price': 0.1" in worse["null_rates"].description


def test_label_value_matches_cleaning_rules(specs):
    cars, fraud = specs["used_cars"], specs["fraud"]
    assert [cars.label_value(v) for v in ("23,450", "0", "99999999", "1", "", "call")] == [23450.0] + [None] * 5
    assert [fraud.label_value(v) for v in ("'1'", '"0"', "2", None)] == [1.0, 0.0, None, None]
    two = parse_spec({k: v for k, v in _base(classes=["good", "bad"], unlabelled=["?"]).items() if k != "positive"})
    assert [two.label_value(v) for v in (" bad ", "good", "meh", "?")] == [1.0, 0.0, None, None]
    assert [parse_spec(_base()).label_value(v) for v in ("bad", "meh", "NA")] == [1.0, 0.0, None]


def test_the_spec_names_exactly_the_algorithms_training_implements():
    from ml_platform.spec import ALGORITHMS
    from ml_platform.train.algorithms import REGISTRY

    assert {(t, n) for t, names in ALGORITHMS.items() for n in names} == set(REGISTRY)


def test_new_task_kinds_parse():
    from ml_platform.spec import RecommendSpec

    data = _base(task="multiclass", classes=["a", "b", "c"])
    data.pop("positive")
    mc = parse_spec(data, "t.yaml")
    assert mc.classes == ("a", "b", "c") and mc.label_range == (0.0, 2.0) and mc.supervised
    assert [mc.label_value(v) for v in ("a", "c", "zzz", "")] == [0.0, 2.0, None, None]
    data = _base(task="clustering")
    data.pop("positive"), data.pop("target")
    cl = parse_spec(data, "t.yaml")
    assert cl.target is None and not cl.supervised and cl.label_value("a") is None
    assert cl.feature_columns() == (["x"], ["y"]) and cl.required_columns == ["k"]
    data = _base(task="recommendation", target="x", key=None, recommend={"user": "k", "item": "y", "implicit": True})
    data.pop("positive")
    rec = parse_spec(data, "t.yaml")
    assert rec.recommend == RecommendSpec(user="k", item="y", implicit=True, top_n=10, eval_k=10)
    assert rec.feature_columns() == ([], [])  # the user and item are ALS's inputs, not features


def test_raw_label_is_what_cleaning_reads_back_and_refuses_what_it_would_not(specs):
    used, fraud, tickets = specs["used_cars"], specs["fraud"], specs["tickets"]
    for spec, value, text in ((used, 12345.0, "12345"), (used, 1234.5, "1234.5"), (fraud, 1, "1"),
                              (tickets, 2, tickets.classes[2]), (specs["movie_ratings"], 4.5, "4.5")):
        assert spec.raw_label(value) == text and spec.label_value(text) == float(value)
    for spec, value, why in ((used, -5, "outside label_range"), (fraud, 0.5, "not 0 or 1"),
                             (tickets, 9, "not a class index"), (specs["customers"], 1, "no target")):
        with pytest.raises(ValueError, match=why):
            spec.raw_label(value)


def test_grid_edge_notes_and_steps_stop_at_a_parameters_natural_bounds(specs):
    from ml_platform.train.algorithms import beyond_edges, grid_edges
    from tests.training_data import small

    spec = small(specs["used_cars"], algorithms={"linear": {"grid": {"regParam": [0.01, 0.1],
                                                                     "elasticNetParam": [0.0, 0.5, 1.0]}}})
    at_zero = {"regParam": 0.01, "elasticNetParam": 0.0}
    assert grid_edges(spec, "linear", at_zero) == [
        "regParam=0.01 is the lowest value tried; a lower one may do better"]  # elasticNetParam 0 cannot go lower
    assert beyond_edges(spec, "linear", at_zero) == [{"regParam": 0.001, "elasticNetParam": 0.0}]
    at_one = {"regParam": 0.1, "elasticNetParam": 1.0}
    assert grid_edges(spec, "linear", at_one) == [
        "regParam=0.1 is the highest value tried; a higher one may do better"]  # nor a mixing weight past 1
    assert beyond_edges(spec, "linear", at_one) == [{"regParam": 1.0, "elasticNetParam": 1.0}]
