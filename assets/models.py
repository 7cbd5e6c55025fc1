"""<dataset>/model_<algorithm>: one asset per algorithm in the spec, trained together by one multi-asset so the
base models share one cached training set and run side by side on one SparkSession."""

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    Failure,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from assets.common import asset_key, run_job, run_tags, upstream_value
from assets.training import FOLLOW
from ml_platform.spec import DatasetSpec
from ml_platform.train.algorithms import algorithm
from ml_platform.train.models import labelled
from resources import ModelRegistryResource, SparkResource


def _metadata(spec: DatasetSpec, r: dict) -> dict:
    hold = {k: round(v, 6) if isinstance(v, float) else v for k, v in r["holdout"].items()}
    cv = labelled(spec, "cv")
    return {
        **{f"holdout {labelled(spec, k)}": v for k, v in hold.items() if isinstance(v, int | float)},
        f"{cv} mean": r["cv_mean"], f"{cv} std": r["cv_std"],
        "best_params": MetadataValue.json(r["best_params"]), "param_maps_tried": r["param_maps"],
        "train_seconds": r["train_seconds"], "validation_seconds": r["validation_seconds"],
        "version": r["version"], "mlflow_run": MetadataValue.url(r["mlflow_run"]),
        "path": MetadataValue.path(r["model"]),
    }


def build_models(spec: DatasetSpec) -> AssetsDefinition:
    names = list(spec.algorithms)
    for n in names:
        algorithm(spec, n)  # an unknown algorithm fails at load time, naming the spec
    specs = [AssetSpec(asset_key(spec, f"model_{n}"), deps=[asset_key(spec, "feature_pipeline")],
                       group_name=spec.name, kinds={"spark", "mlflow"}, automation_condition=FOLLOW, skippable=True,
                       description=f"{n} for {spec.name}: k-fold cross-validated search, out-of-fold scores for "
                                   f"stacking, refit on all of train. The run's log follows each model's progress.")
             for n in names]

    @multi_asset(name=f"{spec.name}__models", specs=specs, can_subset=True)
    def models(context: AssetExecutionContext, spark: SparkResource, registry: ModelRegistryResource):
        version = upstream_value(context, [asset_key(spec, "feature_pipeline")], "version")
        selected = [n for n in names if asset_key(spec, f"model_{n}") in context.selected_asset_keys]
        # the job logs each model's MLflow run (nested under the version's parent run) as it finishes
        results = run_job(context, spark, spec, "models",
                          {"version": version, "algorithms": selected, "tags": run_tags(context)}, registry)
        failed = {n: r["error"] for n, r in results.items() if "error" in r}
        for n, r in results.items():
            if n not in failed:
                yield MaterializeResult(asset_key=asset_key(spec, f"model_{n}"), metadata=_metadata(spec, r))
        if failed:
            # the models that trained are materialized above; these are not, and the stack waits for them
            raise Failure(description="; ".join(failed.values()), metadata={"failed": MetadataValue.json(failed)})

    return models
