"""The bronze layer: <dataset>/raw_batches, one partition per landed file."""

from dagster import AssetExecutionContext, AssetsDefinition, Failure, MaterializeResult, MetadataValue, asset

from assets.common import asset_key, batch_partitions, check_results, check_specs
from ml_platform.data.checks import RAW_CHECKS, raw_checks
from ml_platform.jobs import JobFailed
from ml_platform.layout import bronze_dir
from ml_platform.spec import DatasetSpec
from resources import SparkResource, StorageResource


def build_raw_batches(spec: DatasetSpec) -> AssetsDefinition:
    key = asset_key(spec, "raw_batches")

    @asset(key=key, partitions_def=batch_partitions(spec), group_name=spec.name,
           check_specs=check_specs(spec, key, RAW_CHECKS), kinds={"spark", "parquet"},
           description=f"Landed {spec.name} CSV batches, parsed by Spark and stored as Parquet with every value "
                       f"still a string. Malformed rows are kept and flagged; a re-landed file adds nothing.")
    def raw_batches(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource):
        store = storage.store()
        try:
            record = spark.run_job(context, "ingest", storage, spec, {"partition": context.partition_key})
        except JobFailed as e:
            raise Failure(description=f"{spec.name} batch {context.partition_key!r} rejected: {e}",
                          metadata={"reason": str(e)}) from None
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
                "path": MetadataValue.path(store.uri(bronze_dir(spec, context.partition_key))),
            },
            check_results=check_results(key, raw_checks(spec, record)),
        )

    return raw_batches
