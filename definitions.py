"""The composition root: the only module that reads the environment and assembles Definitions.

ML_PLATFORM_ENV    local (default) | cluster | emr
ML_PLATFORM_HOME   state folder for `make run` (default: .local beside this file)
ML_PLATFORM_DATA   the store root: a path, s3://bucket/prefix or hdfs://namenode:port/path
                   (default: $ML_PLATFORM_HOME/data)
ML_PLATFORM_JARS   where `make jars` put the JVM jars (default: .jars beside this file)
SPARK_MASTER_URL   spark://host:port, for ML_PLATFORM_ENV=cluster
KAFKA_BOOTSTRAP_SERVERS  the broker the live-metrics sensor reads (default 127.0.0.1:9092, what `make run` starts)
MLFLOW_TRACKING_URI  the MLflow tracking server (default http://127.0.0.1:5000, what `make run` starts)
ML_PLATFORM_MLFLOW_ARTIFACTS  where new MLflow experiments keep artifacts, e.g. s3://bucket/mlflow (default: the
                   tracking server decides)
ML_PLATFORM_STORE_ENDPOINT / ML_PLATFORM_STORE_TABLE  the prediction store the feedback loop checks requests against
                   (default: AWS's DynamoDB, table ml_platform_predictions; `make run`: dynalite on loopback)
ML_PLATFORM_S3_ENDPOINT  an S3-compatible server (MinIO) instead of AWS; AWS_REGION (default us-east-1)
ML_PLATFORM_HDFS_HTTP_PORT / ML_PLATFORM_HDFS_USER  WebHDFS port (9870) and user (hdfs) for an hdfs:// root
ML_PLATFORM_EMR_*  the EMR backend (README, "Run on a cluster"): ENTRY_POINT, PIPES_BUCKET, MODE, RELEASE_LABEL,
                   BOOTSTRAP, LOG_URI, INSTANCE_TYPE, CORE_INSTANCES, SERVICE_ROLE, JOB_FLOW_ROLE, SUBNET_ID,
                   APPLICATION_ID, EXECUTION_ROLE_ARN, SPARK_SCHEME, PYTHON, ENDPOINT, DRY_RUN, POLL_SECONDS
ML_PLATFORM_SENSOR_INTERVAL  seconds between landing-zone sensor ticks (default 15)
ML_PLATFORM_SPECS  the directory of dataset specs (*.yaml); default: the examples shipped in ml_platform/specs.
                   A spec that does not load shows as an asset `<file stem>/spec` whose description is the error;
                   the other datasets load as usual
ML_PLATFORM_DATASETS  comma-separated dataset names: only these get assets and sensors (default: every loaded
                   spec). `make run` sets it to the datasets it runs
AWS credentials are never settings: boto3, s3a and EMR read AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or
an instance role themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    Definitions,
    in_process_executor,
)

from assets import build_dataset_assets
from assets.spec_errors import build_spec_error
from ml_platform.spec import SpecSet, load_spec_dir
from resources import Settings, resources_for
from sensors import build_live_metrics_sensor, build_new_batch_sensor

HERE = Path(__file__).resolve().parent
ENV = os.environ.get("ML_PLATFORM_ENV", "local")
HOME = Path(os.environ.get("ML_PLATFORM_HOME", HERE / ".local"))
# ML_PLATFORM_EMR_<NAME> -> EmrSparkResource.<name>, with its type
EMR_FIELDS = {"mode": str, "endpoint_url": str, "entry_point": str, "pipes_bucket": str,
              "release_label": str, "bootstrap_script": str, "log_uri": str, "instance_type": str,
              "core_instances": int, "service_role": str, "job_flow_role": str, "subnet_id": str,
              "application_id": str, "execution_role_arn": str, "spark_scheme": str, "poll_seconds": float,
              "python": str, "dry_run": lambda v: v.lower() in ("1", "true", "yes")}
EMR_ENV = {"endpoint_url": "ENDPOINT", "bootstrap_script": "BOOTSTRAP"}


def emr_settings() -> dict:
    out = {}
    for field, cast in EMR_FIELDS.items():
        value = os.environ.get(f"ML_PLATFORM_EMR_{EMR_ENV.get(field, field.upper())}")
        if value:
            out[field] = cast(value)
    return out


SETTINGS = Settings(
    data_root=os.environ.get("ML_PLATFORM_DATA", str(HOME / "data")),
    jars_dir=os.environ.get("ML_PLATFORM_JARS", str(HERE / ".jars")),
    spark_master_url=os.environ.get("SPARK_MASTER_URL"),
    shuffle_partitions=int(os.environ.get("ML_PLATFORM_SHUFFLE_PARTITIONS", "8")),
    mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
    kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    mlflow_ui_url=os.environ.get("ML_PLATFORM_MLFLOW_UI", os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")),
    mlflow_artifact_root=os.environ.get("ML_PLATFORM_MLFLOW_ARTIFACTS"),
    s3_endpoint=os.environ.get("ML_PLATFORM_S3_ENDPOINT"),
    aws_region=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
    hdfs_http_port=int(os.environ.get("ML_PLATFORM_HDFS_HTTP_PORT", "9870")),
    hdfs_user=os.environ.get("ML_PLATFORM_HDFS_USER", "hdfs"),
    emr=emr_settings(),
    store_endpoint=os.environ.get("ML_PLATFORM_STORE_ENDPOINT") or None,
    store_table=os.environ.get("ML_PLATFORM_STORE_TABLE", "ml_platform_predictions"),
)
SENSOR_INTERVAL = int(os.environ.get("ML_PLATFORM_SENSOR_INTERVAL", "15"))


def chosen_specs(loaded: SpecSet, datasets: str | None) -> tuple[list, dict[str, str]]:
    """The specs to build, in the order asked, and every error to show: broken spec files, and names in
    ML_PLATFORM_DATASETS that no loaded spec has."""
    errors = dict(loaded.errors)
    if not datasets:
        return list(loaded.specs.values()), errors
    specs = []
    for name in dict.fromkeys(n.strip() for n in datasets.split(",") if n.strip()):
        if name in loaded.specs:
            specs.append(loaded.specs[name])
        else:
            errors[name] = (f"ML_PLATFORM_DATASETS names {name!r}, but no spec in {loaded.directory} has that name; "
                            f"loaded: {sorted(loaded.specs)}")
    return specs, errors


def build_defs(loaded: SpecSet, datasets: str | None, resources: dict, sensor_interval: int = 15) -> Definitions:
    specs, errors = chosen_specs(loaded, datasets)
    return Definitions(
        assets=[a for spec in specs for a in build_dataset_assets(spec)]
        + [build_spec_error(source, error) for source, error in errors.items()],
        sensors=[
            *[build_new_batch_sensor(spec, interval_seconds=sensor_interval) for spec in specs],
            *[build_live_metrics_sensor(spec, interval_seconds=max(sensor_interval, 30)) for spec in specs],
            AutomationConditionSensorDefinition(
                "automation_sensor", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING,
                minimum_interval_seconds=sensor_interval,
                description="Evaluates every asset's automation condition: downstream layers follow new batches."),
        ],
        resources=resources,
        # one process and one Spark JVM per run: Spark parallelises inside a step, and a second Python process per
        # step only adds start-up time on a small machine
        executor=in_process_executor,
    )


# read once, here: which specs, which datasets
SPECS = load_spec_dir(os.environ.get("ML_PLATFORM_SPECS") or None)
defs = build_defs(SPECS, os.environ.get("ML_PLATFORM_DATASETS"), resources_for(ENV, SETTINGS), SENSOR_INTERVAL)
