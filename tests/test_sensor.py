"""new_batch_sensor through Dagster: partitions and run requests for new files, quarantine for bad ones."""

import json

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetObservation,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
)

from resources import LocalStorage
from sensors import build_new_batch_sensor


def _tick(spec, store, instance, cursor=None, **kw):
    sensor = build_new_batch_sensor(spec, settle_seconds=0, **kw)
    resources = {"storage": LocalStorage(root=str(store.root))}
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    return sensor(ctx)


def test_new_files_become_partitions_and_runs(specs, store, landing, used_cars_csv):
    spec = specs["used_cars"]
    landing("batch-00001.csv", used_cars_csv)
    landing("lot 2 – März.csv", used_cars_csv)
    landing(".batch-00003.csv.tmp", used_cars_csv[:500])  # still being written
    with DagsterInstance.ephemeral() as instance:
        result = _tick(spec, store, instance)
        assert isinstance(result, SensorResult)
        keys = [r.partition_key for r in result.run_requests]
        assert keys[0] == "batch-00001" and keys[1].startswith("lot_2_") and len(keys) == 2
        assert result.dynamic_partitions_requests[0].partition_keys == keys
        assert {r.run_key for r in result.run_requests} == {f"used_cars:{k}" for k in keys}
        instance.add_dynamic_partitions("used_cars_batches", keys)
        again = _tick(spec, store, instance, cursor=result.cursor)
        assert isinstance(again.skip_reason, SkipReason)
        assert "1 still being written" in again.skip_reason.skip_message


def test_an_old_time_cursor_still_parses_and_names_decide(specs, store, landing, used_cars_csv):
    """A Dagster instance from before keeps a time cursor; a file it had passed by time but never ingested (moved
    in with an old mtime) is found by name, and a known one is not requested again."""
    spec = specs["used_cars"]
    landing("batch-00001.csv", used_cars_csv)
    landing("moved-in.csv", used_cars_csv)
    past = max(p.stat().st_mtime_ns for p in store.path("landing/used_cars").iterdir()) + 10**9
    old_cursor = json.dumps({"arrival_ns": past, "name": "batch-00009.csv"})
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("used_cars_batches", ["batch-00001"])
        result = _tick(spec, store, instance, cursor=old_cursor)
    assert [r.partition_key for r in result.run_requests] == ["moved-in"]
    assert json.loads(result.cursor)["seen_ns"] >= past


def test_rejected_files_are_quarantined_with_reason_and_reported(specs, store, landing, used_cars_csv):
    spec = specs["used_cars"]
    landing("empty.csv", b"")
    landing("garbage.csv", bytes(range(256)) * 4)
    landing("semi.csv", used_cars_csv.replace(",", ";", 200))
    landing("weird..name.csv", used_cars_csv)
    landing("good.csv", used_cars_csv)
    with DagsterInstance.ephemeral() as instance:
        result = _tick(spec, store, instance)
    assert [r.partition_key for r in result.run_requests] == ["good"]
    observed = {e.metadata["rejected_file"].value: e.metadata["reason"].value for e in result.asset_events
                if isinstance(e, AssetObservation)}
    # the batch accounting of the same tick: four quarantined with their reasons, one on its way
    [check] = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
    assert check.check_name == "every_batch_accounted" and check.passed
    assert check.metadata["batches_quarantined"].value == 4 and check.metadata["batches_waiting"].value == 1
    assert set(observed) == {"empty.csv", "garbage.csv", "semi.csv", "weird..name.csv"}
    qdir = store.path("quarantine/used_cars/files")
    for name, reason in observed.items():
        assert (qdir / name).exists(), name
        assert json.loads((qdir / f"{name}.reason.json").read_text())["reason"] == reason
    assert "empty file" in observed["empty.csv"] and "binary" in observed["garbage.csv"]
    assert "semicolon" in observed["semi.csv"]
    assert sorted(p.name for p in store.path("landing/used_cars").iterdir()) == ["good.csv"]


def test_a_known_batch_without_a_run_is_requested_again_after_a_grace(specs, store, landing, used_cars_csv):
    """A partition whose run never came (the daemon died between adding it and launching), or whose run died and
    was not retried: the sensor's accounting requests ingest and cleaning again, once the grace has passed."""
    spec = specs["used_cars"]
    landing("lost.csv", used_cars_csv)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("used_cars_batches", ["lost"])
        patient = _tick(spec, store, instance)  # default grace: the run may still be on its way
        assert isinstance(patient.skip_reason, SkipReason)
        result = _tick(spec, store, instance, grace_seconds=0)
        [req] = result.run_requests
        assert req.partition_key == "lost" and req.run_key == "used_cars:lost:raw_batches:attempt1"
        assert set(req.asset_selection) == {AssetKey(["used_cars", "raw_batches"]),
                                            AssetKey(["used_cars", "cleaned_features"])}
        assert req.tags["ml_platform/file"] == "lost.csv"
        [check] = [e for e in result.asset_events if isinstance(e, AssetCheckEvaluation)]
        assert check.passed and check.metadata["batches_waiting"].value == 1
        # an unchanged accounting is not recorded again on the next tick
        again = _tick(spec, store, instance, cursor=result.cursor, grace_seconds=0)
        assert not [e for e in again.asset_events if isinstance(e, AssetCheckEvaluation)]


def test_sensor_survives_a_missing_landing_zone(specs, store):
    with DagsterInstance.ephemeral() as instance:
        result = _tick(specs["fraud"], store, instance)
    assert isinstance(result.skip_reason, SkipReason)


def test_sensor_on_s3_requests_uploaded_batches_and_quarantines_bad_ones(specs, minio, used_cars_csv):
    """The same sensor over a store on S3 (MinIO): an uploaded batch becomes a run, an empty file is moved to
    quarantine with its reason, and an unreachable bucket fails the tick with the setting to fix."""
    import uuid

    import pytest

    from resources import S3Storage

    spec = specs["used_cars"]
    storage = S3Storage(root=f"s3://platform/sensor-{uuid.uuid4().hex[:8]}", endpoint_url=minio.endpoint)
    store = storage.store()
    store.write_text("landing/used_cars/batch-00001.csv", used_cars_csv)
    store.write_text("landing/used_cars/empty.csv", "")
    sensor = build_new_batch_sensor(spec, settle_seconds=0)
    with DagsterInstance.ephemeral() as instance:
        result = sensor(build_sensor_context(instance=instance, resources={"storage": storage}))
        assert [r.partition_key for r in result.run_requests] == ["batch-00001"]
        assert store.exists("quarantine/used_cars/files/empty.csv")
        assert not store.exists("landing/used_cars/empty.csv")
        missing = S3Storage(root="s3://no-such-bucket/x", endpoint_url=minio.endpoint)
        with pytest.raises(Exception, match="bucket 'no-such-bucket' does not exist"):
            sensor(build_sensor_context(instance=instance, resources={"storage": missing}))
