"""<dataset>/serving_deployment: the promotion gate. The scorer serves whatever the `champion` alias points at (and,
in shadow or split mode, the `challenger` beside it). <dataset>/live_metrics: the scorer's windows, champion and
challenger side by side."""

from dagster import (
    AssetExecutionContext,
    AssetObservation,
    AssetsDefinition,
    AssetSpec,
    AutomationCondition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.common import asset_key, run_job, upstream_value
from assets.training import FOLLOW
from ml_platform.serve.messages import topic
from ml_platform.train.release import promote_after_live_gate
from resources import ModelRegistryResource, PredictionStoreResource, SparkResource
from resources.kafka import KafkaResource

# run tags of a promotion requested by the live gate (sensors/live_metrics.py)
PROMOTE_TAG, EVIDENCE_TAG = "ml_platform/promote_version", "ml_platform/live_gate"
# the run tag of a run the live-metrics sensor requested because the champion's live quality degraded
TRIGGER_TAG, DEGRADED = "ml_platform/trigger", "live_quality_degraded"
METRICS = ("count", "rmse", "mae", "precision", "recall", "pr_auc_approx", "positives")


def build_feedback(spec) -> AssetsDefinition:
    cron = spec.serving.feedback_cron
    when = f"on cron '{cron}' and " if cron else ""

    @asset(key=asset_key(spec, "feedback"), group_name=spec.name, kinds={"spark", "kafka"},
           automation_condition=AutomationCondition.on_cron(cron) if cron else None,
           description=f"The true labels on {topic(spec, 'actuals')}, joined to their requests on "
                       f"{topic(spec, 'requests')} and checked against the prediction store, landed as a batch file "
                       f"feedback-*.csv that is ingested, cleaned, checked and trained on like any batch. Collected "
                       f"{when}when live quality degrades (then any number of rows; otherwise at least "
                       f"{spec.serving.feedback_min_rows}).")
    def feedback(context: AssetExecutionContext, spark: SparkResource, kafka: KafkaResource,
                 predictions: PredictionStoreResource):
        degraded = context.run.tags.get(TRIGGER_TAG) == DEGRADED
        s = run_job(context, spark, spec, "feedback", {
            "bootstrap": kafka.bootstrap_servers, **predictions.describe(),
            "min_rows": 1 if degraded else spec.serving.feedback_min_rows})
        what = (f"landed {s['rows']} labelled rows as {s['file']}: the new-batch sensor ingests it and the retrain "
                f"follows" if s["file"] else s.get("note", "nothing landed"))
        context.log.info(f"{spec.name} feedback: {what}; left out {s['left_out'] or 'none'}")
        return MaterializeResult(metadata={
            "file": s["file"] or "none", "dagster/row_count": s["rows"], "verified": s["verified"],
            "unverified": s["unverified"], "actuals_read": s["actuals_read"],
            "left_out": MetadataValue.json(s["left_out"]), "left_out_examples": MetadataValue.json(s["examples"]),
            "cursor": MetadataValue.json(s["cursor_after"]), "outcome": what})

    return feedback


def build_recommendations(spec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "recommendations"), deps=[asset_key(spec, "stacked_model")], group_name=spec.name,
           kinds={"spark", "delta"}, automation_condition=FOLLOW,
           description=f"Every known {spec.name} user's top {spec.recommend.top_n} items they have not seen, by the "
                       f"version's served recommender (user, rank, item, score).")
    def recommendations(context: AssetExecutionContext, spark: SparkResource):
        version = upstream_value(context, [asset_key(spec, "stacked_model")], "version")
        s = run_job(context, spark, spec, "top_n", {"version": version})
        return MaterializeResult(metadata={"users": s["users"], "dagster/row_count": s["rows"], "version": version,
                                           "path": MetadataValue.path(s["path"])})

    return recommendations


def build_serving_deployment(spec) -> AssetsDefinition:
    @asset(key=asset_key(spec, "serving_deployment"), deps=[asset_key(spec, "stacked_model")], group_name=spec.name,
           kinds={"mlflow"}, automation_condition=FOLLOW,
           description=f"Which {spec.name} model is served: the challenger becomes champion only if it beats the "
                       f"champion on the same holdout by the spec's margin (or there is none)"
                       + (f", and then only once its live metrics are no worse than the champion's over "
                          f"{spec.serving.challenger.gate_windows} windows (served as {spec.serving.challenger.mode} "
                          f"challenger meanwhile)" if spec.serving.challenger.gate_windows else "")
                       + f". Roll back with `ml-platform rollback {spec.name}`.")
    def serving_deployment(context: AssetExecutionContext, spark: SparkResource, registry: ModelRegistryResource):
        live = context.run.tags.get(PROMOTE_TAG)
        if live:  # the live gate passed: promote that challenger, no holdout scoring (no Spark)
            g = promote_after_live_gate(registry.tracker(), spec, live, context.run.tags.get(EVIDENCE_TAG, ""))
        else:
            challenger = upstream_value(context, [asset_key(spec, "stacked_model")], "model_version")
            g = run_job(context, spark, spec, "promote", {"challenger": challenger}, registry)
        context.log.info(g["decision"])
        return MaterializeResult(metadata={
            "decision": g["decision"], "promoted": g["promoted"], "metric": g["metric"], "margin": g["margin"],
            "champion_before": g["champion_before"] or "none", "champion_after": g["champion_after"] or "none",
            "challenger": g["challenger"], "challenger_score": g.get("challenger_score", float("nan")),
            "champion_score": g.get("champion_score", float("nan")),
            **({"live_gate": g["evidence"]} if g.get("evidence") else {}),
            **({"challenger_serving": g["challenger_serving"]} if g.get("challenger_serving") else {}),
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
                                 f"{spec.serving.window_seconds}s window and model version; with a challenger, "
                                 f"each window's table shows champion and challenger side by side.",
                     metadata={"fed_by": sensor, "topic": topic(spec, "metrics"),
                               "how": "observations from a sensor; nothing to materialize"},
                     tags={"ml_platform/observed_by": sensor})


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def window_table(windows: list[dict], roles: dict[str, str]) -> str:
    """One window's metrics messages as a markdown table: a row per metric, a column per model version, the
    champion first; `roles` names versions (champion, challenger)."""
    order = {"champion": 0, "challenger": 1}
    ms = sorted(windows, key=lambda m: (order.get(roles.get(str(m["model_version"])), 2), str(m["model_version"])))
    heads = [f"v{m['model_version']}" + (f" ({roles[str(m['model_version'])]})" if str(m["model_version"]) in roles
                                          else "") for m in ms]
    rows = [f"| {k} | " + " | ".join(_fmt(m.get(k)) for m in ms) + " |" for k in METRICS if any(k in m for m in ms)]
    return "\n".join([f"| metric | {' | '.join(heads)} |", "|---" * (len(ms) + 1) + "|", *rows])


def window_observations(spec, new: list[dict], champion: str | None, challenger: str | None,
                        ) -> list[AssetObservation]:
    """One observation of <dataset>/live_metrics per window: the champion's numbers as plain metadata (the plots;
    the only version's when one served), the challenger's as `challenger <metric>`, and the side-by-side table."""
    roles = {v: r for v, r in ((champion, "champion"), (challenger, "challenger")) if v}
    by_window: dict[tuple[str, str], list[dict]] = {}
    for m in new:
        by_window.setdefault((m.get("window_start"), m.get("window_end")), []).append(m)
    out = []
    for (start, end), ms in sorted(by_window.items(), key=lambda kv: str(kv[0][1])):
        cp = next((m for m in ms if str(m.get("model_version")) == champion), None)
        ch = next((m for m in ms if challenger and str(m.get("model_version")) == challenger), None)
        if cp is None and ch is None:  # roles unknown (no challenger mode, or a past version): the busiest one
            cp = max(ms, key=lambda m: m.get("count", 0))
        meta = {}
        for prefix, m in (("", cp), ("challenger ", ch)):
            if m is not None:
                meta |= {f"{prefix}{k}": v for k, v in m.items()
                         if isinstance(v, int | float) and not isinstance(v, bool)}
                meta[f"{prefix}model_version".replace(" ", "_")] = str(m.get("model_version"))
        out.append(AssetObservation(asset_key=asset_key(spec, "live_metrics"), metadata={
            **meta, "window": f"{start} .. {end}", "versions": MetadataValue.md(window_table(ms, roles)),
            "message": MetadataValue.json(ms[0] if len(ms) == 1 else ms)}))
    return out
