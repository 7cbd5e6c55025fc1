"""<dataset>/stacked_model: the meta-model over the base models, as one deployable PipelineModel registered in
MLflow as `challenger`. Its blocking checks guard serving_deployment."""

import base64

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import asset_key, run_job, run_tags, upstream_value
from assets.training import FOLLOW
from ml_platform.train.models import labelled
from resources import ModelRegistryResource, SparkResource


def _image(png: bytes) -> str:
    return f"![plot](data:image/png;base64,{base64.b64encode(png).decode()})"


SERVED = {
    "regression": "a non-negative linear stack on the base models' out-of-fold scores, or the best single member "
                  "when the stack does not win",
    "classification": "a non-negative logistic stack on the base models' out-of-fold scores, or the best single "
                      "member when the stack does not win",
    "multiclass": "a non-negative average of the base models' class probabilities, or the best single member when "
                  "the average does not win",
    "clustering": "the clustering algorithm and k with the best holdout silhouette",
    "recommendation": "ALS with the best cross-validated NDCG@k, cold starts answered by a fallback",
}


def build_stacked_model(spec) -> AssetsDefinition:
    key = asset_key(spec, "stacked_model")
    names = ["finite_predictions", *spec.training.thresholds, "not_worse_than_best_member", "beats_base_models"]
    checks = [AssetCheckSpec(n, asset=key, blocking=n != "beats_base_models") for n in names]

    @asset(key=key, deps=[asset_key(spec, f"model_{n}") for n in spec.algorithms], group_name=spec.name,
           kinds={"spark", "mlflow"}, automation_condition=FOLLOW, check_specs=checks,
           description=f"The {spec.name} served model: {SERVED[spec.task]}; registered in MLflow as challenger.")
    def stacked_model(context: AssetExecutionContext, spark: SparkResource, registry: ModelRegistryResource):
        version = upstream_value(context, [asset_key(spec, f"model_{n}") for n in spec.algorithms], "version")
        s = run_job(context, spark, spec, "stack", {"version": version, "tags": run_tags(context)}, registry)
        metadata = {
            "leaderboard": MetadataValue.md(s["leaderboard"]),
            **{f"holdout {labelled(spec, k)}": v for k, v in s["holdout"].items() if isinstance(v, int | float)},
            "served": s["served"], "choice": s["choice"],
            "meta_coefficients": MetadataValue.json(s["meta_coefficients"]),
            "cv": MetadataValue.json(s["cv"]),
            "importance": MetadataValue.json({m: v["permutation"] for m, v in s["importance"].items()}),
            **({"reliability": MetadataValue.json(s["reliability"])} if s.get("reliability") else {}),
            **({"cluster_sizes": MetadataValue.json(s["holdout"]["sizes"])} if "sizes" in s["holdout"] else {}),
            "registered_model": spec.name, "model_version": s["model_version"],
            **({"registry_page": MetadataValue.url(s["model_page"])} if s.get("model_page") else {}),
            "mlflow_run": MetadataValue.url(s["mlflow_run"]), "version": s["version"],
            "batches": MetadataValue.json(s["training"]["batches"]), "data_hash": s["training"]["data_hash"],
            **{name.removesuffix(".png"): MetadataValue.md(_image(png)) for name, png in s["plots"].items()},
        }
        return MaterializeResult(metadata=metadata, check_results=[
            AssetCheckResult(asset_key=key, check_name=n, passed=ok, description=d,
                             severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN)
            for n, ok, blocking, d in s["checks"]])

    return stacked_model
