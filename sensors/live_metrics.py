"""live_metrics_sensor: the scorer's live metrics become observations of <dataset>/live_metrics (beside the
lineage in the UI), and a degradation past the spec's threshold in N of the last M windows requests a retrain."""

import json

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.common import asset_key
from ml_platform.serve.live import judge
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec
from resources.kafka import KafkaResource

CHAIN = ["training_set", "feature_pipeline", "stacked_model", "serving_deployment"]


def build_live_metrics_sensor(spec: DatasetSpec, interval_seconds: int = 30) -> SensorDefinition:
    live = asset_key(spec, "live_metrics")
    retrain = [asset_key(spec, k) for k in CHAIN] + [asset_key(spec, f"model_{n}") for n in spec.algorithms]
    s = spec.serving
    rule = (f"{s.degrade_metric} past {s.degrade_threshold} in {s.degrade_n} of the last {s.degrade_m} windows"
            if s.degrade_metric else "no retrain rule in the spec")

    @sensor(name=f"{spec.name}_live_metrics_sensor", asset_selection=retrain, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Reads {topic(spec, 'metrics')} into observations of {live.to_user_string()}; requests "
                        f"a retrain when {rule}.")
    def live_metrics_sensor(context: SensorEvaluationContext, kafka: KafkaResource):
        cur = json.loads(context.cursor) if context.cursor else {"offsets": {}, "recent": []}
        offsets = {int(k): v for k, v in cur["offsets"].items()}
        try:
            msgs, offsets = kafka.read_new(topic(spec, "metrics"), offsets)
        except Exception as e:  # the broker is down: try again next tick, keep the cursor
            return SkipReason(f"cannot read {topic(spec, 'metrics')}: {e}")
        new = sorted((m["value"] for m in msgs if isinstance(m["value"], dict) and "window_end" in m["value"]),
                     key=lambda m: m["window_end"])
        recent, degraded = judge(spec, cur["recent"], new)
        cursor = json.dumps({"offsets": offsets, "recent": recent})
        events = [AssetObservation(asset_key=live, metadata={
            **{k: v for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            "model_version": str(m.get("model_version")), "window": f"{m.get('window_start')} .. {m.get('window_end')}",
            "message": MetadataValue.json(m)}) for m in new]
        runs = []
        if degraded:
            last = new[-1]["window_end"] if new else "unknown"
            runs.append(RunRequest(run_key=f"{spec.name}-degraded-{last}", asset_selection=retrain,
                                   tags={"ml_platform/trigger": "live_quality_degraded", "ml_platform/rule": rule}))
            context.log.warning(f"{spec.name}: live quality degraded ({rule}); requesting a retrain")
        if not events and not runs:
            return SensorResult(skip_reason=SkipReason(f"no new windows on {topic(spec, 'metrics')}"), cursor=cursor)
        return SensorResult(asset_events=events, run_requests=runs, cursor=cursor)

    return live_metrics_sensor
