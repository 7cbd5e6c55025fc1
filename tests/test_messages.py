"""The message contracts: the JSON Schemas hold what the scorer's Spark functions, the builders and the live
metrics actually write, for all five kinds; each schema rejects a wrong message; and the request_id rule is one
rule in Python, in the schema and in Spark."""

import json
import random
from datetime import UTC, datetime

import pytest

from ml_platform.local.loadgen import BAD_REQUEST_IDS, FUZZ_KINDS, fuzz
from ml_platform.local.simulate import batch_text_chunks
from ml_platform.serve import messages
from ml_platform.serve.live import BINS, finish
from ml_platform.serve.messages import (
    DLQ_EXCERPT_CHARS,
    DLQ_KEY_CHARS,
    REQUEST_ID_PATTERN,
    ContractError,
    errors,
    topic,
    validate,
)
from ml_platform.serve.scoring import score_batch
from tests.test_serving import year_model

KAFKA_ROW = "topic string, partition int, offset long, key binary, value binary"


def _rows(spec, n=12):
    import csv
    import io

    from ml_platform.local.simulate import SimConfig

    text = "".join(t for t, _, _ in batch_text_chunks(SimConfig("used_cars", n, broken_share=0.0, seed=4), 1))
    return list(csv.DictReader(io.StringIO(text)))


def _kafka_rows(spark, spec, messages_):
    req = topic(spec, "requests")
    return spark.createDataFrame([(req, 0, i, k.encode() if k else None, v) for i, (k, v) in enumerate(messages_)],
                                 KAFKA_ROW)


def test_scorer_output_matches_the_prediction_and_dlq_schemas(spark, specs):
    spec = specs["used_cars"]
    rows = _rows(spec)
    rng = random.Random(2)
    sent = [(f"g{i}", json.dumps(messages.request(spec, f"g{i}", r)).encode()) for i, r in enumerate(rows)]
    sent += [fuzz(spec, kind, f"z{j}", rows[j % len(rows)], rng) for j, kind in enumerate(FUZZ_KINDS * 2)]
    control = b"\x01" * (1024 * 1024)
    sent += [("ctl", control), ("tomb", None), ("k" * 5000, b"not json, and a 5000-character Kafka key")]
    out, cached = score_batch(_kafka_rows(spark, spec, sent), spec, year_model(1.0), spec.name, "3",
                              spec.serving.max_request_bytes)
    try:
        got = [(r["topic"], r["key"], json.loads(r["value"])) for r in out.collect()]
    finally:
        for df in cached:
            df.unpersist()
    assert len(got) == len(sent)  # one message out for every message in
    kinds = {topic(spec, "predictions"): "predictions", topic(spec, "dlq"): "dlq"}
    for t, key, msg in got:
        assert errors(kinds[t], msg) == [], (t, key, msg)
    preds = {k: m for t, k, m in got if kinds[t] == "predictions"}
    dlq = {k: m for t, k, m in got if kinds[t] == "dlq"}
    assert {f"g{i}" for i in range(len(rows))} <= set(preds)
    assert all(preds[f"g{i}"]["prediction"] == float(r["year"]) for i, r in enumerate(rows))
    big = dlq["ctl"]  # the 1 MB of control bytes: a bounded record, not 6 MB of escapes
    assert big["raw"] == "\x01" * DLQ_EXCERPT_CHARS and big["raw_truncated"] is True
    assert big["raw_bytes"] == len(control) and "too large" in big["reason"]
    import hashlib

    assert big["raw_sha256"] == hashlib.sha256(control).hexdigest()
    assert len(json.dumps(big)) < 20_000
    assert dlq["tomb"]["raw"] is None and dlq["tomb"]["raw_truncated"] is False
    assert "k" * DLQ_KEY_CHARS in dlq and max(len(k) for k in dlq if k) == DLQ_KEY_CHARS  # the key is bounded too


def test_request_validation_rejects_trailing_text_and_bad_request_ids(spark, specs):
    spec = specs["used_cars"]
    row = _rows(spec, 4)[0]
    good = messages.request(spec, "ok-1", row)

    def text(rid):  # each message has its own request_id, the key of its output message
        return json.dumps(good | {"request_id": rid})

    sent = [("ok-1", text("ok-1").encode()), ("spaced", (" \n" + text("spaced") + " \t\n").encode()),
            ("brace", json.dumps(good | {"request_id": "brace", "description": 'has } and { and \\" in'}).encode())]
    trailing = [" xyz", " {}", "}", ",1", '\n"more"', "]"]
    sent += [(f"t{i}", (text(f"t{i}") + t).encode()) for i, t in enumerate(trailing)]
    sent += [(f"b{i}", json.dumps(good | {"request_id": bad}).encode()) for i, bad in enumerate(BAD_REQUEST_IDS)]
    sent += [("twice", (text("twice")[:-1] + ', "request_id": {"x": 1}}').encode())]
    out, cached = score_batch(_kafka_rows(spark, spec, sent), spec, year_model(1.0), spec.name, "1",
                              spec.serving.max_request_bytes)
    try:
        got = {r["key"]: (r["topic"], json.loads(r["value"])) for r in out.collect()}
    finally:
        for df in cached:
            df.unpersist()
    assert len(got) == len(sent)
    assert {k for k, (t, _) in got.items() if t.endswith(".predictions")} == {"ok-1", "spaced", "brace"}
    for i in range(len(trailing)):
        t, m = got[f"t{i}"]
        assert t.endswith(".dlq") and m["reason"].startswith("not a single JSON object"), (trailing[i], m)
    for i in range(len(BAD_REQUEST_IDS)):
        t, m = got[f"b{i}"]
        assert t.endswith(".dlq") and m["reason"].startswith("invalid request_id"), (BAD_REQUEST_IDS[i], m)
    assert got["twice"][1]["reason"].startswith("invalid request_id")


def test_request_id_rule_is_one_rule_in_python_the_schema_and_spark(spark, specs):
    from pyspark.sql import functions as F

    ids = ["abc", "A-1_x.y:z/9", "x" * 200, "x" * 201, "", "a b", "a\tb", "abc\n", "\nabc", "é", "a\x7fb", "{}",
           "\x01"]
    py = [messages.valid_request_id(i) for i in ids]
    schema = [not [e for e in errors("requests", {"request_id": i, "event_time": "2026-11-23T10:00:00Z"})]
              for i in ids]
    df = spark.createDataFrame([(i,) for i in ids], "id string")
    sp = [r[0] for r in df.select(F.col("id").rlike(REQUEST_ID_PATTERN)).collect()]
    assert py == schema == sp
    assert py == [True, True, True, False, False, False, False, False, False, False, False, True, False]
    assert not messages.valid_request_id(12345)  # a number is not an id (decided: no coercion to "12345")


def test_builders_and_live_metrics_match_their_schemas(specs):
    spec = specs["used_cars"]
    row = _rows(spec, 3)[0]
    req = messages.request(spec, "r-1", row)
    assert validate("requests", req) is req and spec.target not in req
    act = messages.actual("r-1", 12345.0)
    assert json.loads(messages.encode("actuals", act)) == act
    with pytest.raises(ValueError):  # NaN is no JSON number: encode refuses it rather than write a NaN token
        messages.encode("actuals", messages.actual("r-1", float("nan")))
    with pytest.raises(ContractError, match="request_id"):
        messages.encode("requests", messages.request(spec, "has space", row))
    w0, w1 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC), datetime(2026, 11, 23, 10, 1, tzinfo=UTC)
    reg = finish(spec, {"count": 4, "sse": 400.0, "sae": 30.0, "window_start": w0, "window_end": w1,
                        "model_version": 2})
    assert validate("metrics", reg)["rmse"] == 10.0 and reg["model_version"] == "2"
    fraud = specs["fraud"]
    bins = {f"pos_{i}": int(i == 19) for i in range(BINS)} | {f"neg_{i}": int(i == 0) for i in range(BINS)}
    cls = finish(fraud, {"count": 2, "tp": 1, "fp": 0, "fn": 0, "positives": 1, "window_start": w0,
                         "window_end": w1, "model_version": "1"} | bins)
    assert validate("metrics", cls)["pr_auc_approx"] == 1.0
    none = finish(fraud, {"count": 1, "tp": 0, "fp": 0, "fn": 0, "positives": 0, "window_start": w0,
                          "window_end": w1, "model_version": "1"} | {k: 0 for k in bins})
    assert validate("metrics", none)["precision"] is None  # null, as the schema allows


GOOD = {
    "requests": {"request_id": "r1", "event_time": "2026-11-23T10:00:00Z", "year": "2015"},
    "actuals": {"request_id": "r1", "event_time": "2026-11-23T10:00:00Z", "actual": 1.0},
    "predictions": {"request_id": "r1", "prediction": 1.0, "probability": None, "model_name": "m",
                    "model_version": "1", "event_time": "2026-11-23T10:00:00Z", "scored_at": "2026-11-23T10:00:01Z",
                    "input_sha256": "0" * 64},
    "metrics": {"dataset": "d", "window_start": "2026-11-23T10:00:00Z", "window_end": "2026-11-23T10:01:00Z",
                "model_version": "1", "count": 3, "rmse": 1.0},
    "dlq": {"raw": "x", "raw_bytes": 1, "raw_sha256": "0" * 64, "raw_truncated": False, "topic": "d.requests",
            "partition": 0, "offset": 1, "reason": "missing request_id", "dlq_at": "2026-11-23T10:00:00Z"},
}
GOOD["shadow"] = GOOD["predictions"]  # a challenger's shadow predictions have the prediction contract
BAD = [
    ("requests", {"request_id": 12345}, "request_id"),
    ("requests", {"request_id": "a\tb"}, "request_id"),
    ("requests", {"year": {"nested": 1}}, "year"),
    ("requests", {"event_time": "yesterday"}, "event_time"),
    ("actuals", {"actual": "12"}, "actual"),
    ("predictions", {"model_version": 3}, "model_version"),
    ("predictions", {"scored_at": None}, "scored_at"),
    ("predictions", {"input_sha256": "ABC"}, "input_sha256"),
    ("shadow", {"model_version": 3}, "model_version"),
    ("metrics", {"count": 1.5}, "count"),
    ("metrics", {"window_end": "soon"}, "window_end"),
    ("dlq", {"raw": "x" * (DLQ_EXCERPT_CHARS + 1)}, "raw"),
    ("dlq", {"raw_sha256": "xyz"}, "raw_sha256"),
    ("dlq", {"whole_message": "..."}, "(message)"),
]


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_the_good_example_of_each_kind_is_valid(kind):
    assert errors(kind, GOOD[kind]) == []


@pytest.mark.parametrize("kind,change,field", BAD, ids=[f"{k}-{f}" for k, _, f in BAD])
def test_each_schema_rejects_a_wrong_message_naming_the_field(kind, change, field):
    msg = GOOD[kind] | change
    with pytest.raises(ContractError) as e:
        validate(kind, msg)
    assert f"{field}:" in str(e.value)
    missing = {k: v for k, v in GOOD[kind].items() if k != "event_time" and k != "dlq_at"} if kind != "metrics" \
        else {k: v for k, v in GOOD[kind].items() if k != "count"}
    assert errors(kind, missing)  # a required field left out
