"""The gold layer: <dataset>/training_set (accepted batches in the window, split) and <dataset>/feature_pipeline
(fitted once on train, reused by every model and by serving)."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import asset_key, end_orphaned_mlflow_runs, run_job, upstream_value
from ml_platform.spec import DatasetSpec
from resources import ModelRegistryResource, SparkResource

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
           kinds={"spark", "delta"}, automation_condition=retrain_condition(spec),
           description=f"Every accepted cleaned {spec.name} batch in the training window, one row per key, split "
                       f"into train and holdout by a hash of the key.")
    def training_set(context: AssetExecutionContext, spark: SparkResource, registry: ModelRegistryResource):
        # a retrain first ends what a killed earlier one left RUNNING in MLflow
        orphans = end_orphaned_mlflow_runs(context, registry, spec)
        # the run id names the version; the models job opens its MLflow parent run, tagged with it
        s = run_job(context, spark, spec, "training_set", {"version": context.run.run_id})
        t = s["target"]
        return MaterializeResult(metadata={
            "version": s["version"], "dagster/row_count": s["rows"],
            "mlflow_runs_ended_as_failed": len(orphans), "train_rows": s["train_rows"],
            "holdout_rows": s["holdout_rows"], "batches": len(s["batches"]),
            "batch_keys": MetadataValue.json(s["batches"]), "data_hash": s["data_hash"],
            "feedback_rows": s.get("feedback_rows", 0),
            "time_range": f"{s['first_ingested_at']} .. {s['last_ingested_at']}",
            **({f"{spec.target}_stats": MetadataValue.json({k: t[k] for k in ("mean", "std", "min", "max")})}
               if spec.task in ("regression", "classification", "recommendation") else {}),
            **({"rows_by_class (train)": MetadataValue.json(t["train_by_class"]),
                "rows_by_class (holdout)": MetadataValue.json(t["holdout_by_class"]),
                "holdout_only_classes": MetadataValue.json(t["holdout_only_classes"]),
                "class_weights": MetadataValue.json(s["class_weights"])} if spec.task == "multiclass" else {}),
            **({"positives_in_train": int(t["train_positives"]),
                "class_weights": MetadataValue.json(s["class_weights"])} if spec.task == "classification" else {}),
            "path": MetadataValue.path(s["train"]),
        })

    return training_set


def build_feature_pipeline_asset(spec: DatasetSpec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "feature_pipeline"), deps=[asset_key(spec, "training_set")], group_name=spec.name,
           kinds={"spark"}, automation_condition=FOLLOW,
           description=f"The fitted {spec.name} feature pipeline: imputation, rare and unseen levels kept as their "
                       f"own level, indexing for trees, one-hot and scaling for linear models.")
    def feature_pipeline(context: AssetExecutionContext, spark: SparkResource):
        version = upstream_value(context, [asset_key(spec, "training_set")], "version")
        s = run_job(context, spark, spec, "feature_pipeline", {"version": version})
        if "users" in s:  # a recommendation's pipeline indexes users and items only
            shape = {"users": s["users"], "items": s["items"], "user_column": s["user"], "item_column": s["item"]}
        else:
            shape = {"numeric_features": len(s["numeric"]), "categorical_features": len(s["categorical"]),
                     "levels_kept": MetadataValue.json(s["levels"])}
        return MaterializeResult(metadata={"version": version, **shape, "stages": MetadataValue.json(s["stages"]),
                                           "path": MetadataValue.path(s["path"])})

    return feature_pipeline
