"""`ml-platform produce`: the load generator. It replays the simulator's held-out test stream as prediction
requests at a given rate, sends each true label to `<ds>.actuals` after a delay (a share of them never), and
mixes in a share of malformed messages of every kind the scorer must survive.

Every send is tracked until the broker acknowledges it: one that fails (the broker stopped past the client's delivery
timeout) is sent again, and at most `max_pending` messages are unacknowledged at once; past that the generator
waits and says so. The report counts acknowledged messages, and as failed only what was refused for good or was still
unacknowledged when it gave up waiting at the end (such a message may still have reached the broker).
"""

from __future__ import annotations

import csv
import heapq
import json
import random
import sys
import time
from collections import Counter, deque
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


def _discard(p, timeout: float = 1.0) -> None:
    """Close a KafkaProducer even while the broker is away: kafka-python 3.0.12's close() raises at its flush
    timeout before stopping its I/O thread, which would then live on, so that thread is stopped here."""
    from kafka.errors import KafkaTimeoutError

    try:
        p.close(timeout=timeout)
    except KafkaTimeoutError:
        if getattr(p, "_sender", None) is not None:
            p._sender.force_close()  # what close() itself does past its timeout; unsent batches fail


class Sender:
    """A producer's sends, tracked: acknowledged ones are counted (and listed in `ledger` as (kind, key) if given),
    retriable failures are re-sent after `retry_s`, and `send` blocks while `max_pending` are unacknowledged.

    A client one of whose batches expired (the broker away past its delivery timeout) is replaced by a fresh one
    from `factory`, and whatever it still held is re-sent: kafka-python 3.0.12's idempotent producer never
    completes a later send on that partition (its sequence stays unresolved), so the old client would hang the
    generator for good once the broker is back. A late acknowledgement from the old client is ignored; the copy
    sent again is one duplicate, which consumers drop by request_id."""

    def __init__(self, factory, name: str, max_pending: int, out, ledger: list | None = None, retry_s: float = 1.0):
        self.factory, self.p, self.name, self.max_pending, self.out = factory, factory(), name, max_pending, out
        self.ledger, self.retry_s = ledger, retry_s
        self.acked, self.failed, self.retried, self.renewed = Counter(), Counter(), 0, 0
        self.inflight: dict[int, tuple] = {}  # token -> (kind, topic, key, value) the client has not resolved
        self.token, self.expired, self.next_client = 0, False, 0.0
        self.done: deque = deque()  # (token, error or None), appended by the client's I/O thread
        self.again: deque = deque()  # (due, item) to re-send
        self.last_error = ""

    def pending(self) -> int:
        return len(self.inflight) + len(self.again)

    def send(self, kind: str, topic_name: str, key: str | None, value: bytes) -> None:
        said = time.monotonic()
        self.pump()
        while self.pending() >= self.max_pending:
            if time.monotonic() - said >= 5:
                print(f"produce {self.name}: blocked, {self.pending()} unacknowledged ({len(self.again)} to "
                      f"re-send); last error: {self.last_error or 'none yet'}", file=self.out, flush=True)
                said = time.monotonic()
            time.sleep(0.05)
            self.pump()
        self._send((kind, topic_name, key, value))

    def _send(self, item: tuple) -> None:
        from kafka.errors import KafkaError

        if self.p is None:  # between clients
            self.again.append((time.monotonic() + self.retry_s, item))
            return
        try:
            fut = self.p.send(item[1], key=item[2], value=item[3])
        except KafkaError as e:  # no metadata or no buffer space within max_block_ms, or refused outright
            self._failed(item, e)
            return
        self.token += 1
        self.inflight[tok := self.token] = item
        fut.add_callback(lambda _md: self.done.append((tok, None)))
        fut.add_errback(lambda e: self.done.append((tok, e)))

    def _failed(self, item: tuple, e: Exception) -> None:
        self.last_error = f"{type(e).__name__}: {e}"[:300]
        if getattr(e, "retriable", False):
            self.again.append((time.monotonic() + self.retry_s, item))
        else:
            self.failed[item[0]] += 1
            print(f"produce {self.name}: {item[0]} {item[2]!r} refused for good: {self.last_error}",
                  file=self.out, flush=True)

    def pump(self) -> None:
        """Count what was acknowledged or failed since the last call; re-send failures that are due."""
        from kafka.errors import KafkaTimeoutError

        while self.done:
            tok, e = self.done.popleft()
            item = self.inflight.pop(tok, None)
            if item is None:  # from a client already replaced: its message was queued again
                continue
            if e is None:
                self.acked[item[0]] += 1
                if self.ledger is not None:
                    self.ledger.append((item[0], item[2]))
            else:
                self.expired |= isinstance(e, KafkaTimeoutError)
                self._failed(item, e)
        now = time.monotonic()
        if self.expired:
            self._renew(now)
        if self.p is None and now >= self.next_client:
            self._connect(now)
        while self.p is not None and self.again and self.again[0][0] <= now:
            self.retried += 1
            self._send(self.again.popleft()[1])

    def _renew(self, now: float) -> None:
        old, self.expired = self.p, False
        self.again.extend((now + self.retry_s, item) for item in self.inflight.values())
        self.inflight.clear()
        self.renewed += 1
        print(f"produce {self.name}: a batch expired ({self.last_error}); new Kafka client, "
              f"{len(self.again)} messages to re-send", file=self.out, flush=True)
        _discard(old)
        self.p = None
        self._connect(now)

    def _connect(self, now: float) -> None:
        from kafka.errors import KafkaError

        try:
            self.p = self.factory()
        except KafkaError as e:  # the broker is still away: try again later, the messages wait in `again`
            self.last_error = f"{type(e).__name__}: {e}"[:300]
            self.next_client = now + 5 * self.retry_s

    def close(self, drain_s: float) -> None:
        """Wait up to `drain_s` for every pending message; what is still unacknowledged then counts as failed."""
        deadline, said = time.monotonic() + drain_s, time.monotonic()
        while self.pending() and time.monotonic() < deadline:
            if time.monotonic() - said >= 5:
                print(f"produce {self.name}: draining, {self.pending()} unacknowledged", file=self.out, flush=True)
                said = time.monotonic()
            time.sleep(0.05)
            self.pump()
        if self.p is not None:
            _discard(self.p, 5.0)
            self.pump()
        left = self.pending()
        for _, item in self.again:
            self.failed[item[0]] += 1
        for item in self.inflight.values():  # closed before the client resolved them: not known to have arrived
            self.failed[item[0]] += 1
        self.again.clear()
        self.inflight.clear()
        if left:
            print(f"produce {self.name}: gave up on {left} unacknowledged messages (counted as failed)",
                  file=self.out, flush=True)

    def report(self, dropped_actuals: int) -> dict:
        return {"requests": self.acked["request"] + self.acked["malformed"], "malformed": self.acked["malformed"],
                "actuals": self.acked["actual"], "dropped_actuals": dropped_actuals,
                "failed_requests": self.failed["request"] + self.failed["malformed"],
                "failed_actuals": self.failed["actual"], "retried": self.retried, "new_clients": self.renewed,
                "pending": self.pending()}


def produce(spec: DatasetSpec, bootstrap: str, test_dir: Path, rate: float, count: int | None,
            actual_delay: float, actual_drop: float, malformed: float, seed: int = 0, out=sys.stdout,
            max_pending: int = 10000, drain_s: float = 180.0, client_factory=None, ledger: list | None = None) -> dict:
    """Send requests at `rate` per second (until `count`, or the test stream ends); actuals `actual_delay`
    seconds later unless dropped. Returns what the broker acknowledged and what failed (Sender.report).
    `client_factory`: makes the KafkaProducer instead of kafka_io's (the fault test's has a short delivery timeout);
    `ledger`: a list to append (kind, key) of every acknowledged message to."""
    from ml_platform.serve.kafka_io import ensure_topics, producer

    if max_pending < 1:
        raise ValueError(f"max_pending {max_pending}: at least 1")
    ensure_topics(bootstrap, spec.name)
    sender = Sender(client_factory or (lambda: producer(bootstrap)), spec.name, max_pending, out, ledger)
    rng = random.Random(seed)
    req_t, act_t = topic(spec, "requests"), topic(spec, "actuals")
    pending: list[tuple[float, str, float]] = []
    dropped = 0
    start, last_report = time.monotonic(), time.monotonic()
    prefix = f"{int(time.time())}"
    for i, (rid, row) in enumerate(stream_rows(test_dir)):
        if count is not None and i >= count:
            break
        rid = f"{prefix}-{rid}"
        due = start + i / rate  # after a blocked spell the generator catches up at full speed, as a client would
        while True:  # send actuals that are due while waiting for the request's slot
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, arid, value = heapq.heappop(pending)
                sender.send("actual", act_t, arid, encode("actuals", actual(arid, value)))
            if now >= due:
                break
            sender.pump()
            time.sleep(min(due - now, pending[0][0] - now if pending else 1.0, 0.05))
        if rng.random() < malformed:
            kind, (key, value) = "malformed", fuzz(spec, rng.choice(FUZZ_KINDS), rid, row, rng)
        else:
            kind, key, value = "request", rid, encode("requests", request(spec, rid, row))
            y = actual_value(spec, row)
            if y is not None and rng.random() >= actual_drop:
                heapq.heappush(pending, (time.monotonic() + actual_delay, rid, y))
            else:
                dropped += 1
        sender.send(kind, req_t, key, value)
        if time.monotonic() - last_report > 10:
            print(f"produce {spec.name}: {sender.report(dropped)}", file=out, flush=True)
            last_report = time.monotonic()
    while pending:
        at, arid, value = heapq.heappop(pending)
        while time.monotonic() < at:
            sender.pump()
            time.sleep(min(0.05, max(0.0, at - time.monotonic())))
        sender.send("actual", act_t, arid, encode("actuals", actual(arid, value)))
    sender.close(drain_s)
    return sender.report(dropped)
