"""Request/response scoring on the serving core: rows given as JSON objects (a REST call, a CSV file) go through
exactly what the Kafka scorer runs on a micro-batch. Each row is encoded as the bytes a Kafka producer would send,
placed in a DataFrame shaped like Kafka source rows, and passed to `scoring.score_batch`; its output messages
(predictions, shadow predictions, DLQ records) are read back per row. So validation, cleaning, the DLQ reasons and
the prediction messages are one implementation for both front ends.

`Coalescer` groups concurrent calls into one Spark call: a Spark job costs the same for 1 row as for 100, so under
load each caller waits for at most the call in progress plus its own.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

from ml_platform.serve.messages import REQUEST_ID_PATTERN, topic

SOURCE_TOPIC = "rest"  # what a DLQ record's `topic` says for a row that came over REST
_ID = re.compile(REQUEST_ID_PATTERN)
KAFKA_ROW = "topic string, partition int, offset long, key binary, value binary"


@dataclass
class Scored:
    """The outcome of one row: `prediction` (the prediction message) or `rejected` (the DLQ record)."""

    index: int
    request_id: str | None
    prediction: dict | None = None
    rejected: dict | None = None

    def as_json(self) -> dict:
        if self.prediction is not None:
            return {"status": "scored", **self.prediction}
        return {"status": "rejected", "request_id": self.request_id, "row": self.index,
                "reason": self.rejected["reason"], "dlq_record": self.rejected}


@dataclass
class Outcome:
    rows: list[Scored]
    published: list[tuple[str, str, str]] = field(default_factory=list)  # (topic, key, value) for Kafka


def encode_rows(rows: list[dict[str, Any]]) -> list[bytes]:
    """Each row as the JSON bytes a Kafka producer would send (NaN/Infinity as their tokens, as Python writes)."""
    return [json.dumps(r, ensure_ascii=False, default=str).encode() for r in rows]


def score_messages(spark, spec, messages: list[bytes], score: Callable) -> Outcome:
    """`score(kafka_like_df) -> (out_df, cached)` is `scoring.score_batch` with the model(s) bound. Returns one
    Scored per message, in order, and the prediction and shadow messages to publish to Kafka (the prediction log
    the store and live metrics follow). DLQ records are returned to the caller, not published: the caller has the
    answer, and the DLQ topic is for messages nobody else will see."""
    ids = [_request_id(m) for m in messages]
    df = spark.createDataFrame([(SOURCE_TOPIC, 0, i, (ids[i] or "").encode() or None, m)
                                for i, m in enumerate(messages)], KAFKA_ROW)
    out, cached = score(df)
    try:
        written = [(r["topic"], r["key"], r["value"]) for r in out.collect()]
    finally:
        for c in cached:
            c.unpersist()
    preds, dlq, shadow = topic(spec, "predictions"), topic(spec, "dlq"), topic(spec, "shadow")
    by_id, rejected = {}, {}
    for t, _, value in written:
        body = json.loads(value)
        if t == preds:
            by_id[body["request_id"]] = body
        elif t == dlq:
            rejected[int(body["offset"])] = body
    result = []
    for i, rid in enumerate(ids):
        if i in rejected:
            result.append(Scored(i, rid, rejected=rejected[i]))
        elif rid in by_id:
            result.append(Scored(i, rid, prediction=by_id[rid]))
        else:  # score_batch yields one output per input; anything else is a bug worth a loud reason
            result.append(Scored(i, rid, rejected={"reason": "internal error: the row produced no output"}))
    return Outcome(result, [w for w in written if w[0] in (preds, shadow)])


def _settle(fut: Future, result: Outcome | None = None, error: Exception | None = None) -> None:
    """A caller that timed out has cancelled its future: its rows were scored anyway, and nobody waits for them."""
    try:
        fut.set_exception(error) if error is not None else fut.set_result(result)
    except InvalidStateError:
        pass


def _request_id(message: bytes) -> str | None:
    try:
        rid = json.loads(message).get("request_id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) and _ID.match(rid) else None


class Coalescer:
    """One background thread scoring queued calls together. `run(messages) -> Outcome` is the Spark call;
    `submit` blocks the caller until its rows are scored (or `timeout` passes). At most `max_rows` rows per Spark
    call; a call larger than that runs alone."""

    def __init__(self, run: Callable[[list[bytes]], Outcome], max_rows: int = 5000, name: str = "coalescer"):
        self.run, self.max_rows = run, max_rows
        self._queue: list[tuple[list[bytes], set, Future]] = []
        self._cv = threading.Condition()
        self._stop = False
        self.calls, self.last_seconds = 0, 0.0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, messages: list[bytes], timeout: float | None = None) -> Outcome:
        return self.submit_future(messages).result(timeout)

    def submit_future(self, messages: list[bytes]) -> Future:
        """Queue without waiting: an async caller awaits the future, so no thread is held per waiting request and
        one Spark call can take everything that queued while the previous one ran."""
        fut: Future = Future()
        with self._cv:
            if self._stop:
                raise RuntimeError("the scorer is stopping")
            self._queue.append((messages, {_request_id(m) for m in messages} - {None}, fut))
            self._cv.notify()
        return fut

    def _take(self) -> list[tuple[list[bytes], set, Future]]:
        """The next calls to score together: up to max_rows rows, and no request_id twice (outputs are matched
        to rows by request_id, so two callers sending one id are scored in separate Spark calls)."""
        with self._cv:
            while not self._queue and not self._stop:
                self._cv.wait()
            batch, n, seen = [], 0, set()
            while self._queue:
                msgs, ids, _ = self._queue[0]
                if batch and (n + len(msgs) > self.max_rows or ids & seen):
                    break
                batch.append(self._queue.pop(0))
                n, seen = n + len(msgs), seen | ids
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            messages = [m for msgs, _, _ in batch for m in msgs]
            t0 = time.perf_counter()
            try:
                outcome = self.run(messages)
            except Exception as e:  # a failed Spark call fails its callers, never the thread
                for _, _, fut in batch:
                    _settle(fut, error=e)
                continue
            self.calls += 1
            self.last_seconds = time.perf_counter() - t0
            start = 0
            for msgs, _, fut in batch:
                part = outcome.rows[start:start + len(msgs)]
                ids = {s.request_id for s in part}
                _settle(fut, Outcome([Scored(s.index - start, s.request_id, s.prediction, s.rejected)
                                      for s in part],
                                     [w for w in outcome.published if w[1] in ids]))
                start += len(msgs)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            for _, _, fut in self._queue:
                _settle(fut, error=RuntimeError("the scorer is stopping"))
            self._queue.clear()
            self._cv.notify_all()
        self._thread.join(timeout=5)
