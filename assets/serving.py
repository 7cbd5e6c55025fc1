"""<dataset>/serving_deployment: the promotion gate. The scorer serves whatever the `champion` alias points at."""

from dagster import AssetExecutionContext, AssetsDefinition, AssetSpec, MaterializeResult, MetadataValue, asset

from assets.common import asset_key, run_job, upstream_value
from assets.training import FOLLOW
from ml_platform.serve.messages import topic
from resources import ModelRegistryResource, SparkResource


def build_serving_deployment(spec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "serving_deployment"), deps=[asset_key(spec, "stacked_model")], group_name=spec.name,
           kinds={"mlflow"}, automation_condition=FOLLOW,
           description=f"Which {spec.name} model is served: the challenger becomes champion only if it beats the "
                       f"champion on the same holdout by the spec's margin (or there is none). Roll back with "
                       f"`ml-platform rollback {spec.name}`.")
    def serving_deployment(context: AssetExecutionContext, spark: SparkResource, registry: ModelRegistryResource):
        challenger = upstream_value(context, [asset_key(spec, "stacked_model")], "model_version")
        g = run_job(context, spark, spec, "promote", {"challenger": challenger}, registry)
        context.log.info(g["decision"])
        return MaterializeResult(metadata={
            "decision": g["decision"], "promoted": g["promoted"], "metric": g["metric"], "margin": g["margin"],
            "champion_before": g["champion_before"] or "none", "champion_after": g["champion_after"] or "none",
            "challenger": g["challenger"], "challenger_score": g.get("challenger_score", float("nan")),
            "champion_score": g.get("champion_score", float("nan")),
            # MLflow's UI opens on its GenAI view, with no Models entry: link the registered model itself
            **({"registry_page": MetadataValue.url(g["model_page"])} if g.get("model_page") else {}),
        })

    return serving_deployment


def build_live_metrics(spec) -> AssetSpec:
    """Not computed by Dagster: the streaming scorer measures it, and live_metrics_sensor records each window as an
    observation here, so live quality sits next to the lineage that produced the champion. It is never
    materialized; its description and metadata say so, since the catalog shows "Never materialized"."""
    sensor = f"{spec.name}_live_metrics_sensor"
    return AssetSpec(asset_key(spec, "live_metrics"), deps=[asset_key(spec, "serving_deployment")],
                     group_name=spec.name, kinds={"kafka", "spark"},
                     description=f"Observed, never materialized: {sensor} reads the scorer's windows from topic "
                                 f"{topic(spec, 'metrics')} and records each as an observation here (the asset's "
                                 f"Events tab and plots). Live quality of the served {spec.name} model: "
                                 f"predictions joined with the actuals that arrive later, per "
                                 f"{spec.serving.window_seconds}s window and model version.",
                     metadata={"fed_by": sensor, "topic": topic(spec, "metrics"),
                               "how": "observations from a sensor; nothing to materialize"},
                     tags={"ml_platform/observed_by": sensor})
