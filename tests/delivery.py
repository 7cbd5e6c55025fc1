"""What the fault checks assert about the output topics, as pure functions over consumed messages."""

from __future__ import annotations

from collections import Counter


def delivery_report(sent_ids: set[str], predictions: list[dict], dlq: list[dict]) -> dict:
    """predictions / dlq: messages from `kafka_io.read_topic` (partition, offset, key, value), in offset order.

    lost: sent but neither predicted nor dead-lettered. duplicates: extra copies (at-least-once replays).
    switches: per partition, how often model_version changes along the offsets; versions: the sequence of
    distinct versions per partition."""
    pred_ids = Counter(m["value"]["request_id"] for m in predictions if isinstance(m["value"], dict))
    dlq_ids = {m["key"] for m in dlq}
    seq: dict[int, list[str]] = {}
    for m in predictions:
        v = m["value"]["model_version"]
        s = seq.setdefault(m["partition"], [])
        if not s or s[-1] != v:
            s.append(v)
    return {
        "sent": len(sent_ids), "predicted": len(pred_ids), "dead_lettered": len(dlq_ids & sent_ids),
        "lost": sorted(sent_ids - set(pred_ids) - dlq_ids),
        "duplicates": sum(n - 1 for n in pred_ids.values()),
        "unexpected": sorted(set(pred_ids) - sent_ids),
        "versions": seq, "switches": {p: len(s) - 1 for p, s in seq.items()},
    }
