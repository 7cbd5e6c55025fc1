"""The silver layer: <dataset>/cleaned_features, typed and deduplicated, with rejected rows quarantined."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Failure,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from assets.common import asset_key, batch_partitions, check_results, check_specs
from ml_platform.data.checks import CLEANED_CHECKS, cleaned_checks
from ml_platform.jobs import JobFailed
from ml_platform.layout import quarantine_rows_dir, silver_dir
from ml_platform.spec import DatasetSpec
from ml_platform.train.training_set import mark_accepted
from resources import SparkResource, StorageResource

# follow each new raw partition, but never past a failed blocking check on it
FOLLOW_UPSTREAM = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()


def _reasons_table(reasons: dict[str, int]) -> str:
    rows = "\n".join(f"| {r} | {n} |" for r, n in reasons.items())
    return "| reason | rows |\n|---|---|\n" + rows if reasons else "no rows quarantined"


def build_cleaned_features(spec: DatasetSpec) -> AssetsDefinition:
    key = asset_key(spec, "cleaned_features")

    @asset(key=key, deps=[asset_key(spec, "raw_batches")], partitions_def=batch_partitions(spec),
           group_name=spec.name, check_specs=check_specs(spec, key, CLEANED_CHECKS), kinds={"spark", "parquet"},
           automation_condition=FOLLOW_UPSTREAM,
           description=f"Cleaned {spec.name} rows: units, sentinels, signs, booleans and dates parsed, features "
                       f"derived, one row per key. Rows that fail are quarantined with their reason.")
    def cleaned_features(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource):
        store = storage.store()
        try:
            s = spark.run_job(context, "clean", storage, spec, {"partition": context.partition_key})
        except JobFailed as e:
            raise Failure(description=str(e)) from None
        metadata = {"rows_in": s["rows_in"], "cleaned_rows": s["cleaned"], "quarantined_rows": s["quarantined"],
                    "duplicates_removed": s["duplicates_removed"], "duplicate_of": s["duplicate_of"] or ""}
        if not s["duplicate_of"]:
            metadata |= {
                "quarantine_reasons": MetadataValue.md(_reasons_table(s["top_reasons"])),
                f"{spec.target}_min": s["target_min"], f"{spec.target}_max": s["target_max"],
                f"{spec.target}_mean": s["target_mean"],
                "null_rates": MetadataValue.json({c: round(v, 4) for c, v in s["null_rate"].items() if v > 0}),
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(c, t) for c, t in s["schema"].items()]),
                "dagster/row_count": s["cleaned"],
                "path": MetadataValue.path(store.uri(silver_dir(spec, context.partition_key))),
                "quarantine_path": MetadataValue.path(store.uri(quarantine_rows_dir(spec, context.partition_key))),
            }
        outcomes = cleaned_checks(spec, s)
        # training reads only batches whose blocking checks passed
        mark_accepted(store, spec, context.partition_key, not s["duplicate_of"] and all(
            o.passed for o in outcomes if o.blocking), s)
        return MaterializeResult(metadata=metadata, check_results=check_results(key, outcomes))

    return cleaned_features
