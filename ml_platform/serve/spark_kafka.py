"""Spark's Kafka source and sink, as every Spark front end (the streaming scorer, the benchmark) reads and writes
the topics.

`write_isolating` is the sink for a long-running service: a record that cannot be written (over the producer's
max.request.size, or refused by the broker, e.g. over a topic's max.message.bytes) is found and returned instead
of failing the write, so a streaming query does not replay the same micro-batch forever. A broker that does not
answer is not a record's fault: that write still fails, and the query restarts from its checkpoint."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ml_platform.serve.messages import MAX_MESSAGE_BYTES

# What a record adds to its key and value in a request: a record batch header (61 bytes in Kafka's v2 format)
# and the record's own varints and attributes (at most 21), without headers. Rounded up: the check is only
# there to spare the producer a record it would refuse.
RECORD_OVERHEAD = 128
MAX_ISOLATED = 100  # more records than this failing at once is not "a few bad records": the write fails


def kafka_source(spark, bootstrap: str, topic_name: str, max_per_trigger: int | None):
    reader = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", bootstrap)
              .option("subscribe", topic_name).option("startingOffsets", "earliest")
              # a topic re-created empty or offsets aged out must not stop a long-running service; Spark logs it
              .option("failOnDataLoss", "false"))
    if max_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_per_trigger))
    return reader.load()


def write_kafka(df, bootstrap: str, max_request_size: int = MAX_MESSAGE_BYTES) -> None:
    # the contract's limit, as the broker's: DLQ records are bounded (messages.DLQ_EXCERPT_CHARS), the limit is headroom
    (df.select("topic", "key", "value").write.format("kafka").option("kafka.bootstrap.servers", bootstrap)
     .option("kafka.max.request.size", str(max_request_size)).mode("append").save())


def cause(error: BaseException, limit: int = 300) -> str:
    """What a (Java) write error says went wrong: Kafka's own exception when there is one (Spark puts it inside
    its job-aborted message), not the wrapper or a stack trace."""
    text = str(error)
    at = text.find("org.apache.kafka.common.errors.")
    line = text[at:].splitlines()[0] if at >= 0 else next((x for x in text.splitlines() if x.strip()), "")
    return (line.strip() or type(error).__name__)[:limit]


class Written(NamedTuple):
    rows: dict[str, int]  # rows written, by topic
    failed: list[tuple[tuple, str]]  # (the row's `unit` values, why it was not written)


def write_isolating(df, bootstrap: str, unit: Sequence[str], broker_ok: Callable[[], object],
                    max_request_size: int = MAX_MESSAGE_BYTES, topics: Sequence[str] = ()) -> Written:
    """Write `df`'s (topic, key, value) rows; `unit` names columns whose values are unique per row (e.g. topic,
    source partition and offset) and order it. Rows over `max_request_size` are not sent. When the write of the
    others fails, `broker_ok()` must return (it raises when the broker does not answer, and so does this); then
    the rows are written again in halves, down to single rows, and the rows that still fail are returned. Rows
    written before a failed attempt may be written twice (delivery is at least once). The write fails as a whole
    when nothing could be written or more than MAX_ISOLATED rows fail.

    The usual case is one Spark job: the rows are counted, per topic and by size, by an observation on the write
    itself (`topics`: the topics `df` may hold; a row of any other topic costs one more counting pass). Only a
    failed write, or a row too large to send, costs more passes over `df`."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    fits = _size() <= max_request_size
    if not kafka_v2(df.sparkSession):  # an Observation on Spark's V1 Kafka write is never filled: count first
        rows, failed = _per_topic(df), _too_big(df, unit, max_request_size)
        observed, seen = df, None
    else:
        seen = Observation()
        named = [F.sum((F.col("topic") == t).cast("long")).alias(f"t{i}") for i, t in enumerate(topics)]
        observed = df.observe(seen, F.count(F.lit(1)).alias("n"), F.sum((~fits).cast("long")).alias("big"), *named)
    try:
        write_kafka(observed.where(fits), bootstrap, max_request_size)
    except AnalysisException:  # a bug in the query, not a record that cannot be written
        raise
    except Exception as e:
        if cancelled(e):
            raise
        broker_ok()
        return _isolate(df.persist(), bootstrap, unit, broker_ok, max_request_size, e)
    if seen is not None:
        got = seen.get
        rows = {t: got[f"t{i}"] or 0 for i, t in enumerate(topics)}
        if got["n"] > sum(rows.values()):  # a topic the caller did not name
            rows = _per_topic(df)
        failed = _too_big(df, unit, max_request_size) if got["big"] else []
    return _checked(rows, failed)


# what a Spark job stopped from outside says: the streaming query stopping (it cancels its job group and interrupts
# its thread: java.lang.InterruptedException, seen) or the session shutting down. Not a record that cannot be
# written: writing the micro-batch again in halves would only duplicate what the first attempt wrote, and the
# micro-batch is not committed, so it runs again when the query starts again
CANCELLED = re.compile(r"\bJob \d+ cancelled\b|InterruptedException|ClosedByInterruptException|"
                       r"SparkContext was shut down|stopped SparkContext")


def cancelled(e: BaseException) -> bool:
    """Whether a failed write was stopped from outside (CANCELLED) rather than failed on its records."""
    return CANCELLED.search(str(e)) is not None


def kafka_v2(spark) -> bool:
    """Whether Spark writes Kafka through its DataSource V2 sink (session_conf takes kafka off
    spark.sql.sources.useV1SourceList), where an Observation on the write is filled."""
    v1 = spark.conf.get("spark.sql.sources.useV1SourceList", "kafka") or ""
    return "kafka" not in [x.strip().lower() for x in v1.split(",")]


def _size():
    """A record's size as the producer counts it against max.request.size (RECORD_OVERHEAD: see there)."""
    from pyspark.sql import functions as F

    return F.coalesce(F.octet_length("key"), F.lit(0)) + F.octet_length("value") + RECORD_OVERHEAD


def _per_topic(df) -> dict[str, int]:
    return {r["topic"]: r["count"] for r in df.groupBy("topic").count().collect()}


def _too_big(df, unit: Sequence[str], max_request_size: int) -> list[tuple[tuple, str]]:
    """The rows over the writer's max.request.size, named by their `unit` (rare: one more pass over `df`)."""
    from pyspark.sql import functions as F

    big = df.where(_size() > max_request_size).select(F.struct(*unit).alias("unit"), "topic", _size().alias("n"))
    return [(tuple(r["unit"]), f"write failed: the {r['topic']} record is {r['n']} bytes, over the writer's "
             f"max.request.size ({max_request_size})") for r in big.collect()]


def _isolate(df, bootstrap: str, unit: Sequence[str], broker_ok, max_request_size: int,
             first: Exception) -> Written:
    """After a failed write: `df` (persisted by the caller, so that its rows are computed once more, not once per
    attempt) written again in halves, down to the rows that cannot be written."""
    try:
        failed = _too_big(df, unit, max_request_size)
        failed += _bisect(df.where(_size() <= max_request_size), bootstrap, unit, broker_ok, max_request_size, first)
        return _checked(_per_topic(df), failed)
    finally:
        df.unpersist()


def _checked(rows: dict[str, int], failed: list[tuple[tuple, str]]) -> Written:
    if failed and len(failed) >= sum(rows.values()):
        raise RuntimeError(f"no record of the batch could be written: {failed[0][1]}")
    return Written(rows, failed)


def _from(unit: Sequence[str], values: tuple, upward: bool):
    """Rows at or after (upward) or at or before `values` in the lexicographic order of the `unit` columns (a
    struct literal compares only when its field names and nullability match exactly)."""
    from pyspark.sql import functions as F

    c, v = F.col(unit[0]), F.lit(values[0])
    if len(unit) == 1:
        return c >= v if upward else c <= v
    return (c > v if upward else c < v) | ((c == v) & _from(unit[1:], values[1:], upward))


def _bisect(df, bootstrap: str, unit: Sequence[str], broker_ok, max_request_size: int,
            first: Exception) -> list[tuple[tuple, str]]:
    from pyspark.errors import AnalysisException

    keys = sorted(tuple(r) for r in df.select(*unit).collect())
    failed: list[tuple[tuple, str]] = []

    def split(lo: int, hi: int, error: Exception) -> None:
        if hi - lo == 1:
            failed.append((keys[lo], f"write failed: {cause(error)}"))
            if len(failed) > MAX_ISOLATED:
                raise RuntimeError(f"over {MAX_ISOLATED} records could not be written: {cause(error)}") from error
            return
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            try:
                write_kafka(df.where(_from(unit, keys[a], True) & _from(unit, keys[b - 1], False)), bootstrap,
                            max_request_size)
            except AnalysisException:  # a bug in the query, not a record that cannot be written
                raise
            except Exception as e:
                if cancelled(e):
                    raise
                broker_ok()
                split(a, b, e)

    if keys:
        split(0, len(keys), first)
    return failed
