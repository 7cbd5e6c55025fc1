"""Champion/challenger traffic: the spec block, the split's routing (one function in Python and in Spark), shadow
and split through score_batch and through the Kafka scorer with a real registry, the challenger alias removed
mid-stream, live metrics per version equal to their offline recomputation, and the live promotion gate."""

import dataclasses
import hashlib
import json
import random

import pytest
from pyspark.sql import functions as F

from ml_platform.serve import routing
from ml_platform.serve.kafka_io import producer
from ml_platform.serve.messages import errors, request, topic
from ml_platform.serve.scoring import score_batch
from ml_platform.serve.watcher import ChampionWatcher, Loaded
from ml_platform.spec import SpecError, parse_spec
from tests.test_messages import _kafka_rows, _rows
from tests.test_serving import served, year_model  # noqa: F401 - served is a fixture


def _spec_data(**challenger) -> dict:
    return {"name": "t", "task": "regression", "target": "y", "columns": [
        {"name": "k", "parse": "string"}, {"name": "y", "parse": "number"}], "serving": {"challenger": challenger}}


def test_spec_challenger_block_defaults_and_errors():
    assert parse_spec(_spec_data(), "t.yaml").serving.challenger.mode == "off"
    c = parse_spec(_spec_data(mode="split", share=0.25, gate_windows=3), "t.yaml").serving.challenger
    assert (c.mode, c.share, c.gate_windows) == ("split", 0.25, 3)
    for bad, message in [
        ({"mode": "canary"}, "spec t.yaml: serving.challenger.mode must be one of off, shadow, split, got 'canary'"),
        ({"mode": "split", "share": 1.0}, r"serving.challenger.share must be a number in \(0, 1\)"),
        ({"mode": "split", "share": 0}, r"serving.challenger.share must be a number in \(0, 1\)"),
        ({"mode": "split", "share": "10%"}, r"serving.challenger.share must be a number in \(0, 1\)"),
        ({"mode": "shadow", "gate_windows": -1}, "gate_windows must be a whole number of windows >= 0"),
        ({"gate_windows": 2}, "gate_windows needs mode shadow or split"),
        ({"mode": "shadow", "shares": 0.1}, "serving.challenger has unknown field 'shares'; allowed: mode, share, "
                                            "gate_windows"),
    ]:
        with pytest.raises(SpecError, match=message):
            parse_spec(_spec_data(**bad), "t.yaml")
    with pytest.raises(SpecError, match="serving.challenger must be a mapping"):
        parse_spec(_spec_data() | {"serving": {"challenger": "shadow"}}, "t.yaml")


def test_routing_is_the_same_function_in_python_and_in_spark(spark):
    rng = random.Random(5)
    printable = [chr(c) for c in range(0x21, 0x7F)]  # what a valid request_id is made of
    ids = [c for c in printable] + [f"r{i}" for i in range(2000)]
    ids += ["".join(rng.choice(printable) for _ in range(rng.randint(1, 200))) for _ in range(3000)]
    ids += ["é", "наш-id", "id-☃", "日本", "a b\tc"]  # never valid ids, but the hash is UTF-8 on both sides alike
    df = spark.createDataFrame([(i,) for i in ids], "rid string")
    got = df.select("rid", (F.crc32(F.col("rid").cast("binary")) % routing.BUCKETS).alias("b"),
                    *[routing.in_challenger_column("rid", s).alias(f"s{j}") for j, s in enumerate((0.1, 0.5, 0.93))]
                    ).collect()
    assert len(got) == len(ids)
    for r in got:
        assert r["b"] == routing.bucket(r["rid"]), r["rid"]
        assert [r["s0"], r["s1"], r["s2"]] == [routing.in_challenger(r["rid"], s) for s in (0.1, 0.5, 0.93)]
    assert routing.threshold(0.1) == 1000 and not routing.in_challenger("x", 0.0) and routing.in_challenger("x", 1.0)


def _score(spark, spec, sent, challenger, mode, share=None):
    out, cached = score_batch(_kafka_rows(spark, spec, sent), spec, year_model(1.0), spec.name, "1",
                              spec.serving.max_request_bytes, challenger=challenger, mode=mode, share=share)
    try:
        return [(r["topic"], r["key"], json.loads(r["value"])) for r in out.collect()]
    finally:
        for df in cached:
            df.unpersist()


def _requests(spec, n, prefix="q"):
    rows = _rows(spec, 40)
    return [(f"{prefix}{i}", json.dumps(request(spec, f"{prefix}{i}", rows[i % len(rows)])).encode())
            for i in range(n)]


def test_shadow_answers_with_the_champion_and_sends_the_challenger_to_the_shadow_topic(spark, specs):
    spec = specs["used_cars"]
    sent = _requests(spec, 30) + [("junk", b"not json")]
    challenger = Loaded("2", year_model(2.0), 0.0, 0.0)
    got = _score(spark, spec, sent, challenger, "shadow")
    by = {k: [(key, m) for t, key, m in got if t == topic(spec, k)] for k in ("predictions", "shadow", "dlq")}
    assert len(by["predictions"]) + len(by["dlq"]) == len(sent)  # one served output per request
    assert {m["model_version"] for _, m in by["predictions"]} == {"1"}
    assert {m["model_version"] for _, m in by["shadow"]} == {"2"}
    assert sorted(k for k, _ in by["shadow"]) == sorted(k for k, _ in by["predictions"])  # every scored request
    values = dict(sent)
    for kind in ("predictions", "shadow"):
        for key, m in by[kind]:
            assert errors(kind, m) == [] and m["input_sha256"] == hashlib.sha256(values[key]).hexdigest()
    champion = {k: m["prediction"] for k, m in by["predictions"]}
    assert all(m["prediction"] == 2 * champion[k] for k, m in by["shadow"])
    # the challenger alias on the champion's own version: no challenger
    again = _score(spark, spec, sent, Loaded("1", year_model(2.0), 0.0, 0.0), "shadow")
    assert {t for t, _, _ in again} == {topic(spec, "predictions"), topic(spec, "dlq")}


def test_split_answers_a_stable_share_by_request_id_hash(spark, specs):
    spec = specs["used_cars"]
    sent = _requests(spec, 400, prefix="split-")
    challenger = Loaded("2", year_model(2.0), 0.0, 0.0)
    first = _score(spark, spec, sent, challenger, "split", 0.3)
    second = _score(spark, spec, list(reversed(sent)), challenger, "split", 0.3)  # another batch, another order
    assert {t for t, _, _ in first} == {topic(spec, "predictions")} and len(first) == len(sent)
    versions = {k: m["model_version"] for _, k, m in first}
    assert versions == {k: m["model_version"] for _, k, m in second}  # stable per request_id
    assert versions == {k: "2" if routing.in_challenger(k, 0.3) else "1" for k, _ in sent}
    share = sum(v == "2" for v in versions.values()) / len(versions)
    assert 0.22 <= share <= 0.38, share  # 0.3 +- 3.5 standard deviations of 400 draws
    assert all(errors("predictions", m) == [] for _, _, m in first)


def test_a_removed_challenger_alias_stops_the_challenger_between_batches():
    alias = {"v": "2"}
    logs = []
    w = ChampionWatcher(lambda: alias["v"], lambda v: f"model-{v}", log=logs.append, alias="challenger",
                        drop_when_gone=True)
    assert w.check() and w.take().version == "2"
    alias["v"] = None
    assert not w.check()
    assert w.current.version == "2"  # still this micro-batch's model until the next take
    assert w.take() is None and w.take() is None
    assert w.swaps[-1][:2] == ("2", None) and "challenger alias is gone" in logs[-1]
    alias["v"] = "3"
    assert w.check() and w.take().version == "3"
    champion = ChampionWatcher(lambda: alias["v"], lambda v: f"model-{v}", log=logs.append)
    assert champion.check() and champion.take().version == "3"
    alias["v"] = None  # a champion alias removed by hand: keep serving rather than stop all traffic
    assert not champion.check() and champion.take().version == "3"


def _m(start: int, version: str, rmse: float, count: int = 50) -> dict:
    return {"dataset": "t", "window_start": f"2026-11-23T10:{start:02d}:00Z",
            "window_end": f"2026-11-23T10:{start + 1:02d}:00Z", "model_version": version, "count": count,
            "rmse": rmse, "mae": rmse / 2}


def _gated(spec, n=3, mode="shadow"):
    return dataclasses.replace(spec, serving=dataclasses.replace(spec.serving, challenger=dataclasses.replace(
        spec.serving.challenger, mode=mode, gate_windows=n)))


def test_the_live_gate_needs_n_paired_windows_no_worse(specs):
    from ml_platform.serve.live import challenger_verdict, judge

    spec = _gated(specs["used_cars"])  # rmse: lower is better; min_window_count 20
    ok = [m for i in range(3) for m in (_m(i, "1", 1000.0), _m(i, "2", 1000.0 - i))]
    assert challenger_verdict(spec, ok, "1", "2")[0]
    assert not challenger_verdict(spec, ok[:-1], "1", "2")[0]  # two paired windows of three
    assert "2 of 3 windows" in challenger_verdict(spec, ok[:-1], "1", "2")[1]
    worse = ok + [_m(3, "1", 1000.0), _m(3, "2", 1000.5)]
    promote, why = challenger_verdict(spec, worse, "1", "2")
    assert not promote and "worse than champion 1 in 1 of the last 3" in why
    thin = ok[:4] + [_m(2, "1", 1000.0), _m(2, "2", 900.0, count=5)]  # too few joined predictions to judge
    assert not challenger_verdict(spec, thin, "1", "2")[0]
    assert challenger_verdict(spec, thin + [_m(4, "1", 10.0), _m(4, "2", 10.0)], "1", "2")[0]
    assert not challenger_verdict(spec, ok, "1", None)[0] and not challenger_verdict(spec, ok, "1", "1")[0]
    assert not challenger_verdict(_gated(specs["used_cars"], 0), ok, "1", "2")[0]
    # a challenger's bad windows never retrain the champion; the memory keeps both versions' last windows
    bad = [m for i in range(5) for m in (_m(i, "1", 100.0), _m(i, "2", 99999.0))]
    recent, retrain = judge(spec, [], bad, champion="1")
    assert not retrain and {m["model_version"] for m in recent} == {"1", "2"} and len(recent) == 10
    assert judge(spec, [], bad, champion="2")[1]


def test_sensor_shows_versions_side_by_side_and_requests_the_promotion(specs, kafka, tmp_path):
    from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize

    from assets import build_dataset_assets
    from assets.serving import EVIDENCE_TAG, PROMOTE_TAG
    from ml_platform.serve.kafka_io import ensure_topics, producer
    from ml_platform.train.registry import CHALLENGER, CHAMPION, PREVIOUS
    from resources import KafkaResource, LocalSparkResource, LocalStorage, MlflowRegistry
    from sensors import build_live_metrics_sensor

    spec = _gated(dataclasses.replace(specs["used_cars"], name="t_gate"), n=2)
    ensure_topics(kafka.bootstrap, spec.name)
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    tracker = registry.tracker()
    tracker.client.create_registered_model(spec.name)
    for _ in range(2):  # the gate moves aliases only: no model artifact needed
        tracker.client.create_model_version(spec.name, source=str(tmp_path / "none"), tags={"checks": "passed"})
    tracker.promote(spec.name, "1")
    tracker.set_alias(spec.name, CHALLENGER, "2")
    sensor = build_live_metrics_sensor(spec)
    resources = {"kafka": KafkaResource(bootstrap_servers=kafka.bootstrap), "registry": registry}

    def tick(cursor):
        with DagsterInstance.ephemeral() as instance:
            return sensor(build_sensor_context(cursor=cursor, resources=resources, instance=instance))

    def send(windows):
        p = producer(kafka.bootstrap)
        for w in windows:
            p.send(topic(spec, "metrics"), key=w["window_start"], value=json.dumps(w).encode())
        p.flush()
        p.close()

    send([_m(0, "1", 4000.0), _m(0, "2", 3900.0)])
    r = tick(None)
    assert len(r.asset_events) == 1 and not r.run_requests  # one window of two
    md = r.asset_events[0].metadata
    assert md["rmse"].value == 4000.0 and md["challenger rmse"].value == 3900.0
    assert md["model_version"].value == "1" and md["challenger_model_version"].value == "2"
    table = md["versions"].value
    assert table.splitlines()[0] == "| metric | v1 (champion) | v2 (challenger) |" and "| rmse | 4000 | 3900 |" in table
    send([_m(1, "1", 4000.0), _m(1, "2", 4000.0)])
    r = tick(r.cursor)
    assert len(r.run_requests) == 1
    req = r.run_requests[0]
    assert req.tags[PROMOTE_TAG] == "2" and "no worse than champion 1" in req.tags[EVIDENCE_TAG]
    assert [k.path for k in req.asset_selection] == [[spec.name, "serving_deployment"]]

    # the requested run: serving_deployment promotes that challenger, without Spark or a holdout
    key = AssetKey([spec.name, "serving_deployment"])
    deployment = next(a for a in build_dataset_assets(spec) if key in a.keys)
    storage = LocalStorage(root=str(tmp_path / "data"))
    result = materialize([deployment], tags=req.tags, resources={
        "spark": LocalSparkResource(storage=storage), "registry": registry})
    meta = [e for e in result.get_asset_materialization_events() if e.asset_key == key][0].materialization.metadata
    assert meta["promoted"].value is True and meta["champion_after"].value == "2"
    assert tracker.version_for(spec.name, CHAMPION) == "2" and tracker.version_for(spec.name, PREVIOUS) == "1"
    assert "live gate" in tracker.version_tags(spec.name, "2")["decision"]


def test_the_scorer_shadows_a_challenger_until_its_alias_is_removed(spark, served, kafka):  # noqa: F811
    """Real registry, real broker: predictions carry only the champion's version, the shadow topic the
    challenger's for every request; live metrics per version equal their offline recomputation; removing the
    alias (or pointing it at the champion) stops the challenger at the next micro-batch."""
    from ml_platform.serve.kafka_io import read_topic
    from ml_platform.serve.watcher import registry_watcher
    from ml_platform.train.registry import CHALLENGER
    from spark_streaming.scorer import scoring_query
    from tests.test_serving import _run, _send, live_and_offline, register

    spec, tracker, rows, status, tmp = served
    spec = _gated(spec, n=0)
    v1 = register(spark, tracker, spec.name, year_model(1.0))
    v2 = register(spark, tracker, spec.name, year_model(2.0), promote=False)  # registered as challenger
    champion = registry_watcher(spec.name, tracker.uri, 0.2, logger=lambda _: None)
    challenger = registry_watcher(spec.name, tracker.uri, 0.2, logger=lambda _: None, alias=CHALLENGER)
    assert champion.check() and challenger.check()
    assert champion.take().version == v1 and challenger.take().version == v2
    base = "2026-11-23T10:00:{:02d}.000Z"
    reqs = [(f"h{i}", json.dumps(request(spec, f"h{i}", rows[i], base.format(i % 20))).encode()) for i in range(60)]
    reqs.append(("late", json.dumps(request(spec, "late", rows[0], "2026-11-23T10:05:00.000Z")).encode()))
    acts = [(f"h{i}", {"request_id": f"h{i}", "event_time": base.format(i % 20 + 3), "actual": 20000.0 + i})
            for i in range(60) if i % 3] + [("late", {"request_id": "late", "event_time": "2026-11-23T10:05:01Z",
                                                        "actual": 1.0})]
    _send(kafka.bootstrap, spec, reqs)
    p = producer(kafka.bootstrap)
    for key, value in acts:
        p.send(topic(spec, "actuals"), key=key, value=json.dumps(value).encode())
    p.flush()
    p.close()
    ckpt = str(tmp / "score")
    _run(scoring_query(spark, spec, champion, kafka.bootstrap, ckpt, status, challenger=challenger))
    preds = read_topic(kafka.bootstrap, topic(spec, "predictions"))
    shadow = read_topic(kafka.bootstrap, topic(spec, "shadow"))
    assert len(preds) == len(reqs) and {m["value"]["model_version"] for m in preds} == {v1}
    assert sorted(m["key"] for m in shadow) == sorted(k for k, _ in reqs)
    assert {m["value"]["model_version"] for m in shadow} == {v2}
    assert all(errors("shadow", m["value"]) == [] for m in shadow)
    state = json.loads(status.path.read_text())
    assert (state["model_version"], state["challenger_version"], state["challenger_mode"]) == (v1, v2, "shadow")
    assert state["shadow"] == len(reqs) and state["requests"] == len(reqs)

    live, closed = live_and_offline(spark, spec, kafka, tmp, status, preds + shadow)
    assert {v for _, v in closed} == {v1, v2} and set(closed) <= set(live)
    for k, m in closed.items():
        assert live[k]["count"] == m["count"] > 0 and live[k]["rmse"] == pytest.approx(m["rmse"])
    assert sum(m["count"] for k, m in closed.items() if k[1] == v2) == 40  # every joined request, per version

    tracker.set_alias(spec.name, CHALLENGER, None)  # removed mid-stream
    assert not challenger.check()
    _send(kafka.bootstrap, spec, [(f"after{i}", json.dumps(request(spec, f"after{i}", rows[i])).encode())
                                  for i in range(10)])
    _run(scoring_query(spark, spec, champion, kafka.bootstrap, ckpt, status, challenger=challenger))
    after = [m for m in read_topic(kafka.bootstrap, topic(spec, "predictions")) if m["key"].startswith("after")]
    assert len(after) == 10 and {m["value"]["model_version"] for m in after} == {v1}
    assert len(read_topic(kafka.bootstrap, topic(spec, "shadow"))) == len(reqs)  # no shadow since
    assert challenger.current is None and json.loads(status.path.read_text())["challenger_version"] is None
    tracker.set_alias(spec.name, CHALLENGER, v1)  # the alias on the champion's version: still no challenger
    assert not challenger.check() and challenger.take() is None
