"""`ml-platform produce`: the load generator. It replays the simulator's held-out test stream as prediction
requests at a given rate, sends each true label to `<ds>.actuals` after a delay (a share of them never), and
mixes in a share of malformed messages of every kind the scorer must survive.
"""

from __future__ import annotations

import csv
import heapq
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ml_platform.serve.messages import actual, encode, request, topic
from ml_platform.spec import DatasetSpec

FUZZ_KINDS = ("not_json", "truncated", "no_request_id", "wrong_types", "nan_inf", "absurd", "unknown_category",
              "huge", "duplicate", "empty", "trailing_garbage", "bad_request_id")
# the request_ids of "bad_request_id": not a JSON string, or a string with whitespace or control characters
BAD_REQUEST_IDS = ({"id": 7}, 12345, ["a"], True, "tab\there", "two words", "line\nbreak", "x" * 201)


def stream_rows(test_dir: Path) -> Iterator[tuple[str, dict]]:
    """(row id, raw row) from the simulator's test-stream CSV files, oldest first, forever-fresh ids."""
    for f in sorted(Path(test_dir).glob("*.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                yield f"{f.stem}-{i}", row


def actual_value(spec: DatasetSpec, row: dict) -> float | None:
    return spec.label_value(row.get(spec.target))


def fuzz(spec: DatasetSpec, kind: str, rid: str, row: dict, rng: random.Random) -> tuple[str | None, bytes]:
    """One malformed (or adversarial) message of `kind`: (key, value bytes)."""
    good = request(spec, rid, row)
    num = [c.name for c in spec.columns if c.parse in ("number", "unit", "rating") and c.name != spec.target]
    cat = [c.name for c in spec.columns if c.parse == "category"]
    if kind == "not_json":
        return rid, rng.choice([b"hello", b"\xff\xfe\x00binary", b"<xml/>", b"[1, 2, 3]", b"42"])
    if kind == "truncated":
        text = json.dumps(good)
        return rid, text[: rng.randint(1, len(text) - 2)].encode()
    if kind == "no_request_id":
        good.pop("request_id")
        return None, json.dumps(good).encode()
    if kind == "wrong_types":
        for c in rng.sample(num, min(3, len(num))):
            good[c] = rng.choice([{"nested": 1}, [1, 2], True, "lots"])
        return rid, json.dumps(good).encode()
    if kind == "nan_inf":
        for c in rng.sample(num, min(3, len(num))):
            good[c] = rng.choice([float("nan"), float("inf"), float("-inf")])
        return rid, json.dumps(good).encode()  # Python writes NaN/Infinity tokens, as careless producers do
    if kind == "absurd":
        for c in rng.sample(num, min(3, len(num))):
            good[c] = rng.choice([-1e12, 1e300, -5, 0])
        return rid, json.dumps(good).encode()
    if kind == "unknown_category":
        for c in cat:
            good[c] = f"never-seen-{rng.randint(0, 10**6)}"
        return rid, json.dumps(good).encode()
    if kind == "huge":
        good["description"] = "x" * (1024 * 1024)
        return rid, json.dumps(good).encode()
    if kind == "duplicate":  # the same request_id sent twice: both are scored (consumers deduplicate)
        return rid, json.dumps(good).encode()
    if kind == "empty":
        return rid, b""
    if kind == "trailing_garbage":
        return rid, (json.dumps(good) + rng.choice([" xyz", " {}", "}", ",1", "\n\"more\""])).encode()
    if kind == "bad_request_id":
        good["request_id"] = rng.choice(BAD_REQUEST_IDS)
        return rid, json.dumps(good).encode()
    raise ValueError(f"unknown fuzz kind {kind!r}")


def produce(spec: DatasetSpec, bootstrap: str, test_dir: Path, rate: float, count: int | None,
            actual_delay: float, actual_drop: float, malformed: float, seed: int = 0, out=sys.stdout) -> dict:
    """Send requests at `rate` per second (until `count`, or the test stream ends); actuals `actual_delay`
    seconds later unless dropped. Returns what was sent."""
    from ml_platform.serve.kafka_io import ensure_topics, producer

    ensure_topics(bootstrap, spec.name)
    p = producer(bootstrap)
    rng = random.Random(seed)
    req_t, act_t = topic(spec, "requests"), topic(spec, "actuals")
    pending: list[tuple[float, str, float]] = []
    sent = {"requests": 0, "malformed": 0, "actuals": 0, "dropped_actuals": 0}
    start, last_report = time.monotonic(), time.monotonic()
    prefix = f"{int(time.time())}"
    for i, (rid, row) in enumerate(stream_rows(test_dir)):
        if count is not None and i >= count:
            break
        rid = f"{prefix}-{rid}"
        due = start + i / rate
        while True:  # send actuals that are due while waiting for the request's slot
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, arid, value = heapq.heappop(pending)
                p.send(act_t, key=arid, value=encode("actuals", actual(arid, value)))
                sent["actuals"] += 1
            if now >= due:
                break
            time.sleep(min(due - now, pending[0][0] - now if pending else 1.0, 0.05))
        if rng.random() < malformed:
            key, value = fuzz(spec, rng.choice(FUZZ_KINDS), rid, row, rng)
            sent["malformed"] += 1
        else:
            key, value = rid, encode("requests", request(spec, rid, row))
            y = actual_value(spec, row)
            if y is not None and rng.random() >= actual_drop:
                heapq.heappush(pending, (time.monotonic() + actual_delay, rid, y))
            else:
                sent["dropped_actuals"] += 1
        p.send(req_t, key=key, value=value)
        sent["requests"] += 1
        if time.monotonic() - last_report > 10:
            print(f"produce {spec.name}: {sent}", file=out, flush=True)
            last_report = time.monotonic()
    while pending:
        at, arid, value = heapq.heappop(pending)
        time.sleep(max(0.0, at - time.monotonic()))
        p.send(act_t, key=arid, value=encode("actuals", actual(arid, value)))
        sent["actuals"] += 1
    p.flush()
    p.close()
    return sent
