"""The Delta tables of every layer (ml_platform/lake.py, data/silver.py, data/maintenance.py): one commit per batch,
exactly-once writes, keys deduplicated across batches with a change feed, schema evolution and refusal, concurrent
writers, maintenance that keeps what registered models need, and a training set rebuilt by time travel."""

import threading

import pytest
from pyspark.sql import functions as F

from ml_platform import lake
from ml_platform.data.layers import clean_stored_batch, ingest_batch
from ml_platform.data.maintenance import maintain
from ml_platform.data.silver import accept_rows
from ml_platform.layout import silver_table
from ml_platform.spec import parse_spec
from ml_platform.stores import LocalStore

CARS = {"name": "cars", "task": "regression", "target": "price", "key": "id", "newest_by": "listed",
        "columns": [{"name": "id", "parse": "string"}, {"name": "listed", "parse": "date", "format": "yyyy-MM-dd"},
                    {"name": "miles", "parse": "number"}, {"name": "price", "parse": "number"}],
        "training": {"folds": 2}}


def _land(store, spec, key: str, rows: list[str], header: str = "id,listed,miles,price") -> str:
    store.write_text(f"landing/{spec.name}/{key}.csv", "\n".join([header, *rows]) + "\n")
    return key


def _silver(spark, store, spec, version=None):
    df = lake.read(spark, store.uri(silver_table(spec)), version)
    return {r["id"]: (str(r["listed"]), r["price"], r[lake.BATCH]) for r in df.collect() if r["id"]}


@pytest.fixture
def cars(tmp_path):
    return parse_spec(CARS), LocalStore(tmp_path / "data")


def _batch(spark, store, spec, key, rows, **kw):
    ingest_batch(spark, store, spec, _land(store, spec, key, rows, **kw))
    return clean_stored_batch(spark, store, spec, key)


def test_silver_keeps_the_newest_row_per_key_and_the_change_feed_keeps_the_rest(spark, cars):
    spec, store = cars
    _batch(spark, store, spec, "b1", ["a,2026-01-05,10,100", "b,2026-01-05,20,200", ",2026-01-05,1,5"])
    v1 = lake.version(spark, store.uri(silver_table(spec)))
    # b2 relists a later (wins), re-sends b with an older listing date (loses), and another keyless row
    _batch(spark, store, spec, "b2", ["a,2026-02-01,11,150", "b,2025-12-01,21,999", ",2026-02-01,2,6"])
    now = _silver(spark, store, spec)
    assert now["a"] == ("2026-02-01", 150.0, "b2") and now["b"] == ("2026-01-05", 200.0, "b1")
    keyless = lake.read(spark, store.uri(silver_table(spec))).where(F.col("id").isNull()).count()
    assert keyless == 2  # rows without a key are never versions of each other
    # what was replaced is in the change feed; the version before is still readable as it was
    feed = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", v1 + 1)
            .load(store.uri(silver_table(spec))).where(F.col("id") == "a").collect())
    assert {(r["_change_type"], r["price"]) for r in feed} == {("update_preimage", 100.0), ("update_postimage", 150.0)}
    assert _silver(spark, store, spec, v1)["a"] == ("2026-01-05", 100.0, "b1")


def test_writes_are_exactly_once(spark, cars):
    spec, store = cars
    rows = ["a,2026-01-05,10,100", ",2026-01-05,1,5"]
    _batch(spark, store, spec, "b1", rows)
    tables = [store.uri(f"{layer}/cars/rows") for layer in ("bronze", "silver")]
    before = [lake.version(spark, t) for t in tables]
    # the same partition again: nothing is committed anywhere
    assert ingest_batch(spark, store, spec, "b1")["unchanged"] is True
    assert clean_stored_batch(spark, store, spec, "b1")["unchanged"] is True
    assert [lake.version(spark, t) for t in tables] == before
    # the same file landed twice under another name: a duplicate, no rows
    dup = ingest_batch(spark, store, spec, _land(store, spec, "b1-again", rows))
    assert dup["duplicate_of"] == "b1" and dup["rows"] == 0
    assert clean_stored_batch(spark, store, spec, "b1-again")["cleaned"] == 0
    assert lake.read(spark, tables[1]).count() == 2
    # a re-clean after a spec change MERGEs again, and the keyless row is matched, not added twice
    changed = parse_spec(CARS | {"label_range": [0, 10000]})
    again = clean_stored_batch(spark, store, changed, "b1")
    assert "unchanged" not in again and lake.read(spark, tables[1]).count() == 2


def test_a_failed_write_leaves_the_table_as_it_was(spark, cars):
    spec, store = cars
    _batch(spark, store, spec, "b1", ["a,2026-01-05,10,100"])
    uri = store.uri(silver_table(spec))
    before = (lake.version(spark, uri), _silver(spark, store, spec))
    rows = spark.range(200).select(F.col("id").cast("string").alias("id"), F.lit(None).cast("date").alias("listed"),
                                   F.lit(1.0).alias("miles"), F.lit(1.0).alias("price"))
    boom = rows.withColumn("price", F.when(F.col("id") == "150", F.raise_error(F.lit("disk gone")))
                           .otherwise(F.col("price")).cast("double"))
    with pytest.raises(Exception, match="disk gone"):
        accept_rows(spark, store, spec, "b2", boom.repartition(4), "2026-03-01T00:00:00")
    assert (lake.version(spark, uri), _silver(spark, store, spec)) == before


def test_an_added_column_evolves_and_a_changed_type_is_refused(spark, cars):
    spec, store = cars
    _batch(spark, store, spec, "b1", ["a,2026-01-05,10,100"])
    uri = store.uri(silver_table(spec))
    v1 = lake.version(spark, uri)
    wider = parse_spec(CARS | {"columns": CARS["columns"] + [{"name": "doors", "parse": "number"}]})
    _batch(spark, store, wider, "b2", ["c,2026-01-06,5,50,4"], header="id,listed,miles,price,doors")
    now = lake.read(spark, uri)
    assert "doors" in now.columns and now.where(F.col("id") == "c").first()["doors"] == 4.0
    assert now.where(F.col("id") == "a").first()["doors"] is None
    assert "doors" not in lake.read(spark, uri, v1).columns  # earlier versions read as they were
    retyped = parse_spec(CARS | {"columns": [c if c["name"] != "miles" else {"name": "miles", "parse": "string"}
                                             for c in CARS["columns"]]})
    with pytest.raises(lake.SchemaChange, match="miles: double in the table, string now"):
        _batch(spark, store, retyped, "b3", ["d,2026-01-07,7,70"])
    assert lake.read(spark, uri).where(F.col("id") == "d").count() == 0


def test_concurrent_writers_of_different_batches_both_commit(spark, cars):
    spec, store = cars
    _batch(spark, store, spec, "b0", ["z,2026-01-01,1,1"])
    for key, ids in (("b1", "abc"), ("b2", "def")):
        _land(store, spec, key, [f"{i},2026-01-0{n + 2},{n},{10 * n + 10}" for n, i in enumerate(ids)])
    errors = []

    def run(key):
        try:
            ingest_batch(spark, store, spec, key)
            clean_stored_batch(spark, store, spec, key)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("b1", "b2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(_silver(spark, store, spec)) == list("abcdefz")
    bronze = lake.read(spark, store.uri("bronze/cars/rows")).groupBy(lake.BATCH).count().collect()
    assert {r[lake.BATCH]: r["count"] for r in bronze} == {"b0": 1, "b1": 3, "b2": 3}


def test_maintenance_keeps_the_versions_registered_models_need(spark, cars):
    spec, store = cars
    _batch(spark, store, spec, "b1", ["a,2026-01-05,10,100", "b,2026-01-05,20,200"])
    uri = store.uri(silver_table(spec))
    pinned = lake.version(spark, uri)
    _batch(spark, store, spec, "b2", ["a,2026-02-01,11,150"])  # rewrites the file holding a's first row
    out = maintain(spark, store, spec, retention_hours=0, pinned_silver=[pinned], log=lambda s: None,
                   tables=("silver",))
    assert out["tables"]["silver"]["oldest_pinned_version"] == pinned
    assert out["tables"]["silver"]["retained_hours"] >= 1  # the pin lengthened a retention of 0
    assert _silver(spark, store, spec, pinned)["a"][1] == 100.0  # time travel to the pinned version still reads
    # unpinned, a retention of 0 does remove what only that old version used: the guarantee is the pin
    maintain(spark, store, spec, retention_hours=0, pinned_silver=[], log=lambda s: None, tables=("silver",))
    with pytest.raises(Exception):  # noqa: B017 - Spark raises its own file-not-found error class
        lake.read(spark, uri, pinned).collect()
    assert _silver(spark, store, spec)["a"][1] == 150.0


def test_a_training_set_rebuilt_by_time_travel_trains_to_the_same_metrics(spark, specs, tmp_path):
    """`ml-platform reproduce`'s work: after more batches changed silver, the training set of an earlier version is
    read back at the silver version it recorded, and deterministic learners reach the same holdout metrics."""
    from ml_platform.train.kinds import kind
    from ml_platform.train.reproduce import reproduce_training
    from ml_platform.train.training_set import build_training_set
    from tests.training_data import SMALL, land_batches, small

    spec = small(specs["used_cars"], algorithms={k: SMALL[k] for k in ("linear", "gbt")}, folds=2)
    store = LocalStore(tmp_path / "data")
    land_batches(spark, store, spec, [1, 2], rows=100)
    first = build_training_set(spark, store, spec, "v1")
    k = kind(spec)
    k.features(spark, store, spec, "v1")
    results = k.train(spark, store, spec, "v1", list(spec.algorithms), 2, log=lambda s: None)
    k.select(spark, store, spec, "v1", results)
    land_batches(spark, store, spec, [3], rows=100)  # silver moves on
    out = reproduce_training(spark, store, spec, "v1", log=lambda s: None)
    assert out["silver_version"] == first["delta_versions"]["silver"] and out["same_rows"], out
    assert set(out["models"]) == {"linear", "gbt"} and all(m["rmse"] for m in out["models"].values()), out
    assert out["served"] and out["served_model"][0] == out["served_model"][1], out
    assert out["max_abs_diff"] <= 1e-9, out
    assert build_training_set(spark, store, spec, "latest")["rows"] > first["rows"]  # the data did change


def test_a_commit_that_loses_a_race_is_retried_and_other_errors_are_not(monkeypatch):
    monkeypatch.setattr(lake.time, "sleep", lambda s: None)
    calls, lines = [], []

    def racing():
        calls.append(1)
        if len(calls) < 3:  # how py4j surfaces Delta's conflict: the Java class name in the message
            raise RuntimeError("io.delta.exceptions.ConcurrentAppendException: Files were added to the root of the "
                               "table by a concurrent update")
        return "committed"

    assert lake.retrying(racing, log=lines.append) == "committed" and len(calls) == 3 and len(lines) == 2

    def broken():
        raise ValueError("DELTA_FAILED_TO_MERGE_FIELDS")

    with pytest.raises(ValueError):
        lake.retrying(broken)
