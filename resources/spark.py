"""Spark as a Dagster resource: one role, one subclass per backend (local threads, standalone cluster)."""

from __future__ import annotations

from dagster import ConfigurableResource
from dagster_pyspark.resources import spark_session_from_config

from ml_platform.spark import local_jars, prepare_environment, session_conf


class SparkResource(ConfigurableResource):
    """Builds (or reuses) the process's SparkSession for the configured backend, bound to loopback."""

    app_name: str = "ml-platform"
    jars_dir: str | None = None
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = False
    extra_conf: dict[str, str] = {}

    def master(self) -> str:
        raise NotImplementedError

    def spark_conf(self) -> dict[str, str]:
        return session_conf(self.master(), self.app_name, local_jars(self.jars_dir), self.shuffle_partitions,
                            self.driver_memory, self.ui_enabled, self.backend_conf() | self.extra_conf)

    def backend_conf(self) -> dict[str, str]:
        return {}

    def get_session(self):
        prepare_environment()
        return spark_session_from_config(self.spark_conf())


class LocalSparkResource(SparkResource):
    """Spark in this process's JVM: `local[threads]`. The default."""

    threads: str = "*"

    def master(self) -> str:
        return f"local[{self.threads}]"


class StandaloneSparkResource(SparkResource):
    """A Spark standalone cluster (`spark://host:port`). Workers must see the same storage paths."""

    master_url: str
    executor_memory: str = "1g"
    cores_max: int | None = None

    def master(self) -> str:
        if not self.master_url.startswith("spark://"):
            raise ValueError(f"StandaloneSparkResource.master_url must look like spark://host:7077, "
                             f"got {self.master_url!r} (set SPARK_MASTER_URL)")
        return self.master_url

    def backend_conf(self) -> dict[str, str]:
        conf = {"spark.executor.memory": self.executor_memory}
        if self.cores_max:
            conf["spark.cores.max"] = str(self.cores_max)
        return conf
