"""The silver layer: <dataset>/cleaned_features, typed and deduplicated, with rejected rows quarantined."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from assets.common import asset_key, batch_partitions, check_specs, job_check_results, run_job
from ml_platform.data.checks import CLEANED_CHECKS
from ml_platform.spec import DatasetSpec
from resources import SparkResource

# No automation condition: the new-batch sensor owns batch runs (ingest and cleaning in one run per new file; its
# reconciliation cleans a batch ingested alone, after a grace). An eager condition here raced Dagster's own retry of
# a run killed while cleaning: both cleaned the same partition at once and one read a half-written folder.


def _reasons_table(reasons: dict[str, int]) -> str:
    rows = "\n".join(f"| {r} | {n} |" for r, n in reasons.items())
    return "| reason | rows |\n|---|---|\n" + rows if reasons else "no rows quarantined"


def build_cleaned_features(spec: DatasetSpec) -> AssetsDefinition:
    key = asset_key(spec, "cleaned_features")

    @asset(key=key, deps=[asset_key(spec, "raw_batches")], partitions_def=batch_partitions(spec),
           group_name=spec.name, check_specs=check_specs(spec, key, CLEANED_CHECKS), kinds={"spark", "delta"},
           description=f"Cleaned {spec.name} rows: units, sentinels, signs, booleans and dates parsed, features "
                       f"derived, one row per key. Rows that fail are quarantined with their reason. Only a "
                       f"batch whose blocking checks pass is MERGEd into the silver Delta table, one row per key "
                       f"across batches; its rows, acceptance and checks are one commit.")
    def cleaned_features(context: AssetExecutionContext, spark: SparkResource):
        s = run_job(context, spark, spec, "clean", {"partition": context.partition_key})
        why_not = "; ".join(s["not_accepted_because"])
        metadata = {"accepted_for_training": s["accepted"], "not_accepted_because": why_not,
                    "rows_in": s["rows_in"], "cleaned_rows": s["cleaned"], "quarantined_rows": s["quarantined"],
                    "duplicates_removed": s["duplicates_removed"], "duplicate_of": s["duplicate_of"] or ""}
        if not s["duplicate_of"]:
            metadata |= {
                "quarantine_reasons": MetadataValue.md(_reasons_table(s["top_reasons"])),
                "quarantined_by_field": MetadataValue.json(s.get("quarantined_by_field") or {}),
                "unlabelled_rows": s.get("unlabelled", 0),
                **({f"{spec.target}_min": s["target_min"], f"{spec.target}_max": s["target_max"],
                    f"{spec.target}_mean": s["target_mean"]} if spec.target else {}),
                "null_rates": MetadataValue.json({c: round(v, 4) for c, v in s["null_rate"].items() if v > 0}),
                "dagster/column_schema": TableSchema(
                    columns=[TableColumn(c, t) for c, t in s["schema"].items()]),
                "dagster/row_count": s["cleaned"],
                "path": MetadataValue.path(s["path"]),
                "quarantine_path": MetadataValue.path(s["quarantine_path"]),
            }
        if why_not:
            context.log.warning(f"{spec.name} batch {context.partition_key} is not trained on: {why_not}")
        return MaterializeResult(metadata=metadata, check_results=job_check_results(context, key, s["checks"]))

    return cleaned_features
