"""The bronze and silver stores on HDFS: a real namenode and datanode (MiniDFSCluster) on loopback; Spark reads and
writes hdfs:// through its own Hadoop client, the platform's file operations go through WebHDFS."""

import getpass

from dagster import AssetKey, DagsterInstance, materialize
from pyspark.sql import functions as F

from assets import build_dataset_assets
from ml_platform import lake
from ml_platform.data.landing import partition_key
from ml_platform.local.simulate import SimConfig, write_batch
from resources import HdfsStorage, LocalSparkResource


def test_cleaning_runs_on_hdfs(spark, hdfs, specs, tmp_path):
    spec = specs["used_cars"]
    # the same user on both paths: Spark's HDFS client is this OS user, WebHDFS is told it
    storage = HdfsStorage(root=f"{hdfs.root}/platform", http_port=hdfs.http_port, user=getpass.getuser())
    store = storage.store()
    csv = write_batch(SimConfig(spec.name, rows_per_batch=200, seed=9), 1, tmp_path, None)
    store.write_text(f"landing/{spec.name}/{csv.name}", csv.read_text())
    key = partition_key(csv.name)
    resources = {"spark": LocalSparkResource(storage=storage, threads="2", shuffle_partitions=2), "storage": storage}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:2], partition_key=key, instance=instance,
                             resources=resources)
    assert result.success
    def meta(layer):
        return {k: v.value for m in result.get_asset_materialization_events()
                if m.asset_key == AssetKey([spec.name, layer]) for k, v in m.materialization.metadata.items()}

    meta, raw = meta("cleaned_features"), meta("raw_batches")
    assert meta["cleaned_rows"] > 150 and meta["path"].startswith(f"{hdfs.root}/platform/silver/")
    rows = lake.read(spark, store.uri(f"silver/{spec.name}/rows")).where(F.col(lake.BATCH) == key).count()
    assert rows == meta["cleaned_rows"]
    assert store.read_json(f"bronze/{spec.name}/_batches/{key}.json")["rows"] == raw["rows"] >= 200


def test_a_file_renamed_into_landing_with_an_old_mtime_is_found(hdfs, specs, tmp_path):
    """On HDFS a rename keeps the modification time. A batch written to a staging folder, then moved into the
    landing zone after the sensor has handled a newer file, is older than the cursor and still found, by name."""
    import time

    from dagster import build_sensor_context

    from ml_platform.data.landing import Cursor
    from ml_platform.layout import landing_dir
    from sensors import build_new_batch_sensor

    spec = specs["used_cars"]
    storage = HdfsStorage(root=f"{hdfs.root}/renames", http_port=hdfs.http_port, user=getpass.getuser())
    store = storage.store()
    csv = write_batch(SimConfig(spec.name, rows_per_batch=20, seed=4), 1, tmp_path, None).read_text()
    landing = landing_dir(spec)
    store.write_text(f"staging/{spec.name}/moved-late.csv", csv)
    time.sleep(0.05)  # HDFS times are in milliseconds: the second file must be strictly newer
    store.write_text(f"{landing}/written-later.csv", csv)
    sensor = build_new_batch_sensor(spec, settle_seconds=0)

    def tick(instance, cursor):
        return sensor(build_sensor_context(instance=instance, cursor=cursor, resources={"storage": storage}))

    with DagsterInstance.ephemeral() as instance:
        first = tick(instance, None)
        assert [r.partition_key for r in first.run_requests] == ["written-later"]
        instance.add_dynamic_partitions(f"{spec.name}_batches", ["written-later"])
        store.move(f"staging/{spec.name}/moved-late.csv", f"{landing}/moved-late.csv")
        moved = next(f for f in store.list_files(landing) if f.name == "moved-late.csv")
        # the test means something only if the rename kept a time the cursor has already passed: a time cursor
        # ((mtime, name) <= (last arrival, last name) is skipped) would never see this file
        assert moved.mtime_ns < Cursor.parse(first.cursor).seen_ns
        second = tick(instance, first.cursor)
        assert [r.partition_key for r in second.run_requests] == ["moved-late"]
        instance.add_dynamic_partitions(f"{spec.name}_batches", ["moved-late"])
        third = tick(instance, second.cursor)
        assert third.skip_reason is not None and not third.run_requests
