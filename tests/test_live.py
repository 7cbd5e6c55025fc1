"""Live-quality rules without Spark, and the live-metrics sensor against a real broker."""

import dataclasses
import json

from dagster import DagsterInstance, build_sensor_context

from ml_platform.serve.kafka_io import ensure_topics, producer
from ml_platform.serve.live import degraded, judge, pr_auc_approx
from ml_platform.serve.messages import topic
from resources import KafkaResource, MlflowRegistry
from sensors import build_live_metrics_sensor


def _w(i, rmse, count=50):
    return {"window_start": f"2026-11-23T10:{i:02d}:00Z", "window_end": f"2026-11-23T10:{i + 1:02d}:00Z",
            "model_version": "1", "count": count, "rmse": rmse}


def test_pr_auc_approx_matches_average_precision_when_bins_separate_scores():
    # scores 0.95 (pos), 0.85 (neg), 0.75 (pos), 0.05 (neg): AP = 1/2 * 1 + 1/2 * 2/3
    pos, neg = [0] * 20, [0] * 20
    pos[19], neg[17], pos[15], neg[1] = 1, 1, 1, 1
    assert abs(pr_auc_approx(pos, neg) - (0.5 + 0.5 * 2 / 3)) < 1e-12
    assert pr_auc_approx([0] * 20, neg) is None


def test_degradation_needs_n_of_the_last_m_judged_windows(specs):
    spec = specs["used_cars"]  # rmse above 9000 in 3 of the last 5
    assert not degraded(spec, [_w(0, 9500), _w(1, 9500), _w(2, 100), _w(3, 100)])
    assert degraded(spec, [_w(0, 9500), _w(1, 100), _w(2, 9500), _w(3, 9500)])
    assert not degraded(spec, [_w(i, 9500, count=3) for i in range(5)])  # too few joined predictions to judge
    assert not degraded(spec, [_w(0, 9500), _w(1, 9500), _w(2, 9500)][:2] + [_w(i, 1) for i in range(3, 8)])
    recent, retrain = judge(spec, [_w(0, 9500), _w(1, 9500)], [_w(2, 9999)])
    assert retrain and recent == []  # one degradation asks once


def test_sensor_observes_windows_and_requests_one_retrain(specs, kafka, tmp_path):
    spec = dataclasses.replace(specs["used_cars"], name="t_sensor")
    ensure_topics(kafka.bootstrap, spec.name)
    sensor = build_live_metrics_sensor(spec)
    resources = {"kafka": KafkaResource(bootstrap_servers=kafka.bootstrap),
                 "registry": MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")}

    def tick(cursor):
        with DagsterInstance.ephemeral() as instance:
            ctx = build_sensor_context(cursor=cursor, resources=resources, instance=instance)
            return sensor(ctx)

    def send(windows):
        p = producer(kafka.bootstrap)
        for w in windows:
            p.send(topic(spec, "metrics"), key=w["window_start"], value=json.dumps(w).encode())
        p.flush()
        p.close()

    first = tick(None)
    assert first.skip_reason is not None and not first.run_requests
    send([_w(0, 4000), _w(1, 9500), _w(2, 9600)])
    r = tick(first.cursor)
    assert len(r.asset_events) == 3 and not r.run_requests
    obs = r.asset_events[1]
    assert obs.asset_key.path == [spec.name, "live_metrics"] and obs.metadata["rmse"].value == 9500
    assert json.loads(r.cursor)["offsets"]  # resumes after what it read
    send([_w(3, 9700)])
    r2 = tick(r.cursor)
    assert len(r2.asset_events) == 1 and len(r2.run_requests) == 1
    req = r2.run_requests[0]
    assert req.tags["ml_platform/trigger"] == "live_quality_degraded"
    # the retrain learns from the served requests: their actuals land as a batch, whose cleaning triggers it
    assert [k.path for k in req.asset_selection] == [[spec.name, "feedback"]]
    r3 = tick(r2.cursor)
    assert r3.skip_reason is not None and not r3.run_requests  # nothing new: no second request
