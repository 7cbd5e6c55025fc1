"""Spark as a Dagster resource: one role, one subclass per backend (local threads and a standalone cluster here;
EMR in resources/emr.py). Assets hand it a layer's job by name (ml_platform.jobs); where that job runs is the
backend's business. Spark holds the storage it works on as a nested resource: the store the jobs read and write,
and what Spark needs to reach it (jars, Hadoop settings), come from one object."""

from __future__ import annotations

from dagster import ConfigurableResource, Failure
from dagster_pyspark.resources import spark_session_from_config

from ml_platform.jobs import from_wire, run_job, to_wire
from ml_platform.spark import local_jars, prepare_environment, session_conf, storage_hint
from resources.storage import StorageResource


class SparkResource(ConfigurableResource):
    """Builds (or reuses) the process's SparkSession for the configured backend, bound to loopback."""

    storage: StorageResource
    app_name: str = "ml-platform"
    jars_dir: str | None = None
    shuffle_partitions: int = 8
    driver_memory: str = "4g"
    ui_enabled: bool = False
    extra_conf: dict[str, str] = {}
    # which folders of .jars go on Spark's classpath besides what the storage needs (hadoop-aws for s3a://)
    jar_groups: list[str] = ["spark"]

    def master(self) -> str:
        raise NotImplementedError

    def spark_conf(self) -> dict[str, str]:
        groups = list(dict.fromkeys([*self.jar_groups, *self.storage.jar_groups()]))
        return session_conf(self.master(), self.app_name, local_jars(self.jars_dir, groups),
                            self.shuffle_partitions, self.driver_memory, self.ui_enabled,
                            self.storage.spark_conf() | self.backend_conf() | self.extra_conf)

    def backend_conf(self) -> dict[str, str]:
        return {}

    def get_session(self):
        prepare_environment()
        return spark_session_from_config(self.spark_conf())

    def run_job(self, context, name: str, spec, args: dict, registry=None) -> dict:
        """Run one layer's Spark job here, in this process's SparkSession, its progress lines in the run's log. The
        summary goes through the same JSON round trip as on EMR, so an asset sees the same types on every backend."""
        tracker = registry.tracker() if registry is not None else None
        try:
            return from_wire(to_wire(run_job(name, self.get_session(), self.storage.store(), spec, args, tracker,
                                             context.log.info)))
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
