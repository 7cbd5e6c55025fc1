"""The prediction store's writer: a long-running consumer that keeps every prediction and actual of one dataset.

  python -m ml_platform.serve.store_writer used_cars --bootstrap 127.0.0.1:9092 --endpoint http://127.0.0.1:8000

Follows <ds>.predictions (served), <ds>.shadow (a challenger's, never returned to callers; followed from the
moment it exists) and <ds>.actuals in consumer group `store-writer-<ds>`. Each poll: validate every message
against its contract (a bad one is counted and logged with topic/partition/offset, never stops the writer), write
the batch, then commit the offsets. Delivery is at least once: offsets are committed only after the write, and
writes are first-write-wins upserts, so a crash at any point (kill -9 included) followed by a restart stores every
message exactly once. When a write fails (the store down, throttling, a full disk under it) the writer keeps the
batch, retries it with backoff and commits nothing meanwhile; SIGTERM stops cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from ml_platform.serve.messages import MAX_MESSAGE_BYTES, errors, topic
from ml_platform.serve.status import StatusFile
from ml_platform.serve.store import PredictionStore, StoreRejected, StoreUnavailable, actual_item, prediction_item
from ml_platform.spec import NAME

DEFAULT_TABLE = "ml_platform_predictions"
MAX_BACKOFF_S = 30.0


def log(msg: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S')} store-writer: {msg}", flush=True)


def topics(ds: str) -> dict[str, tuple[str, bool]]:
    """topic -> (schema, served) for the topics the writer follows."""
    return {topic(ds, "predictions"): ("prediction", True), topic(ds, "shadow"): ("prediction", False),
            topic(ds, "actuals"): ("actual", True)}


class Status(StatusFile):
    """Counts and state as a JSON file (atomic replace), like the scorer's. state: starting -> running ->
    failing (writes fail: last_error says why, failed_writes counts the attempts, retry_in_s the next wait;
    nothing committed meanwhile) -> running ... -> stopped."""

    def __init__(self, path: Path | None, dataset: str):
        super().__init__(path, dataset, consumed=0, stored=0, repeated=0, bad=0, batches=0, last_bad=None,
                         failed_writes=0, retry_in_s=None)


def record_item(ds: str, rec) -> dict:
    """The store item of one Kafka record (topic, value bytes); ValueError says what is wrong with it."""
    schema, served = topics(ds)[rec.topic]
    try:
        msg = json.loads(rec.value.decode("utf-8")) if rec.value is not None else None
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"not JSON: {e}") from None
    problems = errors(schema, msg)
    if problems:
        raise ValueError("; ".join(problems))
    return prediction_item(ds, msg, served) if schema == "prediction" else actual_item(ds, msg)


def write_records(store: PredictionStore, ds: str, records: list, status: Status | None = None) -> tuple[int, int]:
    """Validate and store a batch of records; returns (new items, bad records). Raises StoreUnavailable (retry
    the same batch later) and nothing else for a store problem."""
    items, bad = [], []
    for rec in records:
        try:
            items.append((rec, record_item(ds, rec)))
        except ValueError as e:
            bad.append((rec, str(e)))
    try:
        new, refused = store.put_items(it for _, it in items), []
    except StoreRejected:  # one item the store refuses must not block the rest: find it
        new, refused = 0, []
        for rec, it in items:
            try:
                new += store.put_items([it])
            except StoreRejected as e:
                refused.append((rec, str(e)))
    last_bad = None
    for rec, why in bad + refused:
        last_bad = {"where": f"{rec.topic}[{rec.partition}]@{rec.offset}", "reason": why[:1000]}
        log(f"bad message {last_bad['where']}: {why[:500]}")
    if status:  # repeated: valid, but its key was already stored (a replay, or a duplicate within the batch)
        status.add(consumed=len(records), stored=new, repeated=len(items) - len(refused) - new,
                   bad=len(bad) + len(refused), batches=1)
        if last_bad:
            status.update(last_bad=last_bad)
    bad += refused
    return new, len(bad)


def _until_written(store: PredictionStore, ds: str, records: list, status: Status, stop: threading.Event,
                   max_backoff_s: float = MAX_BACKOFF_S) -> bool:
    """Write one batch, retrying while the store fails; False if stopped before it was written."""
    delay = min(0.5, max_backoff_s)
    while True:
        try:
            write_records(store, ds, records, status)
            if status.data["state"] != "running":
                status.update(state="running", retry_in_s=None)
                log(f"writes succeed again after {status.data['failed_writes']} failed attempt(s) in all")
            return True
        except StoreUnavailable as e:
            # a part of the batch may be stored already: the retry writes the same batch, first-write-wins
            status.update(state="failing", last_error=str(e)[:2000], retry_in_s=delay,
                          failed_writes=status.data["failed_writes"] + 1)
            log(f"write failed, retrying in {delay:.1f} s (offsets not committed): {str(e)[:300]}")
            if stop.wait(delay):
                return False
            delay = min(delay * 2, max_backoff_s)
            try:
                store.ensure_table(wait_s=10)  # a table deleted under us comes back
            except (StoreUnavailable, StoreRejected):
                pass


def run(ds: str, bootstrap: str, store: PredictionStore, stop: threading.Event, status: Status,
        max_records: int = 2000, max_backoff_s: float = MAX_BACKOFF_S) -> None:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    while not stop.is_set():
        try:
            store.ensure_table()
            break
        except (StoreUnavailable, StoreRejected) as e:
            status.update(state="failing", last_error=str(e)[:2000])
            log(f"cannot prepare table {store.table}, retrying in 5 s: {str(e)[:300]}")
            stop.wait(5.0)
    # a pattern, not names: a missing topic is not auto-created by subscribing, and <ds>.shadow is picked up
    # when it appears (metadata refresh every 30 s). A 10 s session, not kafka-python's 45 s: a writer that was
    # killed holds its partitions until its session expires, so this is how long a restarted one waits.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=f"store-writer-{ds}", enable_auto_commit=False,
                             auto_offset_reset="earliest", max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
                             fetch_max_bytes=MAX_MESSAGE_BYTES * 2, metadata_max_age_ms=30000,
                             session_timeout_ms=10000, heartbeat_interval_ms=3000)
    consumer.subscribe(pattern="^(" + "|".join(re.escape(t) for t in topics(ds)) + ")$")
    log(f"following {', '.join(topics(ds))} at {bootstrap} into {store.table} at {store.endpoint_url or 'AWS'}")
    status.update(state="running")
    beat = time.monotonic()
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=1000, max_records=max_records)
            records = [r for batch in polled.values() for r in batch]
            if not records:
                if time.monotonic() - beat > 10:  # an idle writer still shows it is alive
                    status.update()
                    beat = time.monotonic()
                continue
            if not _until_written(store, ds, records, status, stop, max_backoff_s):
                break
            offsets = {}
            for r in records:
                tp = TopicPartition(r.topic, r.partition)
                offsets[tp] = OffsetAndMetadata(max(r.offset + 1, offsets[tp].offset if tp in offsets else 0), "", -1)
            try:
                consumer.commit(offsets)
            except KafkaError as e:  # a rebalance: the records come again and their writes change nothing
                status.update(last_error=f"commit failed: {e}"[:2000])
                log(f"commit failed, the batch will be read again: {e}")
    finally:
        consumer.close(autocommit=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="store_writer", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--endpoint", default=os.environ.get("ML_PLATFORM_STORE_ENDPOINT") or None,
                    help="DynamoDB-API endpoint URL; unset: AWS DynamoDB (credentials from boto3's chain)")
    ap.add_argument("--table", default=os.environ.get("ML_PLATFORM_STORE_TABLE") or DEFAULT_TABLE)
    ap.add_argument("--region", default=os.environ.get("AWS_REGION") or "us-east-1")
    ap.add_argument("--status", type=Path, default=None, help="write counts and state to this JSON file")
    ap.add_argument("--max-records", type=int, default=2000, help="records per poll, written as one batch")
    ap.add_argument("--max-backoff", type=float, default=MAX_BACKOFF_S,
                    help=f"longest wait in seconds between retries of a failing write (default {MAX_BACKOFF_S:.0f})")
    a = ap.parse_args(argv)
    if a.max_records < 1:
        ap.error("--max-records must be at least 1")
    if not a.max_backoff > 0:
        ap.error("--max-backoff must be more than 0 seconds")
    if not NAME.fullmatch(a.dataset):
        ap.error(f"dataset {a.dataset!r}: a letter, then letters, digits or _")
    status = Status(a.status, a.dataset)
    try:
        store = PredictionStore(a.table, a.endpoint, a.region)
    except ValueError as e:
        raise SystemExit(f"store_writer: {e}") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run(a.dataset, a.bootstrap, store, stop, status, a.max_records, a.max_backoff)
    finally:
        store.close()
        status.update(state="stopped")
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
