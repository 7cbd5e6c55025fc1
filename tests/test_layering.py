"""The domain core stays free of Dagster; the composition root resolves every job."""

import subprocess
import sys

from conftest import ROOT


def test_ml_platform_does_not_import_dagster():
    code = ("import sys, ml_platform.spec, ml_platform.cleaning, ml_platform.layers, ml_platform.landing, "
            "ml_platform.simulate, ml_platform.stack, ml_platform.cli\n"
            "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
            "assert not bad, bad\nprint('clean')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "clean" in r.stdout


def test_mlflow_spark_works_where_main_has_no_file():
    """Dagster's run workers start with a __main__ that has no __file__; pyspark.ml.connect (imported by
    mlflow.spark.save_model) then exits the process unless its gRPC extras are installed."""
    code = ("import sys\n"
            "import pyspark.ml.connect, mlflow.spark\nprint('imported')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]


def test_definitions_load_and_resolve():
    from dagster import AssetKey, DefaultSensorStatus

    import definitions

    defs = definitions.defs
    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        assert job.name
    keys = {k for a in repo.assets_defs_by_key.values() for k in a.keys}
    for ds in ("used_cars", "fraud"):
        assert AssetKey([ds, "raw_batches"]) in keys
        assert AssetKey([ds, "cleaned_features"]) in keys
        sensor = repo.get_sensor_def(f"{ds}_new_batch_sensor")
        assert sensor.default_status == DefaultSensorStatus.RUNNING
    auto = repo.get_sensor_def("automation_sensor")
    assert auto.default_status == DefaultSensorStatus.RUNNING
    cleaned = repo.assets_defs_by_key[AssetKey(["used_cars", "cleaned_features"])]
    assert cleaned.automation_conditions_by_key[AssetKey(["used_cars", "cleaned_features"])] is not None


def test_unknown_environment_is_a_clear_error():
    import pytest

    from resources import Settings, resources_for

    with pytest.raises(ValueError, match="ML_PLATFORM_ENV='emr2'"):
        resources_for("emr2", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="SPARK_MASTER_URL"):
        resources_for("cluster", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="ML_PLATFORM_ENV=emr needs ML_PLATFORM_DATA=s3://"):
        resources_for("emr", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="ML_PLATFORM_EMR_ENTRY_POINT and ML_PLATFORM_EMR_PIPES_BUCKET"):
        resources_for("emr", Settings(data_root="s3://bucket/platform"))
    with pytest.raises(ValueError, match="ML_PLATFORM_DATA='gs://b/x'"):
        resources_for("local", Settings(data_root="gs://b/x"))


def test_the_store_follows_the_data_root_and_spark_gets_what_it_needs():
    from resources import EmrSparkResource, HdfsStorage, S3Storage, Settings, resources_for

    r = resources_for("local", Settings(data_root="s3://bucket/platform", s3_endpoint="http://127.0.0.1:9000"))
    assert isinstance(r["storage"], S3Storage) and r["spark"].jar_groups == ["spark", "aws"]
    conf = r["spark"].spark_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert not any("secret" in k.lower() or "access.key" in k.lower() for k in conf), "credentials in Spark conf"
    r = resources_for("cluster", Settings(data_root="hdfs://nn:8020/platform", spark_master_url="spark://m:7077"))
    assert isinstance(r["storage"], HdfsStorage) and r["spark"].jar_groups == ["spark"]
    r = resources_for("emr", Settings(data_root="s3://b/p", emr={"entry_point": "s3://b/code/emr_job.py",
                                                                  "pipes_bucket": "b", "core_instances": 3}))
    assert isinstance(r["spark"], EmrSparkResource)
    assert r["spark"].job_flow_params("clean", "used_cars")["Instances"]["InstanceGroups"][1]["InstanceCount"] == 3
