"""Spark as a Dagster resource: one role, one subclass per backend (local threads and a standalone cluster here;
EMR in resources/emr.py). Assets hand it a layer's job by name (ml_platform.jobs); where that job runs is the
backend's business."""

from __future__ import annotations

from dagster import ConfigurableResource, Failure
from dagster_pyspark.resources import spark_session_from_config

from ml_platform.jobs import from_wire, run_job, to_wire
from ml_platform.spark import local_jars, prepare_environment, session_conf, storage_hint


class SparkResource(ConfigurableResource):
    """Builds (or reuses) the process's SparkSession for the configured backend, bound to loopback."""

    app_name: str = "ml-platform"
    jars_dir: str | None = None
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = False
    extra_conf: dict[str, str] = {}
    # which folders of .jars go on Spark's classpath: the Kafka connector always, hadoop-aws for s3a:// stores
    jar_groups: list[str] = ["spark"]

    def master(self) -> str:
        raise NotImplementedError

    def spark_conf(self) -> dict[str, str]:
        return session_conf(self.master(), self.app_name, local_jars(self.jars_dir, self.jar_groups),
                            self.shuffle_partitions, self.driver_memory, self.ui_enabled,
                            self.backend_conf() | self.extra_conf)

    def backend_conf(self) -> dict[str, str]:
        return {}

    def get_session(self):
        prepare_environment()
        return spark_session_from_config(self.spark_conf())

    def run_job(self, context, name: str, storage, spec, args: dict, registry=None) -> dict:
        """Run one layer's Spark job here, in this process's SparkSession. The summary goes through the same
        JSON round trip as on EMR, so an asset sees the same types on every backend."""
        tracker = registry.tracker() if registry is not None else None
        try:
            return from_wire(to_wire(run_job(name, self.get_session(), storage.store(), spec, args, tracker)))
        except Exception as e:
            hint = storage_hint(e)
            if hint is None:
                raise
            raise Failure(description=f"{spec.name} {name}: {hint}") from e


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
