"""Champion/challenger traffic: the spec block, the split's routing (one function in Python and in Spark), shadow
and split through score_batch and through the Kafka scorer with a real registry, the challenger alias removed
mid-stream, live metrics per version equal to their offline recomputation, and the live promotion gate."""

import dataclasses
import hashlib
import json
import random
import string

import pytest
from pyspark.sql import functions as F

from ml_platform.serve import routing
from ml_platform.serve.messages import errors, request, topic
from ml_platform.serve.scoring import score_batch
from ml_platform.serve.watcher import ChampionWatcher, Loaded
from ml_platform.spec import SpecError, parse_spec
from tests.test_messages import _kafka_rows, _rows
from tests.test_serving import year_model


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
    # the challenger alias on the champion's own version, or mode off: no challenger
    for ch, mode in ((Loaded("1", year_model(2.0), 0.0, 0.0), "shadow"), (challenger, "off")):
        again = _score(spark, spec, sent, ch, mode)
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
