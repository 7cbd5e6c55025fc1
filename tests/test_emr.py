"""The EMR backend against an emulation: moto's EMR API for the cluster lifecycle and steps, MinIO for the store
and the Pipes messages, and tests/emr_emulator.py running each step's spark-submit for real under pyspark 3.5.6
(the Spark of emr-7.13.0)."""

import json
import uuid

import pytest
from conftest import ROOT
from dagster import AssetKey, DagsterEventType, DagsterInstance, materialize

from assets import build_dataset_assets
from ml_platform.data.landing import partition_key
from ml_platform.jobs import run_job
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.stores import LocalStore
from resources import EmrSparkResource, S3Storage


@pytest.fixture(scope="module")
def emr(minio):
    from emr_emulator import EmrNodes
    from services import MotoServer

    server = MotoServer()
    nodes = EmrNodes(minio.client(), minio.endpoint)
    nodes.start()
    minio.client().upload_file(str(ROOT / "ml_platform" / "emr_job.py"), "platform", "code/emr_job.py")
    yield server, nodes
    nodes.stop()
    server.stop()


@pytest.fixture
def platform(emr, minio, specs, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", minio.endpoint)  # boto3's own variable: Pipes messages on MinIO
    server, nodes = emr
    spec = specs["used_cars"]
    storage = S3Storage(root=f"s3://platform/emr-{uuid.uuid4().hex[:8]}", endpoint_url=minio.endpoint)

    def resources(**overrides):
        spark = EmrSparkResource(**{
            "storage": storage, "endpoint_url": server.endpoint, "entry_point": "s3://platform/code/emr_job.py",
            "pipes_bucket": "platform", "log_uri": "s3://platform/emr-logs/", "spark_scheme": "s3a",
            "python": str(ROOT / ".venv-emr" / "bin" / "python"), "poll_seconds": 0.5, **overrides})
        return {"spark": spark, "storage": storage}

    def land(batch: int, text: str | None = None) -> str:
        csv = write_batch(SimConfig(spec.name, rows_per_batch=150, seed=3), batch, tmp_path, None)
        storage.store().write_text(f"landing/{spec.name}/{csv.name}", text if text is not None else csv.read_text())
        return partition_key(csv.name)

    return spec, storage, resources, land, nodes


def _emr_client(emr):
    import boto3

    return boto3.client("emr", region_name="us-east-1", endpoint_url=emr[0].endpoint)


def test_cleaning_runs_as_emr_steps(platform, emr, spark, tmp_path):
    spec, storage, resources, land, nodes = platform
    key = land(1)
    before = len(nodes.ran)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:2], partition_key=key, instance=instance,
                             resources=resources())
        assert result.success
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    # two transient clusters, one step each, both run for real and ended the way EMR ends them
    ran = nodes.ran[before:]
    assert [r["rc"] for r in ran] == [0, 0]
    assert all("--deploy-mode" in r["args"] and r["args"][-1] == "s3://platform/code/emr_job.py" for r in ran)
    client = _emr_client(emr)
    for r in ran:
        cluster = client.describe_cluster(ClusterId=r["cluster"])["Cluster"]
        assert cluster["Status"]["State"] == "TERMINATED" and cluster["ReleaseLabel"] == "emr-7.13.0"
        tags = {t["Key"] for t in cluster["Tags"]}
        assert "ml-platform:job" in tags and any(t.startswith("dagster/") for t in tags), tags
    # the job ran the same ml_platform code under the EMR release's Spark, and said so through Pipes
    assert any("on Spark 3.5.6" in m for m in logs), logs[-10:]
    cleaned = [m for m in result.get_asset_materialization_events()
               if m.asset_key == AssetKey([spec.name, "cleaned_features"])][0]
    emr_meta = {k: v.value for k, v in cleaned.materialization.metadata.items()}
    assert emr_meta["cleaned_rows"] > 100
    # the same batch cleaned by the platform's own Spark (4.2) gives the same rows: no skew between the two
    local = LocalStore(tmp_path / "local")
    local.write_text(f"landing/{spec.name}/{key}.csv", storage.store().read_text(f"landing/{spec.name}/{key}.csv"))
    run_job("ingest", spark, local, spec, {"partition": key})
    mine = run_job("clean", spark, local, spec, {"partition": key})
    assert (mine["cleaned"], mine["quarantined"]) == (emr_meta["cleaned_rows"], emr_meta["quarantined_rows"])
    assert storage.store().exists(f"silver/{spec.name}/rows/_delta_log/00000000000000000000.json")
    # step logs are where EMR puts them
    s3 = storage.store().client
    assert s3.list_objects_v2(Bucket="platform", Prefix=f"emr-logs/{ran[0]['cluster']}/steps/")["KeyCount"] >= 2


def test_rejected_batch_on_emr_fails_with_the_reason(platform):
    spec, storage, resources, land, nodes = platform
    header = ",".join(spec.column_names)
    key = land(2, header + "\n")
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(), raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE][0]
    assert "rejected: header only" in failure.event_specific_data.error.message


def test_failed_step_fails_the_asset_and_names_the_step(platform, minio):
    spec, storage, resources, land, nodes = platform
    minio.client().put_object(Bucket="platform", Key="code/broken.py", Body=b"raise SystemExit(3)\n")
    key = land(3)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(entry_point="s3://platform/code/broken.py"), raise_on_error=False)
    assert not result.success
    message = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE][0] \
        .event_specific_data.error.message
    assert "TERMINATED_WITH_ERRORS" in message and "FAILED" in message and "exited 3" in message


def test_dry_run_prints_the_exact_request_and_submits_nothing(platform, emr, capsys, minio):
    spec, storage, resources, land, nodes = platform
    key = land(4)
    client = _emr_client(emr)
    clusters_before = len(client.list_clusters()["Clusters"])
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(dry_run=True), raise_on_error=False)
    assert not result.success
    out = capsys.readouterr().out
    request = json.loads(out.split("--- emr.run_job_flow (dry run: not submitted)\n", 1)[1].split("\n---")[0]
                         .rsplit("\n}", 1)[0] + "\n}")
    assert request["ReleaseLabel"] == "emr-7.13.0" and request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False
    assert request["Steps"][0]["HadoopJarStep"]["Args"][:3] == ["spark-submit", "--deploy-mode", "cluster"]
    env = [c for c in request["Configurations"] if c["Classification"] == "spark-env"][0]
    assert "DAGSTER_PIPES_CONTEXT" in env["Configurations"][0]["Properties"]
    assert minio.secret_key not in out and "AWS_SECRET_ACCESS_KEY" not in out
    assert len(client.list_clusters()["Clusters"]) == clusters_before


def test_serverless_dry_run_prints_start_job_run(platform, capsys):
    spec, storage, resources, land, nodes = platform
    key = land(5)
    app = {"mode": "serverless", "application_id": "00abc123", "dry_run": True,
           "execution_role_arn": "arn:aws:iam::123456789012:role/ml-platform-emr-serverless"}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(**app), raise_on_error=False)
    assert not result.success
    out = capsys.readouterr().out
    assert "--- emr-serverless.start_job_run (dry run: not submitted)" in out
    assert '"entryPoint": "s3://platform/code/emr_job.py"' in out and '"applicationId": "00abc123"' in out
    assert "spark.emr-serverless.driverEnv.DAGSTER_PIPES_CONTEXT=" in out


def _on_emr_spark(script: str) -> dict:
    """Run `script` under pyspark 3.5.6 (emr-7.13.0's Spark) with EMR's Delta (3.3, from .jars/emr-node) and the
    platform's Delta settings, as emr_job.session builds them; returns the JSON its last line prints."""
    import os
    import subprocess

    prelude = f"""
import glob, json, sys
from pyspark.sql import SparkSession
from ml_platform.spark import delta_conf
b = (SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false")
     .config("spark.sql.shuffle.partitions", "2").config("spark.driver.host", "127.0.0.1")
     .config("spark.jars", ",".join(glob.glob("{ROOT}/.jars/emr-node/delta-*.jar"))))
for k, v in delta_conf(2).items():
    b = b.config(k, v)
spark = b.getOrCreate()
"""
    python = str(ROOT / ".venv-emr" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "SPARK_HOME"} | {
        "PYTHONPATH": str(ROOT), "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
    r = subprocess.run([python, "-c", prelude + script], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # pyspark 3.5.6 in a subprocess: no service fixture, but a JVM
@pytest.mark.scenario  # 2-4 minutes: `make test-scenarios`, not CI
def test_data_layers_run_on_the_spark_of_emr(tmp_path):
    """Ingest → clean → training set → feature pipeline under pyspark 3.5.6 (emr-7.13.0's Spark), with only what
    the bootstrap installs for those layers (no MLflow, no xgboost)."""
    out = _on_emr_spark(f"""
from pathlib import Path
from ml_platform.jobs import run_job
from ml_platform.data.landing import partition_key
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.spec import builtin_specs
from ml_platform.stores import LocalStore
import pyspark
store, spec = LocalStore("{tmp_path}/data"), builtin_specs()["used_cars"]
for b in (1, 2):
    p = write_batch(SimConfig("used_cars", rows_per_batch=300, seed=3), b, Path("{tmp_path}/data/landing/used_cars"),
                    None)
    k = partition_key(p.name)
    run_job("ingest", spark, store, spec, {{"partition": k}})
    run_job("clean", spark, store, spec, {{"partition": k}})
t = run_job("training_set", spark, store, spec, {{"version": "v1"}})
f = run_job("feature_pipeline", spark, store, spec, {{"version": "v1"}})
print(json.dumps({{"spark": pyspark.__version__, "rows": t["rows"], "stages": len(f["stages"]),
                  "mlflow": "mlflow" in sys.modules}}))
""")
    assert out["spark"] == "3.5.6" and out["rows"] > 500 and out["stages"] > 3 and out["mlflow"] is False


@pytest.mark.slow
def test_delta_tables_are_shared_with_the_delta_of_emr(spark, specs, tmp_path):
    """The platform's Delta (4.4 on Spark 4.2) and EMR's (3.3 on Spark 3.5.6) write and read the same tables: batch 1
    cleaned here, batch 2 MERGEd there into the table written here, and the training set EMR built read back here.
    The pinned protocol (reader 1, writer 4: the change feed, no deletion vectors) is what makes that work."""
    from ml_platform import lake
    from ml_platform.data.layers import clean_stored_batch, ingest_batch

    spec, store = specs["used_cars"], LocalStore(tmp_path / "data")
    keys = [partition_key(write_batch(SimConfig(spec.name, rows_per_batch=120, seed=5), b,
                                      store.path(f"landing/{spec.name}"), None).name) for b in (1, 2)]
    ingest_batch(spark, store, spec, keys[0])
    clean_stored_batch(spark, store, spec, keys[0])
    silver = store.uri(f"silver/{spec.name}/rows")
    log = (store.path(f"silver/{spec.name}/rows/_delta_log") / "00000000000000000000.json").read_text()
    protocol = [json.loads(line)["protocol"] for line in log.splitlines() if '"protocol"' in line][0]
    assert (protocol["minReaderVersion"], protocol["minWriterVersion"]) == (1, 4), protocol
    out = _on_emr_spark(f"""
from ml_platform import lake
from ml_platform.jobs import run_job
from ml_platform.spec import builtin_specs
from ml_platform.stores import LocalStore
import pyspark
store, spec = LocalStore("{tmp_path}/data"), builtin_specs()["used_cars"]
seen = lake.read(spark, "{silver}").count()
run_job("ingest", spark, store, spec, {{"partition": "{keys[1]}"}})
c = run_job("clean", spark, store, spec, {{"partition": "{keys[1]}"}})
t = run_job("training_set", spark, store, spec, {{"version": "emr"}})
print(json.dumps({{"spark": pyspark.__version__, "seen": seen, "accepted": c["accepted"], "rows": t["rows"],
                  "silver": t["delta_versions"]["silver"]}}))
""")
    assert out["spark"] == "3.5.6" and out["accepted"] and out["seen"] > 100
    # read back here: both batches in silver, at the version EMR's training set recorded, and EMR's gold table
    both = lake.read(spark, silver, out["silver"]).groupBy(lake.BATCH).count().collect()
    assert sorted(r[lake.BATCH] for r in both) == sorted(keys)
    train = lake.read(spark, store.uri(f"gold/{spec.name}/emr/train")).count()
    holdout = lake.read(spark, store.uri(f"gold/{spec.name}/emr/holdout")).count()
    assert train + holdout == out["rows"] > 200
    # and the history EMR's commits wrote carries the same notes
    assert lake.history(spark, silver)[0]["note"]["batch"] == keys[1]


def test_unreachable_emr_api_names_the_setting(platform):
    spec, storage, resources, land, nodes = platform
    key = land(6)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(endpoint_url="http://127.0.0.1:9"), raise_on_error=False)
    message = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE][0] \
        .event_specific_data.error.message
    assert "cannot reach the EMR API" in message and "ML_PLATFORM_EMR_ENDPOINT" in message


def test_spark_storage_failures_are_named():
    from ml_platform.spark import storage_hint

    err = RuntimeError("java.nio.file.AccessDeniedException: s3a://b/x: org.apache.hadoop.fs.s3a.auth."
                       "NoAuthWithAWSException: No AWS Credentials provided by ...")
    assert "AWS_ACCESS_KEY_ID" in storage_hint(err)
    assert "ML_PLATFORM_DATA" in storage_hint(RuntimeError("...NoSuchBucket: The specified bucket does not exist"))
    assert storage_hint(RuntimeError("ArithmeticException: / by zero")) is None


def test_serverless_job_runs_through_pipes(platform, emr):
    import boto3

    spec, storage, resources, land, nodes = platform
    client = boto3.client("emr-serverless", region_name="us-east-1", endpoint_url=emr[0].endpoint)
    app = client.create_application(name="ml-platform", releaseLabel="emr-7.13.0", type="SPARK")["applicationId"]
    key = land(7)
    before = len(nodes.ran)
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        result = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                             resources=resources(mode="serverless", application_id=app,
                                                 execution_role_arn="arn:aws:iam::123456789012:role/x"))
    assert result.success
    assert [r["rc"] for r in nodes.ran[before:]] == [0] and "job_run" in nodes.ran[before]
    runs = client.list_job_runs(applicationId=app)["jobRuns"]
    assert [r["state"] for r in runs] == ["SUCCESS"]
    raw = result.get_asset_materialization_events()[0].materialization.metadata
    assert raw["rows"].value >= 150
