"""The Spark application EMR runs for one asset layer: `spark-submit emr_job.py` on a cluster whose bootstrap
installed this package (see README, "Run on a cluster"). Dagster Pipes brings the job's name, the dataset's spec, where
the store and MLflow are (never a credential: those are the cluster's instance role or its environment), and
takes the summary back through S3. The work itself is `ml_platform.jobs.run_job`, the very function the local
backends call.

Written for the Spark of current EMR releases as well as the one the platform pins: emr-7.13.0 ships Spark 3.5.6
and Python 3.11 (tests run this entry point under pyspark 3.5.6)."""

from __future__ import annotations

import os
import sys


def session(job: str, store_options: dict):
    from pyspark.sql import SparkSession

    from ml_platform.spark import delta_conf, s3a_conf

    # Spark 3.5's default, stated: casts of bad text give null there, as try_cast does on Spark 4
    builder = SparkSession.builder.appName(f"ml-platform {job}").config("spark.sql.ansi.enabled", "false")
    # EMR's own Delta (the delta-defaults classification puts its jars on the classpath), pinned like ours
    for k, v in delta_conf(None).items():
        builder = builder.config(k, v)
    if store_options.get("root", "").startswith(("s3://", "s3a://")) and store_options.get("spark_scheme") == "s3a":
        for k, v in s3a_conf(store_options.get("endpoint_url"), store_options.get("region")).items():
            builder = builder.config(k, v)
    return builder.getOrCreate()


def execute(extras: dict, report, log=print) -> None:
    """Run the job the extras name and report its summary (or why the data was refused) through `report`; progress
    lines go to `log` (Pipes' log, so they appear in the Dagster run as the job goes)."""
    from ml_platform.jobs import JobFailed, run_job, spec_from_wire, to_wire
    from ml_platform.stores import open_store

    job, store_options = extras["job"], dict(extras["store"])
    # the spec itself travels, not its name: a user's spec directory exists only where Dagster runs
    spec = spec_from_wire(extras["spec"])
    store = open_store(store_options.pop("root"), **store_options)
    tracker = None
    if extras.get("registry"):  # only the models, stack and promotion jobs use MLflow
        from ml_platform.train.registry import Tracker

        tracker = Tracker(**extras["registry"])
    spark = session(job, extras["store"])
    try:
        report({"summary": to_wire(run_job(job, spark, store, spec, extras["args"], tracker, log))})
    except JobFailed as e:
        report({"failed": str(e)})
    finally:
        spark.stop()


def main() -> int:
    import boto3
    from dagster_pipes import PipesS3MessageWriter, open_dagster_pipes

    # AWS_ENDPOINT_URL_S3 (boto3's own variable) points the message writer at an S3-compatible server
    client = boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"))
    with open_dagster_pipes(message_writer=PipesS3MessageWriter(client=client)) as pipes:
        pipes.log.info(f"ml-platform job {pipes.extras['job']} for {pipes.extras['dataset']} on Spark "
                       f"{__import__('pyspark').__version__}, Python {sys.version.split()[0]}")
        execute(pipes.extras, pipes.report_custom_message, pipes.log.info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
