"""The gold layer: <dataset>/training_set (accepted batches in the window, split) and <dataset>/feature_pipeline
(fitted once on train, reused by every model and by serving)."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import asset_key, run_tags, upstream_value
from ml_platform.jobs import JobFailed
from ml_platform.layout import mlflow_record
from ml_platform.spec import DatasetSpec
from resources import ModelRegistryResource, SparkResource, StorageResource

LATER_LAYERS = ["feature_pipeline", "stacked_model", "serving_deployment"]


def retrain_condition(spec: DatasetSpec) -> AutomationCondition:
    """One retrain for a burst of batches: wait while any batch is still being cleaned or any layer of a retrain
    is still to run (in_progress() turns false once an asset has executed, while its run goes on training the
    later layers), then handle every update since the last request at once. Missing cleaned partitions
    (rejected batches) never block."""
    busy = [asset_key(spec, layer) for layer in LATER_LAYERS] + [asset_key(spec, f"model_{n}")
                                                                  for n in spec.algorithms]
    cond = (AutomationCondition.any_deps_updated().since_last_handled()
            & ~AutomationCondition.any_deps_in_progress() & ~AutomationCondition.in_progress())
    for key in busy:
        cond = cond & ~AutomationCondition.asset_matches(key, AutomationCondition.in_progress())
    return cond.with_label("retrain")


# each later training layer follows the one before, in the same run when requested together
FOLLOW = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()


def build_training_set_asset(spec: DatasetSpec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "training_set"), deps=[asset_key(spec, "cleaned_features")], group_name=spec.name,
           kinds={"spark", "parquet"}, automation_condition=retrain_condition(spec),
           description=f"Every accepted cleaned {spec.name} batch in the training window, one row per key, split "
                       f"into train and holdout by a hash of the key.")
    def training_set(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource,
                     registry: ModelRegistryResource):
        store = storage.store()
        try:
            s = spark.run_job(context, "training_set", storage, spec, {"version": context.run.run_id})
        except JobFailed as e:
            raise Failure(description=str(e)) from None
        tracker = registry.tracker()
        parent = tracker.start_parent(spec.name, s, run_tags(context))
        store.write_json(mlflow_record(spec, s["version"]), {"parent_run_id": parent})
        t = s["target"]
        return MaterializeResult(metadata={
            "version": s["version"], "dagster/row_count": s["rows"], "train_rows": s["train_rows"],
            "holdout_rows": s["holdout_rows"], "batches": len(s["batches"]),
            "batch_keys": MetadataValue.json(s["batches"]), "data_hash": s["data_hash"],
            "time_range": f"{s['first_ingested_at']} .. {s['last_ingested_at']}",
            f"{spec.target}_stats": MetadataValue.json({k: t[k] for k in ("mean", "std", "min", "max")}),
            **({"positives_in_train": int(t["train_positives"]),
                "class_weights": MetadataValue.json(s["class_weights"])} if spec.task == "classification" else {}),
            "path": MetadataValue.path(s["train"]), "mlflow_run": MetadataValue.url(tracker.run_link(parent)),
        })

    return training_set


def build_feature_pipeline_asset(spec: DatasetSpec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "feature_pipeline"), deps=[asset_key(spec, "training_set")], group_name=spec.name,
           kinds={"spark"}, automation_condition=FOLLOW,
           description=f"The fitted {spec.name} feature pipeline: imputation, rare and unseen levels kept as their "
                       f"own level, indexing for trees, one-hot and scaling for linear models.")
    def feature_pipeline(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource):
        version = upstream_value(context, [asset_key(spec, "training_set")], "version")
        try:
            s = spark.run_job(context, "feature_pipeline", storage, spec, {"version": version})
        except JobFailed as e:
            raise Failure(description=str(e)) from None
        return MaterializeResult(metadata={
            "version": version, "numeric_features": len(s["numeric"]), "categorical_features": len(s["categorical"]),
            "levels_kept": MetadataValue.json(s["levels"]), "stages": MetadataValue.json(s["stages"]),
            "path": MetadataValue.path(s["path"]),
        })

    return feature_pipeline
