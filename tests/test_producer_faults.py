"""The load generator under a broker stop (issue 13's fault matrix): `produce` runs against the scorer process, the
broker stops for a few seconds and restarts (about half a minute in all, KRaft start included). The generator must
not crash or drop: failed sends come back, it blocks at its pending limit and says so, every request it reports as
acknowledged is answered (a prediction or a DLQ record) and its counts add up."""

import io
import threading
import time
from collections import defaultdict

from test_scorer_faults import _start, _status, _wait

from ml_platform.local.loadgen import produce
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.kafka_io import ensure_topics, read_topic
from ml_platform.serve.messages import MAX_MESSAGE_BYTES, topic
from ml_platform.train.registry import Tracker
from tests.delivery import delivery_report
from tests.test_serving import register, year_model


def _short_timeout_producer(bootstrap: str):
    """kafka_io.producer's settings, but giving up on a batch after 6 s instead of 120 s, so that sends fail while
    the broker is away and the generator's own re-sending is exercised (its default client buffers a short outage
    by itself; the generator then only blocks at its pending limit)."""
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, key_serializer=lambda k: k.encode() if k else None,
                         linger_ms=5, max_request_size=MAX_MESSAGE_BYTES, acks="all", retries=10,
                         request_timeout_ms=3000, delivery_timeout_ms=6000)


def test_producer_survives_a_broker_restart(spark, specs, kafka, tmp_path):
    spec = specs["used_cars"]
    ensure_topics(kafka.bootstrap, spec.name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    v1 = register(spark, Tracker(uri), spec.name, year_model(1.0))
    write_batch(SimConfig("used_cars", 2400, test_share=0.5, broken_share=0.0, seed=7), 1, tmp_path / "land",
                tmp_path / "test")
    n, max_pending = 1000, 150
    state = tmp_path / "state"
    state.mkdir()
    proc = _start(kafka, uri, state)
    out, ledger, result, crash = io.StringIO(), [], {}, []

    def run():
        try:
            result.update(produce(spec, kafka.bootstrap, tmp_path / "test", rate=40, count=n, actual_delay=2,
                                  actual_drop=0.1, malformed=0.05, seed=3, out=out, max_pending=max_pending,
                                  drain_s=120, client_factory=lambda: _short_timeout_producer(kafka.bootstrap),
                                  ledger=ledger))
        except BaseException as e:  # noqa: BLE001  (reported by the assertion below)
            crash.append(e)
            raise

    try:
        _wait(lambda: _status(state).get("state") == "serving", 180, "the scorer to serve")
        sender = threading.Thread(target=run)
        sender.start()
        _wait(lambda: len(ledger) >= 200, 60, "messages acknowledged before the stop")
        kafka.stop()
        time.sleep(4)
        kafka.start()
        sender.join(300)
        assert not sender.is_alive() and not crash, (crash, out.getvalue()[-3000:])
        log = out.getvalue()

        # the counts add up: every request and every actual is acknowledged, failed, or (actuals) dropped on purpose
        good = sum(1 for kind, _ in ledger if kind == "request")
        assert result["requests"] + result["failed_requests"] == n, result
        assert result["failed_requests"] == result["failed_actuals"] == result["pending"] == 0, (result, log)
        assert good == result["requests"] - result["malformed"]  # one actual due per well-formed request:
        assert result["actuals"] + result["dropped_actuals"] == good, result
        assert len(ledger) == result["requests"] + result["actuals"] and result["malformed"] > 0
        # the outage was felt: sends failed and were sent again, and the generator said it was blocked
        assert result["retried"] > 0 and result["new_clients"] > 0, (result, log)
        assert f"blocked, {max_pending} unacknowledged" in log, log

        # nothing silently dropped: every acknowledged message is in its topic
        req_keys = {k for kind, k in ledger if kind in ("request", "malformed") and k is not None}
        assert req_keys <= {m["key"] for m in read_topic(kafka.bootstrap, topic(spec, "requests"))}
        assert {k for kind, k in ledger if kind == "actual"} <= {
            m["key"] for m in read_topic(kafka.bootstrap, topic(spec, "actuals"))}

        def answered():
            preds = read_topic(kafka.bootstrap, topic(spec, "predictions"), 2)
            return delivery_report(req_keys, preds, read_topic(kafka.bootstrap, topic(spec, "dlq"), 2)), preds

        _wait(lambda: answered()[0]["lost"] == [], 180, "every acknowledged request to be answered")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(60)
    report, preds = answered()
    versions = defaultdict(set)
    for m in preds:
        if isinstance(m["value"], dict) and m["value"].get("request_id") in req_keys:
            versions[m["value"]["request_id"]].add(m["value"]["model_version"])
    # a well-formed request is predicted, once per (request_id, model_version) after deduplicating by request_id
    assert {k for kind, k in ledger if kind == "request"} <= set(versions), report
    assert all(v == {v1} for v in versions.values())
    assert report["lost"] == [] and report["dead_lettered"] > 0, report
