"""<dataset>/serving_deployment: the promotion gate. The scorer serves whatever the `champion` alias points at."""

from dagster import AssetExecutionContext, AssetsDefinition, AssetSpec, Failure, MaterializeResult, asset

from assets.common import asset_key, upstream_value
from assets.training import FOLLOW
from ml_platform.jobs import JobFailed
from resources import ModelRegistryResource, SparkResource, StorageResource


def build_serving_deployment(spec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "serving_deployment"), deps=[asset_key(spec, "stacked_model")], group_name=spec.name,
           kinds={"mlflow"}, automation_condition=FOLLOW,
           description=f"Which {spec.name} model is served: the challenger becomes champion only if it beats the "
                       f"champion on the same holdout by the spec's margin (or there is none). Roll back with "
                       f"`ml-platform rollback {spec.name}`.")
    def serving_deployment(context: AssetExecutionContext, spark: SparkResource, storage: StorageResource,
                           registry: ModelRegistryResource):
        challenger = upstream_value(context, [asset_key(spec, "stacked_model")], "model_version")
        try:
            g = spark.run_job(context, "promote", storage, spec, {"challenger": challenger}, registry)
        except JobFailed as e:
            raise Failure(description=str(e)) from None
        context.log.info(g["decision"])
        return MaterializeResult(metadata={
            "decision": g["decision"], "promoted": g["promoted"], "metric": g["metric"], "margin": g["margin"],
            "champion_before": g["champion_before"] or "none", "champion_after": g["champion_after"] or "none",
            "challenger": g["challenger"], "challenger_score": g.get("challenger_score", float("nan")),
            "champion_score": g.get("champion_score", float("nan")),
        })

    return serving_deployment


def build_live_metrics(spec) -> AssetSpec:
    """Not computed by Dagster: the streaming scorer measures it, and live_metrics_sensor records each window as an
    observation here, so live quality sits next to the lineage that produced the champion."""
    return AssetSpec(asset_key(spec, "live_metrics"), deps=[asset_key(spec, "serving_deployment")],
                     group_name=spec.name, kinds={"kafka", "spark"},
                     description=f"Live quality of the served {spec.name} model: predictions joined with the actuals "
                                 f"that arrive later, per {spec.serving.window_seconds}s window and model version "
                                 f"(topic {spec.name}.metrics).")
