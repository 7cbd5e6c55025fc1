"""Resource sets per environment. The composition root picks one by name; nothing else reads the environment."""

from __future__ import annotations

from dataclasses import dataclass

from resources.kafka import KafkaResource
from resources.registry import MlflowRegistry, ModelRegistryResource
from resources.spark import LocalSparkResource, SparkResource, StandaloneSparkResource
from resources.storage import LocalStorage, StorageResource

ENVIRONMENTS = ("local", "cluster")


@dataclass(frozen=True)
class Settings:
    data_root: str
    jars_dir: str | None = None
    spark_master_url: str | None = None
    shuffle_partitions: int = 8
    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    mlflow_ui_url: str | None = "http://127.0.0.1:5000"
    kafka_bootstrap: str = "127.0.0.1:9092"


def resources_for(env: str, settings: Settings) -> dict:
    if env not in ENVIRONMENTS:
        raise ValueError(f"ML_PLATFORM_ENV={env!r} is not one of {ENVIRONMENTS} (emr comes with S3 support)")
    common = {"jars_dir": settings.jars_dir, "shuffle_partitions": settings.shuffle_partitions}
    if env == "cluster":
        if not settings.spark_master_url:
            raise ValueError("ML_PLATFORM_ENV=cluster needs SPARK_MASTER_URL, e.g. spark://127.0.0.1:7077")
        spark = StandaloneSparkResource(master_url=settings.spark_master_url, **common)
    else:
        spark = LocalSparkResource(**common)
    return {"spark": spark, "storage": LocalStorage(root=settings.data_root),
            "registry": MlflowRegistry(tracking_uri=settings.mlflow_tracking_uri, ui_url=settings.mlflow_ui_url),
            "kafka": KafkaResource(bootstrap_servers=settings.kafka_bootstrap)}


__all__ = ["KafkaResource", "LocalSparkResource", "LocalStorage", "MlflowRegistry", "ModelRegistryResource", "Settings",
           "SparkResource", "StandaloneSparkResource", "StorageResource", "resources_for"]
