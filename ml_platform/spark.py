"""Spark configuration shared by every backend: loopback binding, local jars, small-machine defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


def local_jars(jars_dir: str | Path | None) -> list[str]:
    """Absolute paths of the jars `make jars` copied (Spark's Kafka connector); spark.jars, never Ivy."""
    if not jars_dir:
        return []
    d = Path(jars_dir) / "spark"
    return sorted(str(p.resolve()) for p in d.glob("*.jar"))


def session_conf(master: str, app_name: str, jars: list[str], shuffle_partitions: int = 8,
                 driver_memory: str = "4g", ui: bool = False, extra: dict[str, str] | None = None) -> dict:
    conf = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.driver.memory": driver_memory,
        "spark.ui.enabled": str(ui).lower(),
        "spark.ui.showConsoleProgress": "false",  # progress bars only clutter captured run logs
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # executors (local threads or a standalone worker) run this interpreter, so versions always match
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if jars:
        conf["spark.jars"] = ",".join(jars)
    conf.update(extra or {})
    return conf


def prepare_environment() -> None:
    """Before the JVM starts: bind to loopback and keep Spark's own logging quiet."""
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def local_session(app_name: str, threads: int = 2, shuffle_partitions: int = 2, driver_memory: str = "2g",
                  jars_dir: str | Path | None = None):
    """A plain local SparkSession with the platform's settings (tests, benchmarks, notebooks); `jars_dir` adds
    the Kafka connector for streaming."""
    from pyspark.sql import SparkSession

    prepare_environment()
    builder = SparkSession.builder
    jars = local_jars(jars_dir)
    for k, v in session_conf(f"local[{threads}]", app_name, jars, shuffle_partitions, driver_memory).items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
