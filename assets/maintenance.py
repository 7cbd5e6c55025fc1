"""Upkeep of a dataset's Delta tables: <dataset>/lake_maintenance, OPTIMIZE and VACUUM on a daily cron."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import asset_key, run_job
from ml_platform.spec import DatasetSpec
from resources import ModelRegistryResource, SparkResource

DAILY = "0 3 * * *"


class MaintenanceConfig(Config):
    # Delta's own default: a reader may lag that long behind a VACUUM. Versions a registered model was trained on
    # are kept however old they are (ml_platform/data/maintenance.py).
    retention_hours: float = 168.0


def build_lake_maintenance(spec: DatasetSpec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "lake_maintenance"), deps=[asset_key(spec, "cleaned_features")], group_name=spec.name,
           kinds={"spark", "delta"}, automation_condition=AutomationCondition.on_cron(DAILY),
           description=f"Compaction (OPTIMIZE) and clean-up (VACUUM) of the {spec.name} bronze, silver and "
                       f"quarantine tables. Silver versions that registered models were trained on stay readable.")
    def lake_maintenance(context: AssetExecutionContext, config: MaintenanceConfig, spark: SparkResource,
                         registry: ModelRegistryResource):
        pinned = registry.tracker().pinned_silver_versions(spec.name)
        s = run_job(context, spark, spec, "maintain", {"retention_hours": config.retention_hours,
                                                       "pinned_silver": pinned})
        return MaterializeResult(metadata={
            "retention_hours": config.retention_hours, "pinned_silver_versions": MetadataValue.json(pinned),
            "tables": MetadataValue.json(s["tables"])})

    return lake_maintenance
