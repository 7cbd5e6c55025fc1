"""Resource sets per environment. The composition root reads the environment once into Settings and picks a set by
name; nothing else reads the environment.

    local    Spark in the Dagster process (local[*])
    cluster  a Spark standalone cluster (SPARK_MASTER_URL)
    emr      each layer's Spark job on AWS EMR through Dagster Pipes (store on S3)

The store follows the data root in every environment: a path, s3://bucket/prefix or hdfs://namenode:port/path.
"""

from __future__ import annotations

from dataclasses import dataclass

from resources.emr import EmrSparkResource
from resources.kafka import KafkaResource
from resources.prediction_store import PredictionStoreResource
from resources.registry import MlflowRegistry, ModelRegistryResource
from resources.spark import LocalSparkResource, SparkResource, StandaloneSparkResource
from resources.storage import HdfsStorage, LocalStorage, S3Storage, StorageResource

ENVIRONMENTS = ("local", "cluster", "emr")


@dataclass(frozen=True)
class Settings:
    data_root: str
    jars_dir: str | None = None
    spark_master_url: str | None = None
    shuffle_partitions: int = 8
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    mlflow_ui_url: str | None = "http://127.0.0.1:5000"
    mlflow_artifact_root: str | None = None
    kafka_bootstrap: str = "127.0.0.1:9092"
    s3_endpoint: str | None = None
    aws_region: str = "us-east-1"
    hdfs_http_port: int = 9870
    hdfs_user: str = "hdfs"
    emr: dict | None = None  # EmrSparkResource fields (ML_PLATFORM_EMR_*)
    store_endpoint: str | None = None  # the prediction store (None: AWS's DynamoDB)
    store_table: str = "ml_platform_predictions"


def storage_for(settings: Settings) -> StorageResource:
    root = settings.data_root
    if root.startswith(("s3://", "s3a://")):
        return S3Storage(root=root, endpoint_url=settings.s3_endpoint, region=settings.aws_region)
    if root.startswith("hdfs://"):
        return HdfsStorage(root=root, http_port=settings.hdfs_http_port, user=settings.hdfs_user)
    if "://" in root:
        raise ValueError(f"ML_PLATFORM_DATA={root!r}: use a path, s3://bucket/prefix or hdfs://namenode:port/path")
    return LocalStorage(root=root)


def spark_for(env: str, settings: Settings, storage: StorageResource) -> SparkResource:
    common = {"storage": storage, "jars_dir": settings.jars_dir, "shuffle_partitions": settings.shuffle_partitions}
    if env == "cluster":
        if not settings.spark_master_url:
            raise ValueError("ML_PLATFORM_ENV=cluster needs SPARK_MASTER_URL, e.g. spark://127.0.0.1:7077")
        return StandaloneSparkResource(master_url=settings.spark_master_url, **common)
    if env == "emr":
        if not isinstance(storage, S3Storage):
            raise ValueError("ML_PLATFORM_ENV=emr needs ML_PLATFORM_DATA=s3://<bucket>/<prefix>: EMR cannot see "
                             "this machine's folders")
        emr = dict(settings.emr or {})
        missing = [k for k in ("entry_point", "pipes_bucket") if not emr.get(k)]
        if missing:
            names = {"entry_point": "ML_PLATFORM_EMR_ENTRY_POINT", "pipes_bucket": "ML_PLATFORM_EMR_PIPES_BUCKET"}
            raise ValueError(f"ML_PLATFORM_ENV=emr needs {' and '.join(names[k] for k in missing)}")
        return EmrSparkResource(storage=storage, region=settings.aws_region,
                                shuffle_partitions=settings.shuffle_partitions, **emr)
    return LocalSparkResource(**common)


def resources_for(env: str, settings: Settings) -> dict:
    if env not in ENVIRONMENTS:
        raise ValueError(f"ML_PLATFORM_ENV={env!r} is not one of {ENVIRONMENTS}")
    storage = storage_for(settings)
    return {"spark": spark_for(env, settings, storage), "storage": storage,
            "registry": MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri, ui_url=settings.mlflow_ui_url,
                                       artifact_root=settings.mlflow_artifact_root),
            "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap),
            "predictions": PredictionStoreResource(table=settings.store_table, endpoint_url=settings.store_endpoint,
                                                   region=settings.aws_region)}


__all__ = ["EmrSparkResource", "HdfsStorage", "KafkaResource", "LocalSparkResource", "LocalStorage", "MlflowRegistry",
           "ModelRegistryResource", "PredictionStoreResource", "S3Storage", "Settings", "SparkResource",
           "StandaloneSparkResource", "StorageResource", "resources_for"]
