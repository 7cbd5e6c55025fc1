"""The composition root: the only module that reads the environment and assembles Definitions.

ML_PLATFORM_ENV    local (default) | cluster
ML_PLATFORM_HOME   state folder for `make run` (default: .local beside this file)
ML_PLATFORM_DATA   the store root: landing, quarantine, bronze, silver (default: $ML_PLATFORM_HOME/data)
ML_PLATFORM_JARS   where `make jars` put the JVM jars (default: .jars beside this file)
SPARK_MASTER_URL   spark://host:port, for ML_PLATFORM_ENV=cluster
KAFKA_BOOTSTRAP_SERVERS  the broker the live-metrics sensor reads (default 127.0.0.1:9092, what `make run` starts)
MLFLOW_TRACKING_URI  the MLflow tracking server (default http://127.0.0.1:5000, what `make run` starts)
ML_PLATFORM_SENSOR_INTERVAL  seconds between landing-zone sensor ticks (default 15)
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
SETTINGS = Settings(
    data_root=os.environ.get("ML_PLATFORM_DATA", str(HOME / "data")),
    jars_dir=os.environ.get("ML_PLATFORM_JARS", str(HERE / ".jars")),
    spark_master_url=os.environ.get("SPARK_MASTER_URL"),
    shuffle_partitions=int(os.environ.get("ML_PLATFORM_SHUFFLE_PARTITIONS", "8")),
    mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
    kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    mlflow_ui_url=os.environ.get("ML_PLATFORM_MLFLOW_UI", os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")),
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
