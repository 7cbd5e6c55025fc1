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
ML_PLATFORM_S3_ENDPOINT  an S3-compatible server (MinIO) instead of AWS; AWS_REGION (default us-east-1)
ML_PLATFORM_HDFS_HTTP_PORT / ML_PLATFORM_HDFS_USER  WebHDFS port (9870) and user (hdfs) for an hdfs:// root
ML_PLATFORM_EMR_*  the EMR backend (README, "Run on a cluster"): ENTRY_POINT, PIPES_BUCKET, MODE, RELEASE_LABEL,
                   BOOTSTRAP, LOG_URI, INSTANCE_TYPE, CORE_INSTANCES, SERVICE_ROLE, JOB_FLOW_ROLE, SUBNET_ID,
                   APPLICATION_ID, EXECUTION_ROLE_ARN, SPARK_SCHEME, PYTHON, ENDPOINT, DRY_RUN, POLL_SECONDS
ML_PLATFORM_SENSOR_INTERVAL  seconds between landing-zone sensor ticks (default 15)
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
from ml_platform.spec import builtin_specs
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
)
SENSOR_INTERVAL = int(os.environ.get("ML_PLATFORM_SENSOR_INTERVAL", "15"))
SPECS = builtin_specs()

defs = Definitions(
    assets=[a for spec in SPECS.values() for a in build_dataset_assets(spec)],
    sensors=[
        *[build_new_batch_sensor(spec, interval_seconds=SENSOR_INTERVAL) for spec in SPECS.values()],
        *[build_live_metrics_sensor(spec, interval_seconds=max(SENSOR_INTERVAL, 30)) for spec in SPECS.values()],
        AutomationConditionSensorDefinition(
            "automation_sensor", target=AssetSelection.all(), default_status=DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=SENSOR_INTERVAL,
            description="Evaluates every asset's automation condition: downstream layers follow new batches."),
    ],
    resources=resources_for(ENV, SETTINGS),
    # one process and one Spark JVM per run: Spark parallelises inside a step, and a second Python process per
    # step only adds start-up time on a small machine
    executor=in_process_executor,
)
