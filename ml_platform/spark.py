"""Spark configuration shared by every backend: loopback binding, local jars, small-machine defaults."""

from __future__ import annotations

import os
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


# where `make jars` puts the jar sets, for a session built without an explicit folder (tests, benchmarks, notebooks)
DEFAULT_JARS = Path(__file__).resolve().parents[1] / ".jars"


def local_jars(jars_dir: str | Path | None, groups=("spark",)) -> list[str]:
    """Absolute paths of the jars `make` copied: `spark` (Delta Lake and the Kafka connector), `aws` (hadoop-aws and
    the AWS SDK, for s3a://). Local files on spark.jars, never Ivy. A missing set fails here, naming the make target,
    rather than later inside Spark with a ClassNotFoundException. No folder: the checkout's own .jars."""
    jars_dir = jars_dir or DEFAULT_JARS
    out = []
    for g in groups:
        found = sorted((Path(jars_dir) / g).glob("*.jar"))
        if not found:
            hint = " (an s3:// data root needs them)" if g == "aws" else ""
            raise FileNotFoundError(f"no {g} jars in {Path(jars_dir) / g}: run `make jars-{g}`{hint}")
        out += [str(p.resolve()) for p in found]
    return out


def s3a_conf(endpoint_url: str | None = None, region: str | None = None) -> dict[str, str]:
    """Hadoop's s3a settings for a store on S3 or an S3-compatible server. No credentials: s3a's default chain
    reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role) itself."""
    conf = {"spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
            "spark.hadoop.fs.s3a.endpoint.region": region or "us-east-1"}
    if endpoint_url:  # an S3-compatible server (MinIO): one host, path-style URLs, maybe plain HTTP
        conf |= {"spark.hadoop.fs.s3a.endpoint": endpoint_url,
                 "spark.hadoop.fs.s3a.path.style.access": "true",
                 "spark.hadoop.fs.s3a.connection.ssl.enabled": str(endpoint_url.startswith("https")).lower()}
    return conf


# Where a cluster's executors reach the driver: loopback by default (local mode, or a cluster on this machine, as
# in the tests); an address the workers reach when they are other hosts (on Kubernetes, the pod's IP); or
# `spark-submit`, which leaves it to spark-submit (Spark on Kubernetes in cluster mode sets the driver's service).
DRIVER_HOST = "ML_PLATFORM_SPARK_DRIVER_HOST"


def driver_host() -> str:
    return os.environ.get(DRIVER_HOST, "").strip() or LOOPBACK


# Delta Lake, the format of every table (ml_platform/lake.py). New tables are pinned to a protocol both the platform's
# Delta (4.4, Spark 4.2) and EMR's (3.x, Spark 3.5) read and write: reader 1 / writer 4 is enough for the change data
# feed; deletion vectors (reader 3 / writer 7 table features) stay off so that EMR's Delta never meets a feature it
# lacks. The snapshot's state is rebuilt in as many tasks as the shuffle has, not Delta's 50 (tiny on 2 cores).
def delta_conf(partitions: int | None) -> dict[str, str]:
    d = "spark.databricks.delta.properties.defaults."
    return {"spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            **({"spark.databricks.delta.snapshotPartitions": str(max(1, partitions))} if partitions else {}),
            f"{d}minReaderVersion": "1", f"{d}minWriterVersion": "4",
            f"{d}enableChangeDataFeed": "true", f"{d}enableDeletionVectors": "false",
            # no per-file column statistics: every read here is whole-table or by bronze's partition column, so
            # data skipping never uses them, and collecting them for ~70 columns was 18% of a small batch's time
            f"{d}dataSkippingNumIndexedCols": "0"}


def session_conf(master: str, app_name: str, jars: list[str], shuffle_partitions: int = 8,
                 driver_memory: str = "4g", ui: bool = False, extra: dict[str, str] | None = None) -> dict:
    host = driver_host()
    conf = {
        "spark.master": master,
        "spark.app.name": app_name,
        **({} if host == "spark-submit" else {"spark.driver.host": host, "spark.driver.bindAddress": host}),
        "spark.driver.memory": driver_memory,
        "spark.ui.enabled": str(ui).lower(),
        "spark.ui.showConsoleProgress": "false",  # progress bars only clutter captured run logs
        "spark.sql.shuffle.partitions": str(shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # Kafka batch writes through the DataSource V2 sink (Spark's default list has kafka in it: V1), where an
        # Observation on the write is filled: the scorer counts its rows on the write itself, in one Spark job
        "spark.sql.sources.useV1SourceList": "avro,csv,json,orc,parquet,text",
        # executors (local threads or a standalone worker) run this interpreter, so versions always match
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if any(Path(j).name.startswith("delta-spark") for j in jars):
        conf.update(delta_conf(shuffle_partitions))
    conf.update(extra or {})
    return conf


def prepare_environment() -> None:
    """Before the JVM starts: bind to loopback (or the driver host a cluster reaches) and keep Spark's own logging
    quiet."""
    if driver_host() != "spark-submit":
        os.environ.setdefault("SPARK_LOCAL_IP", driver_host())
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # native BLAS (make blas) runs single-threaded inside Spark's task threads: Spark's linear algebra guide asks
    # for it, as OpenBLAS's own threads would compete with the tasks for the same cores
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def local_session(app_name: str, threads: int = 2, shuffle_partitions: int = 2, driver_memory: str = "2g",
                  jars_dir: str | Path | None = None, jar_groups=("spark",), extra: dict[str, str] | None = None):
    """A plain local SparkSession with the platform's settings (tests, benchmarks, notebooks); `jars_dir` adds
    the Kafka connector for streaming."""
    from pyspark.sql import SparkSession

    prepare_environment()
    builder = SparkSession.builder
    jars = local_jars(jars_dir, jar_groups)
    for k, v in session_conf(f"local[{threads}]", app_name, jars, shuffle_partitions, driver_memory,
                             extra=extra).items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


# what a failed Spark read or write of the store looks like from the JVM, and the setting that fixes it
STORAGE_FAILURES = [
    ("NoAuthWithAWSException", "Spark found no AWS credentials for s3a; set AWS_ACCESS_KEY_ID / "
                               "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role) for the Spark driver"),
    ("InvalidAccessKeyId", "S3 refused Spark's credentials; fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("SignatureDoesNotMatch", "S3 refused Spark's credentials; fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"),
    ("NoSuchBucket", "the bucket in ML_PLATFORM_DATA does not exist"),
    ("UnknownStoreException", "the bucket in ML_PLATFORM_DATA does not exist"),
    ("AccessDeniedException", "access denied on the store; the identity needs list/get/put/delete on the "
                              "ML_PLATFORM_DATA prefix"),
    ("AccessControlException", "HDFS permission denied; run Spark as a user allowed on ML_PLATFORM_DATA "
                               "(HADOOP_USER_NAME)"),
    ("ConnectException", "Spark could not connect to the store; check ML_PLATFORM_DATA (namenode host:port) or "
                         "ML_PLATFORM_S3_ENDPOINT"),
    ("SdkClientException: Unable to execute HTTP request", "Spark could not reach S3; check "
                                                           "ML_PLATFORM_S3_ENDPOINT and the network"),
]


def storage_hint(error: BaseException) -> str | None:
    """One sentence for a Spark job that failed on the store, or None if it failed for another reason."""
    text = str(error)
    return next((hint for marker, hint in STORAGE_FAILURES if marker in text), None)
