"""The bronze and silver stores on HDFS: a real namenode and datanode (MiniDFSCluster) on loopback; Spark reads and
writes hdfs:// through its own Hadoop client, the platform's file operations go through WebHDFS."""

import getpass

from dagster import AssetKey, DagsterInstance, materialize

from assets import build_dataset_assets
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
    resources = {"spark": LocalSparkResource(threads="2", shuffle_partitions=2), "storage": storage}
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
    rows = spark.read.parquet(store.uri(f"silver/{spec.name}/batch={key}")).count()
    assert rows == meta["cleaned_rows"]
    assert store.read_json(f"bronze/{spec.name}/_batches/{key}.json")["rows"] == raw["rows"] >= 200
