"""The feedback loop: the true labels that arrive on `<ds>.actuals` become training data.

`collect` reads the actuals that arrived since the last collection, finds each one's request on `<ds>.requests`
(the raw JSON exactly as the client sent it), checks it against the prediction store, and lands the labelled rows
as one batch file `feedback-<UTC time>-<digest>.csv` in the dataset's landing zone. From there the file is a batch
like any other: the new-batch sensor takes it, and it goes through the header check, ingestion, cleaning, row
quarantine and the blocking checks, then the retrain that every accepted batch triggers. Its source stays in its
name: the batch's partition key, the training set's `batches` and its `feedback_rows`.

Each actual (the last one per request_id) is matched to its request by request_id:
    verified    the store holds the served prediction of that request and its input_sha256 is the SHA-256 of the
                request's bytes on the topic: the features are the ones the model saw
    unverified  the store holds no served prediction for it (the scorer refused the request, or the store writer
                is behind) and the topic holds one body under that id: the row lands, counted apart
    conflict    left out: the store's hash matches no body under that id, or different bodies share the id and
                none is proven; which features the label belongs to is unknown
    no_request  left out: no request under that id on the topic (never sent, or expired from the topic)
    bad_actual  left out: not JSON with a request_id and a number, or a number cleaning would not keep as a label
    bad_request left out: the request body is not a JSON object
Left-out actuals are counted by reason, with up to 20 example request ids each.

The cursor (layout.feedback_cursor: the next offset per actuals partition) moves only after the batch file is in
place. Fewer than `min_rows` new rows land nothing and leave the cursor where it was, so they wait for the next
collection (and an unverified row may be verified by then). A crash between the file and the cursor lands the same
rows once more in the next file; a spec with a key keeps one row per key in the training set.

Requests are read from the topic's start every time: the topic's retention bounds that read and how late an actual
may arrive. Store checks are one query per row on the store client's threads, driven from the Spark driver.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime

from ml_platform.layout import FEEDBACK_PREFIX as PREFIX
from ml_platform.layout import feedback_cursor, landed_file
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store

EXAMPLES = 20


class FeedbackError(ValueError):
    """A dataset that cannot learn from actuals (it has no target)."""


def _offsets_json(name: str, offsets: dict[int, int]) -> str:
    return json.dumps({name: {str(p): o for p, o in offsets.items()}})


def _read(spark, bootstrap: str, name: str, start: dict[int, int], end: dict[int, int]):
    """The topic's records from `start` (a partition not in it: its beginning) up to `end`, as (partition, offset,
    value bytes)."""
    return (spark.read.format("kafka").option("kafka.bootstrap.servers", bootstrap).option("subscribe", name)
            .option("startingOffsets", _offsets_json(name, {p: start.get(p, -2) for p in end}))
            .option("endingOffsets", _offsets_json(name, end))
            .option("failOnDataLoss", "false")  # offsets aged out of the topic: read what is left
            .load().select("partition", "offset", "value"))


def _cell(v) -> str:
    """A request value as a batch file spells it: cleaning parses both the same way."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def _matched(spark, bootstrap: str, spec: DatasetSpec, start: dict[int, int], end: dict[int, int]):
    """The new actuals (last per request_id) with every distinct body their request_id has on the requests topic:
    rows of (request_id, actual, bodies: [(sha256, text)] or None, bad: bool), and the number of actual records read."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from ml_platform.serve.kafka_io import end_offsets

    acts = _read(spark, bootstrap, topic(spec, "actuals"), start, end)
    text = F.col("value").cast("string")
    acts = acts.select("partition", "offset", F.get_json_object(text, "$.request_id").alias("request_id"),
                       F.get_json_object(text, "$.actual").cast("double").alias("actual")).cache()
    n_read = acts.count()
    # the same request_id always lands on one partition (it is the key): the latest offset is the latest word
    last = (acts.where(F.col("request_id").isNotNull())
            .withColumn("__rn", F.row_number().over(Window.partitionBy("request_id").orderBy(F.col("offset").desc())))
            .where("__rn = 1").select("request_id", "actual"))
    req_topic = topic(spec, "requests")
    reqs = _read(spark, bootstrap, req_topic, {}, end_offsets(bootstrap, req_topic))
    rtext = F.col("value").cast("string")
    bodies = (reqs.select(F.get_json_object(rtext, "$.request_id").alias("request_id"),
                          F.sha2(F.col("value"), 256).alias("sha"), rtext.alias("body"))
              .join(last.select("request_id"), "request_id", "left_semi")
              .dropDuplicates(["request_id", "sha"])
              .groupBy("request_id").agg(F.collect_list(F.struct("sha", "body")).alias("bodies")))
    rows = last.join(bodies, "request_id", "left").collect()
    bad = acts.where(F.col("request_id").isNull()).count()
    acts.unpersist()
    return rows, n_read, bad


def collect(spark, store: Store, spec: DatasetSpec, bootstrap: str, predictions, min_rows: int = 1,
            now: datetime | None = None) -> dict:
    """Land the labelled rows of the actuals that arrived since the last collection -> a summary: the file (or
    None), rows by how they were matched, left-out actuals by reason, and the cursor before and after."""
    from ml_platform.serve.kafka_io import end_offsets

    if spec.target is None:
        raise FeedbackError(f"{spec.name} is a {spec.task} dataset: it has no target, so actuals cannot label it")
    cursor_path = feedback_cursor(spec)
    start = {int(p): int(o) for p, o in ((store.read_json(cursor_path) or {}).get("actuals") or {}).items()}
    end = end_offsets(bootstrap, topic(spec, "actuals"))
    summary = {"file": None, "rows": 0, "verified": 0, "unverified": 0, "actuals_read": 0, "left_out": {},
               "examples": {}, "cursor_before": start, "cursor_after": start, "min_rows": min_rows}
    if not end or all(end[p] <= start.get(p, 0) for p in end):
        return summary | {"note": f"no new actuals on {topic(spec, 'actuals')}"}
    matched, n_read, bad_ids = _matched(spark, bootstrap, spec, start, end)
    summary["actuals_read"] = n_read
    left: dict[str, list[str]] = {}

    def leave(reason: str, rid: str | None) -> None:
        left.setdefault(reason, []).append(rid or "")

    for _ in range(bad_ids):
        leave("bad_actual", None)
    served = predictions.served_hashes(spec.name, [r["request_id"] for r in matched if r["bodies"]])
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(spec.column_names)
    for r in sorted(matched, key=lambda r: r["request_id"]):
        rid = r["request_id"]
        try:
            label = spec.raw_label(r["actual"]) if r["actual"] is not None else None
        except ValueError:
            label = None
        if label is None:
            leave("bad_actual", rid)
            continue
        if not r["bodies"]:
            leave("no_request", rid)
            continue
        known = served.get(rid)
        proven = [b for b in r["bodies"] if known and b["sha"] in known]
        if known:
            body, how = (proven[0]["body"], "verified") if proven else (None, "conflict")
        else:
            body, how = (r["bodies"][0]["body"], "unverified") if len(r["bodies"]) == 1 else (None, "conflict")
        if body is None:
            leave(how, rid)
            continue
        try:
            req = json.loads(body)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            leave("bad_request", rid)
            continue
        w.writerow([label if c == spec.target else _cell(req.get(c)) for c in spec.column_names])
        summary[how] += 1
    rows = summary["verified"] + summary["unverified"]
    summary |= {"rows": rows, "left_out": {k: len(v) for k, v in left.items()},
                "examples": {k: v[:EXAMPLES] for k, v in left.items()}}
    if 0 < rows < min_rows:
        return summary | {"note": f"{rows} new labelled rows, fewer than {min_rows}: they wait for the next collection"}
    if rows:
        when = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
        digest = hashlib.sha256(json.dumps([start, end], sort_keys=True).encode()).hexdigest()[:8]
        name = f"{PREFIX}{when}-{digest}.csv"
        tmp = landed_file(spec, f".{name}.tmp")  # a hidden temporary name: the sensor waits for the final one
        store.write_text(tmp, out.getvalue())
        store.move(tmp, landed_file(spec, name))
        summary["file"] = name
    store.write_json(cursor_path, {"actuals": {str(p): o for p, o in end.items()}})
    return summary | {"cursor_after": end}
