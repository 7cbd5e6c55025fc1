"""The bronze layer: <dataset>/raw_batches, one partition per landed file."""

from dagster import AssetExecutionContext, AssetsDefinition, MaterializeResult, MetadataValue, asset

from assets.common import asset_key, batch_partitions, check_specs, job_check_results, run_job
from ml_platform.data.checks import RAW_CHECKS
from ml_platform.spec import DatasetSpec
from resources import SparkResource

FILE_TAG = "ml_platform/file"  # set by the new-batch sensor on each run it requests


def build_raw_batches(spec: DatasetSpec) -> AssetsDefinition:
    key = asset_key(spec, "raw_batches")

    @asset(key=key, partitions_def=batch_partitions(spec), group_name=spec.name,
           check_specs=check_specs(spec, key, RAW_CHECKS), kinds={"spark", "delta"},
           description=f"Landed {spec.name} CSV batches, parsed by Spark and committed to the bronze Delta table "
                       f"with every value still a string. Malformed rows are kept and flagged; a re-landed file "
                       f"adds nothing.")
    def raw_batches(context: AssetExecutionContext, spark: SparkResource):
        # the sensor names the file; a run launched by hand (no tag) finds it by its partition key
        args = {"partition": context.partition_key, "file": context.run.tags.get(FILE_TAG)}
        record = run_job(context, spark, spec, "ingest", args)
        return MaterializeResult(
            metadata={
                "rows": record["rows"],
                "malformed_rows": record["malformed_rows"],
                "source_file": record["file"],
                "bytes": record["bytes"],
                "sha256": record["sha256"],
                "duplicate_of": record["duplicate_of"] or "",
                "missing_columns": MetadataValue.json(record["missing_columns"]),
                "extra_columns": MetadataValue.json(record["extra_columns"]),
                "path": MetadataValue.path(record["path"]),
            },
            check_results=job_check_results(context, key, record["checks"]),
        )

    return raw_batches
