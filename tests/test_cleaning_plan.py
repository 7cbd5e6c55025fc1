"""classify builds its column expressions once per (spec, serving, input columns) and reuses them: a scorer's
micro-batch or a REST request pays no expression building, and gets the same cleaning as a fresh build."""

import dataclasses
import gc
import weakref

import py4j.clientserver
import py4j.java_gateway
import pytest

from ml_platform.data import cleaning
from ml_platform.data.cleaning import REASON, classify
from ml_platform.spec import parse_spec


def _spec(**extra):
    return parse_spec({"name": "t", "task": "regression", "target": "y", "key": "k", "label_range": [0, 100],
                       "columns": [{"name": "k", "parse": "string"}, {"name": "x", "parse": "number"},
                                   {"name": "y", "parse": "number"}]} | extra, "t.yaml")


def _frame(spark, rows):
    return spark.createDataFrame(rows, schema="k string, x string, y string")


def _out(df):
    return df.schema.simpleString(), sorted(tuple(r) for r in df.collect())


@pytest.fixture
def py4j_calls(monkeypatch):
    """Counts the commands Python sends to the JVM (each is a round trip)."""
    calls = [0]
    for cls in (py4j.clientserver.ClientServerConnection, py4j.java_gateway.GatewayConnection):
        def counted(self, command, _orig=cls.send_command):
            calls[0] += 1
            return _orig(self, command)
        monkeypatch.setattr(cls, "send_command", counted)
    return calls


def test_a_second_frame_reuses_the_expressions_and_is_cleaned_by_its_own_data(spark):
    spec = _spec()
    first = classify(_frame(spark, [("1", "1,000", "5")]), spec)
    info = cleaning._plan.cache_info()
    second = classify(_frame(spark, [("2", "oops", "500"), ("3", "-2.5", "7")]), spec)
    after = cleaning._plan.cache_info()
    assert (after.hits, after.misses) == (info.hits + 1, info.misses)
    assert [(r["k"], r["x"], r["y"], r[REASON]) for r in first.collect()] == [("1", 1000.0, 5.0, None)]
    assert sorted((r["k"], r["x"], r["y"], r[REASON]) for r in second.collect()) == [
        ("2", None, 500.0, "y: 500 outside [0, 100]"), ("3", -2.5, 7.0, None)]
    # the cached expressions clean exactly as freshly built ones (an equal spec object is a new entry)
    fresh = classify(_frame(spark, [("2", "oops", "500"), ("3", "-2.5", "7")]), dataclasses.replace(spec))
    assert cleaning._plan.cache_info().misses == after.misses + 1
    assert _out(fresh) == _out(second)


def test_different_specs_serving_and_columns_get_their_own_entries(spark):
    rows = [("1", "50", "150")]
    wide, narrow = _spec(label_range=[0, 1000]), _spec(label_range=[0, 100])
    misses = cleaning._plan.cache_info().misses
    assert classify(_frame(spark, rows), wide).first()[REASON] is None
    assert classify(_frame(spark, rows), narrow).first()[REASON] == "y: 150 outside [0, 100]"
    assert classify(_frame(spark, rows), narrow, serving=True).first()[REASON] is None  # a request has no label
    extra = spark.createDataFrame([("1", "50", "150", "z")], schema="k string, x string, y string, note string")
    assert classify(extra, narrow).first()["__src_note"] == "z"
    assert cleaning._plan.cache_info().misses == misses + 4


def test_the_cache_holds_its_specs_and_stays_bounded(spark):
    spec = _spec()
    classify(_frame(spark, [("1", "1", "1")]), spec)
    ref = weakref.ref(spec)
    del spec
    gc.collect()
    assert ref() is not None  # kept alive by its entry: no other spec can get its id while the entry exists
    for _ in range(cleaning._plan.cache_info().maxsize + 3):  # expressions only, no DataFrame: cheap
        cleaning._plan(_spec(), False, ("k", "x", "y"))
    assert cleaning._plan.cache_info().size == cleaning._plan.cache_info().maxsize
    gc.collect()
    assert ref() is None  # evicted, least recently used first


def test_a_cached_used_cars_classify_costs_few_jvm_calls(spark, specs, py4j_calls):
    """The measured cost of issue 12: ~20k Py4J calls to build used_cars' expressions, per call."""
    spec = dataclasses.replace(specs["used_cars"])  # a new object: a cold entry
    df = spark.createDataFrame([tuple("" for _ in spec.column_names)],
                               schema=", ".join(f"`{c}` string" for c in spec.column_names))
    start = py4j_calls[0]
    classify(df, spec, serving=True)
    cold = py4j_calls[0] - start
    start = py4j_calls[0]
    classify(df, spec, serving=True)
    warm = py4j_calls[0] - start
    assert cold > 5000 and warm < cold / 10, (cold, warm)
