"""live_metrics_sensor: the scorer's live metrics become observations of <dataset>/live_metrics (beside the
lineage in the UI; champion and challenger side by side per window), a degradation of the champion past the spec's
threshold in N of the last M windows requests a retrain that learns from what was served, and a challenger whose
live metrics pass the live gate (serving.challenger.gate_windows) is promoted through a run of serving_deployment.

The retrain it requests is a run of <dataset>/feedback: the actuals that arrived are landed as a labelled batch, and
that batch's ingestion, cleaning and checks trigger the retrain like any batch (training_set's automation), so the
new model sees the rows the old one got wrong. A retrain of the same batches alone would reproduce the served model.
A dataset without a target (clustering) has neither live quality nor feedback: its retrain is the plain chain.

Why a run and not an alias move here: the promotion then is a materialization of serving_deployment, with its
decision and evidence in the asset's history beside every other promotion, and alias moves stay in one asset."""

import json

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.common import asset_key
from assets.serving import DEGRADED, EVIDENCE_TAG, PROMOTE_TAG, TRIGGER_TAG, window_observations
from ml_platform.serve.live import challenger_verdict, judge
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec
from ml_platform.train.registry import CHALLENGER, CHAMPION
from resources import ModelRegistryResource
from resources.kafka import KafkaResource

CHAIN = ["training_set", "feature_pipeline", "stacked_model", "serving_deployment"]


def roles(spec: DatasetSpec, registry: ModelRegistryResource) -> tuple[str | None, str | None]:
    """(champion, challenger) versions, as the scorer resolves them: a challenger on the champion's version is none.
    Without a challenger mode the registry is not asked and every window is judged, as before challengers."""
    if spec.serving.challenger.mode == "off":
        return None, None
    tracker = registry.tracker()
    champion, challenger = tracker.version_for(spec.name, CHAMPION), tracker.version_for(spec.name, CHALLENGER)
    return champion, (challenger if challenger != champion else None)


def build_live_metrics_sensor(spec: DatasetSpec, interval_seconds: int = 30) -> SensorDefinition:
    live = asset_key(spec, "live_metrics")
    deployment = asset_key(spec, "serving_deployment")
    retrain = ([asset_key(spec, "feedback")] if spec.target else
               [asset_key(spec, k) for k in CHAIN] + [asset_key(spec, f"model_{n}") for n in spec.algorithms])
    s = spec.serving
    rule = (f"{s.degrade_metric} past {s.degrade_threshold} in {s.degrade_n} of the last {s.degrade_m} windows"
            if s.degrade_metric else "no retrain rule in the spec")
    gate = (f"; promotes a challenger no worse than the champion over {s.challenger.gate_windows} windows"
            if s.challenger.gate_windows else "")

    @sensor(name=f"{spec.name}_live_metrics_sensor", asset_selection=list(dict.fromkeys([*retrain, deployment])),
            minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Reads {topic(spec, 'metrics')} into observations of {live.to_user_string()}; requests "
                        f"a retrain ({', '.join(k.to_user_string() for k in retrain[:1])}"
                        f"{' first: it lands the actuals as a batch' if spec.target else ''}) when {rule}{gate}.")
    def live_metrics_sensor(context: SensorEvaluationContext, kafka: KafkaResource, registry: ModelRegistryResource):
        cur = json.loads(context.cursor) if context.cursor else {"offsets": {}, "recent": []}
        offsets = {int(k): v for k, v in cur["offsets"].items()}
        try:
            msgs, offsets = kafka.read_new(topic(spec, "metrics"), offsets)
        except Exception as e:  # the broker is down: try again next tick, keep the cursor
            return SkipReason(f"cannot read {topic(spec, 'metrics')}: {e}")
        try:
            champion, challenger = roles(spec, registry)
        except Exception as e:  # MLflow is down: same
            return SkipReason(f"cannot read the {spec.name} aliases from the registry: {e}")
        new = sorted((m["value"] for m in msgs if isinstance(m["value"], dict) and "window_end" in m["value"]),
                     key=lambda m: m["window_end"])
        recent, degraded = judge(spec, cur["recent"], new, champion)
        cursor = json.dumps({"offsets": offsets, "recent": recent})
        runs = []
        if degraded:
            last = new[-1]["window_end"] if new else "unknown"
            runs.append(RunRequest(run_key=f"{spec.name}-degraded-{last}", asset_selection=retrain,
                                   tags={TRIGGER_TAG: DEGRADED, "ml_platform/rule": rule}))
            context.log.warning(f"{spec.name}: live quality degraded ({rule}); requesting a retrain"
                                + (" on the served requests' actuals (feedback)" if spec.target else ""))
        promote, why = challenger_verdict(spec, recent, champion, challenger)
        if promote and new:
            # run_key: one promotion request per challenger version, however many ticks still see it pass
            runs.append(RunRequest(run_key=f"{spec.name}-live-gate-{challenger}", asset_selection=[deployment],
                                   tags={TRIGGER_TAG: "challenger_live_gate", PROMOTE_TAG: challenger,
                                         EVIDENCE_TAG: why[:1000]}))
            context.log.info(f"{spec.name}: {why}; requesting its promotion")
        events = window_observations(spec, new, champion, challenger)
        if not events and not runs:
            return SensorResult(skip_reason=SkipReason(f"no new windows on {topic(spec, 'metrics')}"), cursor=cursor)
        return SensorResult(asset_events=events, run_requests=runs, cursor=cursor)

    return live_metrics_sensor
