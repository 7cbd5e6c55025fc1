"""Plain Kafka clients (kafka-python) for what is not Spark: topic creation, the load generator, `ml-platform
tail`, the Dagster live-metrics sensor, tests and the fault checker."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from ml_platform.serve.messages import KINDS, MAX_MESSAGE_BYTES, encode, topic


def ensure_topics(bootstrap: str, dataset: str, partitions: int = 2) -> list[str]:
    """Create the dataset's topics (one per messages.KINDS) if they are missing; returns their names."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    names = [topic(dataset, k) for k in KINDS]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        missing = [n for n in names if n not in set(admin.list_topics())]
        if missing:
            try:
                admin.create_topics([NewTopic(n, partitions, 1, topic_configs={
                    "max.message.bytes": str(MAX_MESSAGE_BYTES)}) for n in missing])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return names


def producer(bootstrap: str):
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, key_serializer=lambda k: k.encode() if k else None,
                         linger_ms=5, max_request_size=MAX_MESSAGE_BYTES, acks="all", retries=10)


def send(p, dataset: str, kind: str, key: str | None, message: dict):
    """Validate `message` against its kind's contract and send it to the dataset's topic of that kind."""
    return p.send(topic(dataset, kind), key=key, value=encode(kind, message))


def read_topic(bootstrap: str, name: str, timeout_s: float = 5.0) -> list[dict]:
    """Every message of a topic from the beginning, as dicts with partition, offset, key and value (parsed JSON
    when it is JSON, else the text), in (partition, offset) order."""
    return list(_messages(bootstrap, name, timeout_s))


def _messages(bootstrap: str, name: str, timeout_s: float) -> Iterator[dict]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000),
                      fetch_max_bytes=MAX_MESSAGE_BYTES * 2, max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    try:
        parts = [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or [])]
        if not parts:
            return
        c.assign(parts)
        c.seek_to_beginning(*parts)
        ends = c.end_offsets(parts)
        out = []
        for m in c:
            out.append({"partition": m.partition, "offset": m.offset, "key": m.key.decode() if m.key else None,
                        "value": _decode(m.value)})
            if all(c.position(tp) >= ends[tp] for tp in parts):
                break
        yield from sorted(out, key=lambda m: (m["partition"], m["offset"]))
    finally:
        c.close()


def _decode(raw: bytes | None):
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def follow(bootstrap: str, topics: list[str], from_beginning: bool = False) -> Iterator[tuple[str, object]]:
    """(topic, message) forever, from now on (or from the beginning)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(*topics, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      auto_offset_reset="earliest" if from_beginning else "latest",
                      max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    try:
        for m in c:
            yield m.topic, _decode(m.value)
    finally:
        c.close()


def end_offsets(bootstrap: str, name: str, timeout_s: float = 10.0) -> dict[int, int]:
    """partition -> the offset the next message will get (empty for a missing topic)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      request_timeout_ms=int(timeout_s * 1000) + 10000)
    try:
        parts = [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or [])]
        return {tp.partition: off for tp, off in c.end_offsets(parts).items()} if parts else {}
    finally:
        c.close()


def read_new(bootstrap: str, name: str, offsets: dict[int, int], max_messages: int = 500,
             timeout_s: float = 3.0) -> tuple[list[dict], dict[int, int]]:
    """Messages after `offsets` (partition -> next offset; a partition not named starts at its beginning), at
    most `max_messages`, and the offsets to resume from. A missing topic reads as empty."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      consumer_timeout_ms=int(timeout_s * 1000), request_timeout_ms=int(timeout_s * 1000) + 10000)
    try:
        parts = [TopicPartition(name, p) for p in sorted(c.partitions_for_topic(name) or [])]
        if not parts:
            return [], dict(offsets)
        c.assign(parts)
        ends = c.end_offsets(parts)
        todo = [tp for tp in parts if offsets.get(tp.partition, 0) < ends[tp]]
        for tp in parts:
            c.seek(tp, offsets.get(tp.partition, 0)) if tp.partition in offsets else c.seek_to_beginning(tp)
        out, new = [], dict(offsets)
        if todo:
            for m in c:
                out.append({"partition": m.partition, "offset": m.offset, "value": _decode(m.value)})
                new[m.partition] = m.offset + 1
                if len(out) >= max_messages or all(new.get(tp.partition, 0) >= ends[tp] for tp in parts):
                    break
        return out, new
    finally:
        c.close()


def describe(kind: str, m) -> str:
    """One terminal line for one message of a topic kind."""
    v = m if isinstance(m, dict) else {"raw": m}
    if kind == "metrics":
        scores = "  ".join(f"{k}={v[k]:.4g}" for k in ("rmse", "mae", "precision", "recall", "pr_auc_approx")
                           if isinstance(v.get(k), int | float))
        return (f"METRICS {v.get('window_start')}..{v.get('window_end')} v{v.get('model_version')} "
                f"n={v.get('count')}  {scores}")
    if kind == "dlq":
        excerpt = repr(str(v.get("raw"))[:80]) + ("..." if v.get("raw_truncated") or len(str(v.get("raw"))) > 80
                                                  else "")
        return f"DLQ {v.get('reason')}  raw={excerpt} ({v.get('raw_bytes')} bytes, offset {v.get('offset')})"
    prob = f" p={v['probability']:.3f}" if isinstance(v.get("probability"), float) else ""
    return f"pred {v.get('request_id')} -> {v.get('prediction')}{prob} (v{v.get('model_version')})"


def scorer_state(status_path: Path | None) -> str:
    """The scorer's status file in a few words, or why it cannot be read."""
    if status_path is None:
        return "scorer status unknown"
    try:
        s = json.loads(Path(status_path).read_text())
    except (OSError, ValueError) as e:
        return f"no scorer status at {status_path} ({type(e).__name__}): is the scorer running?"
    words = f"scorer {s.get('state')} (updated {s.get('updated_at')}"
    if s.get("model_version"):
        words += f", model version {s['model_version']}"
    if s.get("challenger_version"):
        words += f", challenger version {s['challenger_version']} ({s.get('challenger_mode')})"
    if s.get("last_error"):
        words += f", last error: {str(s['last_error'])[:200]}"
    return words + ")"


def tail(bootstrap: str, dataset: str, out=sys.stdout, status_path: Path | None = None, from_beginning=False,
         metrics_only=False, stop: threading.Event | None = None, say_every: float = 15.0) -> Counter:
    """`ml-platform tail`: predictions, DLQ records and live metrics as terminal lines until Ctrl-C (or `stop`).
    While no prediction has arrived it says so every `say_every` seconds, with the scorer's state; on exit it
    prints the count of each kind seen. Returns those counts."""
    from kafka import KafkaConsumer

    kinds = ["metrics", "dlq"] + ([] if metrics_only else ["predictions"])
    names = {topic(dataset, k): k for k in kinds}
    counts = Counter({k: 0 for k in kinds})
    awaited = "metrics" if metrics_only else "predictions"
    c = KafkaConsumer(*names, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                      auto_offset_reset="earliest" if from_beginning else "latest",
                      max_partition_fetch_bytes=MAX_MESSAGE_BYTES)
    print(f"following {', '.join(names)} at {bootstrap}; Ctrl-C ends with a summary", file=out, flush=True)
    said = 0.0
    try:
        while stop is None or not stop.is_set():
            for records in c.poll(timeout_ms=500).values():
                for m in records:
                    kind = names[m.topic]
                    counts[kind] += 1
                    print(describe(kind, _decode(m.value)), file=out, flush=True)
            if not counts[awaited] and time.monotonic() - said >= say_every:
                print(f"waiting: no {awaited} yet; {scorer_state(status_path)}", file=out, flush=True)
                said = time.monotonic()
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
        print("summary: " + "  ".join(f"{k}={counts[k]}" for k in kinds), file=out, flush=True)
    return counts
