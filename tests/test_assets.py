"""raw_batches -> cleaned_features through Dagster's materialize(), on tiny data, for good and bad batches."""

import pytest
from dagster import DagsterInstance, materialize

from assets import build_dataset_assets
from ml_platform import lake
from resources import LocalSparkResource, LocalStorage


@pytest.fixture
def run(spark, specs, store):
    spec = specs["used_cars"]
    assets = build_dataset_assets(spec)
    storage = LocalStorage(root=str(store.root))
    resources = {"spark": LocalSparkResource(storage=storage, threads="2", shuffle_partitions=2), "storage": storage}
    instance = DagsterInstance.ephemeral()

    def go(key: str, layers=("raw", "cleaned"), tags=None):
        instance.add_dynamic_partitions("used_cars_batches", [key])
        chosen = [a for a, name in zip(assets[:2], ("raw", "cleaned"), strict=True) if name in layers]
        return materialize(chosen, partition_key=key, instance=instance, resources=resources,
                           raise_on_error=False, tags=tags)

    yield go
    instance.dispose()


def _metadata(result, layer):
    mats = [m for m in result.asset_materializations_for_node(f"used_cars__{layer}")]
    return {k: v.value for k, v in mats[0].metadata.items()}


def _checks(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _silver_batches(spark, store) -> dict[str, int]:
    rows = lake.read(spark, store.uri("silver/used_cars/rows")).groupBy(lake.BATCH).count().collect()
    return {r[lake.BATCH]: r["count"] for r in rows}


def test_good_batch_flows_and_relanding_adds_nothing(run, landing, store, used_cars_csv, spark):
    landing("batch-00001.csv", used_cars_csv)
    r = run("batch-00001")
    assert r.success
    raw, cleaned = _metadata(r, "raw_batches"), _metadata(r, "cleaned_features")
    assert raw["rows"] >= 400 and raw["malformed_rows"] > 0 and len(raw["sha256"]) == 64
    assert cleaned["cleaned_rows"] + cleaned["quarantined_rows"] + cleaned["duplicates_removed"] == raw["rows"]
    assert "malformed CSV row" in cleaned["quarantine_reasons"]  # reasons are listed with their row counts
    checks = _checks(r)
    assert checks["raw_rows"] and checks["quarantine_share"] and checks["cleaned_schema"] and checks["label_range"]
    assert checks["all_null_columns"] is False  # the real data set never fills three columns; a warning
    assert _silver_batches(spark, store) == {"batch-00001": cleaned["cleaned_rows"]}
    # the cleaning job, not the asset, decided and committed the acceptance with the rows; the asset reports it
    note = lake.history(spark, store.uri("silver/used_cars/rows"))[0]["note"]
    assert note["batch"] == "batch-00001" and note["accepted"] is True and note["why"] == []
    assert cleaned["accepted_for_training"] is True and cleaned["not_accepted_because"] == ""
    assert store.path("silver/used_cars/_accepted/batch-00001.json").exists()

    landing("batch-00001-again.csv", used_cars_csv)  # same bytes, new name
    r2 = run("batch-00001-again")
    assert r2.success
    assert _metadata(r2, "raw_batches")["duplicate_of"] == "batch-00001"
    assert _metadata(r2, "cleaned_features")["cleaned_rows"] == 0
    assert _silver_batches(spark, store) == {"batch-00001": cleaned["cleaned_rows"]}
    # the same partition materialized again commits nothing to either table
    versions = [lake.version(spark, store.uri(f"{t}/used_cars/rows")) for t in ("bronze", "silver")]
    assert run("batch-00001").success
    assert [lake.version(spark, store.uri(f"{t}/used_cars/rows")) for t in ("bronze", "silver")] == versions


def test_bad_batches_fail_clearly_and_leave_earlier_partitions_alone(run, landing, store, used_cars_csv, specs, spark):
    landing("batch-00001.csv", used_cars_csv)
    assert run("batch-00001").success
    silver = store.uri("silver/used_cars/rows")
    before = (lake.version(spark, silver), _silver_batches(spark, store))

    header, _, body = used_cars_csv.partition("\n")
    landing("notarget.csv", header.replace("price", "cost") + "\n" + body)
    r = run("notarget")
    assert not r.success
    failure = [e for e in r.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "missing target column ['price']" in failure.event_specific_data.error_display_string or \
        "missing target column ['price']" in str(failure.event_specific_data)

    cols = header.split(",")
    year = cols.index("year")
    broken = "\n".join([header] + [",".join(line.split(",")[:-1] + ["abc"]) for line in
                                   used_cars_csv.splitlines()[1:] if line.count(",") == len(cols) - 1])
    landing("wrongtype.csv", broken + "\n")
    r = run("wrongtype")
    checks = _checks(r)
    assert year == len(cols) - 1 and checks["quarantine_share"] is False and checks["cleaned_rows"] is False
    refused = _metadata(r, "cleaned_features")
    assert refused["accepted_for_training"] is False and "quarantine_share" in refused["not_accepted_because"]
    assert not store.path("silver/used_cars/_accepted/wrongtype.json").exists()

    assert (lake.version(spark, silver), _silver_batches(spark, store)) == before  # a refused batch commits nothing


def test_truncated_file_and_shifted_columns(run, landing, store, used_cars_csv):
    cut = used_cars_csv[: len(used_cars_csv) * 2 // 3]
    cut = cut[: cut.rfind("\n") + 40]  # ends mid-row
    landing("truncated.csv", cut)
    r = run("truncated")
    assert r.success
    raw = _metadata(r, "raw_batches")
    assert raw["malformed_rows"] >= 1 and raw["rows"] > 200

    header, _, body = used_cars_csv.partition("\n")
    cols = header.split(",")
    reordered = ["surprise"] + [c for c in cols if c != "bed"]
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(used_cars_csv)))[:50]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=reordered, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(row | {"surprise": "x,y"})
    landing("reordered.csv", out.getvalue())
    r = run("reordered")
    assert r.success
    raw = _metadata(r, "raw_batches")
    assert raw["missing_columns"] == ["bed"] and raw["extra_columns"] == ["surprise"]
    assert _checks(r)["raw_columns"] is False  # a warning, not a block
    assert _metadata(r, "cleaned_features")["cleaned_rows"] > 0


def test_ingest_takes_the_file_the_sensor_named(run, landing, used_cars_csv):
    # two landed files share a partition key: the landing zone alone cannot say which one the batch is
    landing("batch-00007.csv", used_cars_csv)
    landing("batch-00007", "year,price\n2001,100\n")
    by_hand = run("batch-00007", layers=("raw",))
    assert not by_hand.success
    failure = [e for e in by_hand.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "several landed files map to partition key 'batch-00007'" in str(failure.event_specific_data)
    named = run("batch-00007", layers=("raw",), tags={"ml_platform/file": "batch-00007.csv"})
    assert named.success
    raw = _metadata(named, "raw_batches")
    assert raw["source_file"] == "batch-00007.csv" and raw["rows"] >= 400
    wrong = run("batch-00007", layers=("raw",), tags={"ml_platform/file": "batch-00008.csv"})
    assert not wrong.success
    failure = [e for e in wrong.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "belongs to partition 'batch-00008', not 'batch-00007'" in str(failure.event_specific_data)
