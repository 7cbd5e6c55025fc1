"""The scorer's hot path as Spark column expressions (no Python UDF): Kafka request rows -> validated, cleaned
rows with a DLQ reason -> scored rows -> prediction and DLQ messages. The cleaning is `cleaning.classify`, the
batch path's own function, so a request is cleaned exactly as a training row was.

The shapes of the messages it writes are serve/messages.py's (the JSON Schemas in contracts/). A challenger (the
version under the `challenger` alias) serves beside the champion in shadow or split mode (spec serving.challenger;
the split's assignment is serve/routing.py's).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from ml_platform.data.cleaning import REASON, classify, spec_cached
from ml_platform.serve.messages import DLQ_EXCERPT_CHARS, DLQ_KEY_CHARS, DLQ_REASON_CHARS, REQUEST_ID_PATTERN, topic
from ml_platform.serve.routing import in_challenger_column
from ml_platform.serve.watcher import Loaded
from ml_platform.spec import DatasetSpec

ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"
PRE = "__pre_reason"
PARSE_REASON = "__parse_reason"
CORRUPT_JSON = "__corrupt_json"
KEEP = ["__topic", "__partition", "__offset", "__key", "__value", "__bytes", "request_id", "event_ts"]
OUTPUT_UNIT = ("topic", "__partition", "__offset")  # unique per output row of score_batch(keep_source=True)
# the excerpt of a DLQ record that replaces an output that could not be written: smaller than DLQ_EXCERPT_CHARS, so
# the replacement fits where a full DLQ record did not (2,048 control characters are 12 KB once JSON-escaped)
UNWRITTEN_EXCERPT_CHARS = 256


def request_schema(spec: DatasetSpec) -> StructType:
    """Every source column as a string: a JSON number or boolean is read as its text, so '12,345' and 12345
    both reach the same parse rules as in the batch files."""
    names = ["request_id", "event_time"] + [c for c in spec.column_names if c not in ("request_id", "event_time")]
    return StructType([StructField(n, StringType()) for n in names])


def iso(col: Column) -> Column:
    return F.date_format(col, ISO)


def single_object(raw: Column, depth: int = 4) -> Column:
    """True when the text is one JSON value and nothing after it. Spark's JSON readers (from_json, parse_json)
    stop at the end of the first value and ignore the rest, so `{...} xyz` would be scored. Column expressions
    only: drop escapes, blank out string literals (so braces in strings do not count), then collapse innermost
    {...} / [...] groups `depth` times; one value leaves exactly one token. Deeper nesting counts as not one value
    (a request is a flat object; a nested value in a feature is wrong-typed anyway)."""
    skeleton = F.regexp_replace(F.regexp_replace(raw, r"(?s)\\.", ""), r'"[^"]*"', '""')
    for _ in range(depth):
        skeleton = F.regexp_replace(skeleton, r"[{\[][^{}\[\]]*[}\]]", "0")
    # the usual request has no brace but its own two: then the object ends at the last character, whatever its
    # strings hold. One linear match, a third of the collapsing's cost (bench/serving_profile.py)
    return F.when(raw.rlike(r"^\s*\{[^{}]*\}\s*$"), F.lit(True)).otherwise(skeleton.rlike(r"^\s*0\s*$"))


def string_request_id(raw: Column) -> Column:
    """True when the message's request_id is a JSON string, not a number, object, array or boolean: from_json
    reads any of those as its text, so the type is seen in the message itself (escapes dropped first, so a
    quote inside a string cannot pose as a delimiter). A key given twice counts as invalid."""
    text = F.regexp_replace(raw, r"(?s)\\.", "")
    return (F.regexp_count(text, F.lit(r'"request_id"\s*:')) == 1) & text.rlike(r'"request_id"\s*:\s*"')


def parse_requests(kafka_rows: DataFrame, spec: DatasetSpec, max_bytes: int) -> DataFrame:
    """Kafka source rows -> one row per message: the cleaned typed columns, `request_id`, `event_ts`, the Kafka
    coordinates, `__value` (the original bytes) and `_reject_reason` (null when the request can be scored)."""
    cols = _request_columns(spec, max_bytes)
    flat = kafka_rows.select(*cols.read).select(*cols.flat)
    return classify(flat, spec, serving=True).select(*cols.out)


class _RequestColumns(NamedTuple):
    read: tuple[Column, ...]
    flat: tuple[Column, ...]
    out: tuple[Column, ...]


def read_columns(spec: DatasetSpec) -> tuple[set[str], list[str]]:
    """(the cleaned columns a request's row must have: what a model reads, required columns, the key, and the inputs
    of derived features among them; the source columns they come from, in spec order). Only those are parsed from
    the JSON: the rest (free text, excluded columns, the target) never leave the parser."""
    numeric, categorical = spec.feature_columns()
    needed = set(numeric) | set(categorical) | {c.name for c in spec.columns if c.required} | (
        {spec.key} if spec.key else set()) | ({spec.recommend.user, spec.recommend.item} if spec.recommend else set())
    grew = True
    while grew:  # a derived feature needs its inputs, which may be derived too
        grew = False
        for d in spec.derived:
            if d.name in needed and not set(d.inputs) <= needed:
                needed |= set(d.inputs)
                grew = True
    sources = [c.name for c in spec.columns if c.name != spec.target and (
        c.name in needed or needed.intersection(c.output_names()))]
    return needed, sources


@spec_cached()  # built once per spec and size limit, not per micro-batch or request (see cleaning.spec_cached)
def _request_columns(spec: DatasetSpec, max_bytes: int) -> _RequestColumns:
    raw = F.col("value").cast("string")
    size = F.octet_length(F.col("value"))
    big = size > max_bytes
    needed, sources = read_columns(spec)
    schema = StructType([f for f in request_schema(spec).fields if f.name in ("request_id", "event_time", *sources)])
    read = (
        F.col("topic").alias("__topic"), F.col("partition").alias("__partition"), F.col("offset").alias("__offset"),
        F.col("key").cast("string").alias("__key"), F.col("value").alias("__value"), size.alias("__bytes"),
        # one JSON parse, of the columns read only: PERMISSIVE from_json puts anything that is not a JSON object in
        # the corrupt column; NaN and Infinity tokens (which careless producers write) parse, and count as missing
        F.when(~big, F.from_json(raw, schema.add(CORRUPT_JSON, StringType()),
                                 {"columnNameOfCorruptRecord": CORRUPT_JSON})).alias("__json"),
        F.when(~big, single_object(raw)).alias("__single"), F.when(~big, string_request_id(raw)).alias("__sid"))
    given = F.col("__json.request_id")
    ts = F.try_to_timestamp(F.trim(F.col("__json.event_time")))
    valid_id = F.col("__sid") & given.rlike(REQUEST_ID_PATTERN)
    pre = (F.when(F.col("__bytes") > max_bytes, F.concat(F.lit("message too large: "), F.col("__bytes").cast("string"),
                                                       F.lit(f" bytes (limit {max_bytes})")))
           .when(F.col("__json").isNull() | F.col(f"__json.{CORRUPT_JSON}").isNotNull(),
                 F.lit("not a JSON object (malformed or truncated JSON)"))
           .when(~F.col("__single"), F.lit("not a single JSON object: text after the closing brace, or values "
                                           "nested too deep"))
           .when(given.isNull() | (given == ""), F.lit("missing request_id"))
           .when(~valid_id, F.concat(F.lit("invalid request_id '"), F.substring(given, 1, 60), F.lit(
               "': it must be a JSON string of 1-200 printable ASCII characters, no whitespace or control "
               "characters")))
           .when(ts.isNull(), F.concat(F.lit("event_time: missing or not an ISO-8601 time '"),
                                       F.substring(F.coalesce(F.col("__json.event_time"), F.lit("")), 1, 60),
                                       F.lit("'"))))
    # a request carries no label: the target is null whatever was sent; a column no model reads is null too (the
    # cleaning's expressions on a null literal fold away when Spark optimizes the plan)
    flat = (*[F.col(c) for c in ("__topic", "__partition", "__offset", "__key", "__value", "__bytes")],
            F.when(valid_id, given).alias("request_id"), ts.alias("event_ts"), pre.alias(PRE),
            *[(F.col("__json").getField(c) if c in sources else F.lit(None).cast("string")).alias(c)
              for c in spec.column_names])
    out = (*[F.col(f"__src_{c}").alias(c) for c in KEEP],
           *[F.col(c) for c in spec.cleaned_columns if c != spec.target and c in needed],
           F.coalesce(F.col(f"__src_{PRE}"), F.col(REASON)).alias(REASON))
    return _RequestColumns(read, flat, out)


def score(model, good: DataFrame, spec: DatasetSpec, model_name: str, version: str,
          carry: tuple[str, ...] = ()) -> DataFrame:
    """The champion's predictions for cleaned requests, with a reason where the model gave a non-finite one.
    `carry`: more of `good`'s columns to keep beside KEEP's."""
    # xgboost.spark's predict UDF logs "Do the inference on the CPUs" at INFO from the Python worker on every
    # micro-batch, at the level its driver-side logger has when transform() is called; warnings still show
    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    out = model.transform(good)
    pred = F.col("prediction").cast("double")
    prob = (vector_to_array("probability")[1] if spec.task == "classification" else F.lit(None)).cast("double")
    extra = []
    if spec.task == "clustering" and "probability" in out.columns:  # a mixture model: membership of each cluster
        probs = vector_to_array("probability")
        ids = F.transform(F.sequence(F.lit(0), F.size(probs) - 1), lambda i: i.cast("string"))
        extra = [F.map_from_arrays(ids, probs).alias("probabilities")]
    if spec.task == "recommendation":  # an unknown user or item: the fallback answered
        extra = [F.col("cold_start")]
    if spec.task == "multiclass":  # the class's name and every class's probability beside its index
        probs = vector_to_array("probability")
        prob = F.array_max(probs)
        names = F.array(*[F.lit(c) for c in spec.classes])
        extra = [F.element_at(names, pred.cast("int") + 1).alias("label"),
                 F.map_from_arrays(names, probs).alias("probabilities")]
    finite = ~F.isnan(pred) & (F.abs(pred) != float("inf"))
    return out.select(
        *KEEP, *carry,
        pred.alias("prediction"), prob.alias("probability"), F.lit(model_name).alias("model_name"),
        F.lit(str(version)).alias("model_version"), *extra,
        F.when(~finite, F.lit("the model produced a non-finite prediction")).alias(REASON))


def _prediction(scored: DataFrame) -> tuple[Column, Column]:
    """A scored row's prediction record: (key, value)."""
    multiclass = [c for c in ("label", "probabilities", "cold_start") if c in scored.columns]
    body = F.struct(
        "request_id", "prediction", "probability", "model_name", "model_version",
        iso(F.col("event_ts")).alias("event_time"), iso(F.current_timestamp()).alias("scored_at"),
        F.sha2(F.col("__value"), 256).alias("input_sha256"), *multiclass)
    return F.col("request_id"), F.to_json(body, {"ignoreNullFields": "false"})


def _dead_letter(excerpt_chars: int = DLQ_EXCERPT_CHARS) -> tuple[Column, Column]:
    """A rejected row's DLQ record: (key, value). Bounded whatever was sent (see messages.DLQ_EXCERPT_CHARS)."""
    # invalid UTF-8 replaced (U+FFFD) before cutting: Spark counts a stray lead byte as a whole character, so an
    # excerpt of random bytes was invalid UTF-8 JSON and longer than excerpt_chars once a consumer decoded it
    text = F.make_valid_utf8(F.col("__value").cast("string"))
    body = F.struct(F.substring(text, 1, excerpt_chars).alias("raw"), F.col("__bytes").alias("raw_bytes"),
                    F.sha2(F.col("__value"), 256).alias("raw_sha256"),
                    F.coalesce(F.char_length(text) > excerpt_chars, F.lit(False)).alias("raw_truncated"),
                    F.col("__topic").alias("topic"), F.col("__partition").alias("partition"),
                    F.col("__offset").alias("offset"), F.substring(REASON, 1, DLQ_REASON_CHARS).alias("reason"),
                    iso(F.current_timestamp()).alias("dlq_at"))
    key = F.substring(F.make_valid_utf8(F.coalesce("request_id", "__key")), 1, DLQ_KEY_CHARS)
    return key, F.to_json(body, {"ignoreNullFields": "false"})


def prediction_messages(scored: DataFrame, pred_topic: str, keep: tuple[str, ...] = ()) -> DataFrame:
    key, value = _prediction(scored)
    return scored.select(F.lit(pred_topic).alias("topic"), key.alias("key"), value.alias("value"), *keep)


def dlq_messages(rejected: DataFrame, dlq_topic: str, keep: tuple[str, ...] = (),
                 excerpt_chars: int = DLQ_EXCERPT_CHARS) -> DataFrame:
    """A DLQ write that cannot fail for size. A smaller `excerpt_chars` makes the record for a message whose first
    output could not be written."""
    key, value = _dead_letter(excerpt_chars)
    return rejected.select(F.lit(dlq_topic).alias("topic"), key.alias("key"), value.alias("value"), *keep)


def served_messages(scored: DataFrame, pred_topic: str, dlq_topic: str, keep: tuple[str, ...] = ()) -> DataFrame:
    """Each scored row's one record in a single projection: its prediction, or its DLQ record when the model gave
    no finite prediction (so the model runs once per row, without caching its output to split it in two)."""
    ok = F.col(REASON).isNull()
    (pk, pv), (dk, dv) = _prediction(scored), _dead_letter()
    return scored.select(F.when(ok, F.lit(pred_topic)).otherwise(F.lit(dlq_topic)).alias("topic"),
                         F.when(ok, pk).otherwise(dk).alias("key"), F.when(ok, pv).otherwise(dv).alias("value"),
                         *keep)


def unwritten_messages(out: DataFrame, failed: list[tuple[tuple, str]], spec: DatasetSpec) -> DataFrame:
    """The DLQ records for the output rows of `out` (score_batch with keep_source) that could not be written:
    `failed` holds their OUTPUT_UNIT values and why. A prediction or DLQ record becomes its request's DLQ record
    with that reason (so requests in = predictions + DLQ still holds); a shadow prediction has no caller and
    is dropped."""
    why = out.sparkSession.createDataFrame([(*u, reason) for u, reason in failed],
                                           "topic string, __partition int, __offset long, __why string")
    rows = out.join(F.broadcast(why), list(OUTPUT_UNIT)).where(F.col("topic") != topic(spec, "shadow"))
    return dlq_messages(rows.withColumn(REASON, F.col("__why")), topic(spec, "dlq"),
                        excerpt_chars=UNWRITTEN_EXCERPT_CHARS)


def score_batch(kafka_rows: DataFrame, spec: DatasetSpec, model, model_name: str, version: str, max_bytes: int,
                challenger: Loaded | None = None, mode: str | None = None, share: float | None = None,
                keep_source: bool = False) -> tuple[DataFrame, list[DataFrame]]:
    """One micro-batch of requests -> (topic, key, value) rows for the predictions, shadow and DLQ topics, and the
    cached frames to unpersist once written.

    `kafka_rows` needs only the Kafka source columns topic, partition, offset, key and value. `model`/`version`
    are the champion's; `challenger` is the challenger's `watcher.Loaded` (or None), served as `mode` (off, shadow
    or split; default the spec's serving.challenger.mode) with `share` (split; default the spec's). One call =
    one champion version and at most one challenger version. A challenger of the champion's own version, or
    mode off, is no challenger.

    Every input message yields exactly one served output row, a prediction (topic `<ds>.predictions`) or a DLQ
    record: requests in = predictions + DLQ. shadow: the champion answers every request, and the challenger's
    predictions for the same requests go to `<ds>.shadow` (never to the caller; a challenger's non-finite
    prediction is not written). split: a request whose request_id hashes under `share` (routing.in_challenger) is
    answered by the challenger, its prediction stamped with the challenger's version. Without a challenger the
    frame is one pass (parse, model, message) and caches nothing: the model also runs on the rows rejected before
    it (its stages take nulls and unseen values) and their parse reason wins; with no union and no cache in it,
    PlanCache can reuse that plan for the next micro-batches. With a challenger, the parse is cached, so that it
    runs once per micro-batch; each model runs once per row it scores. `keep_source` keeps the request's
    columns (KEEP: its Kafka coordinates and bytes) on every output row, so a row that cannot be written can be
    dead-lettered instead."""
    c = spec.serving.challenger
    mode = mode or c.mode
    share = c.share if share is None else share
    if mode not in ("off", "shadow", "split"):
        raise ValueError(f"challenger mode must be off, shadow or split, got {mode!r}")
    if challenger is None or str(challenger.version) == str(version):
        mode = "off"
    keep = tuple(KEEP) if keep_source else ()
    if mode == "off":
        parsed = parse_requests(kafka_rows, spec, max_bytes).withColumnRenamed(REASON, PARSE_REASON)
        scored = score(model, parsed, spec, model_name, version, carry=(PARSE_REASON,))
        scored = scored.withColumn(REASON, F.coalesce(PARSE_REASON, REASON))
        return served_messages(scored, topic(spec, "predictions"), topic(spec, "dlq"), keep), []
    parsed = parse_requests(kafka_rows, spec, max_bytes).persist()
    bad = parsed.where(F.col(REASON).isNotNull())
    good = parsed.where(F.col(REASON).isNull()).drop(REASON)
    cached = [parsed]
    shadow = None
    if mode == "split":
        routed = in_challenger_column("request_id", share)
        scored = score(model, good.where(~routed), spec, model_name, version).unionByName(
            score(challenger.model, good.where(routed), spec, model_name, challenger.version))
    else:
        scored = score(model, good, spec, model_name, version)
        if mode == "shadow":
            shadow = score(challenger.model, good, spec, model_name, challenger.version)
    out = served_messages(scored, topic(spec, "predictions"), topic(spec, "dlq"), keep)
    out = out.unionByName(dlq_messages(bad.select(*KEEP, REASON), topic(spec, "dlq"), keep))
    if shadow is not None:
        out = out.unionByName(prediction_messages(shadow.where(F.col(REASON).isNull()), topic(spec, "shadow"),
                                                  keep))
    return out, cached


class PlanCache:
    """The scorer's output frame, built once per serving state (`key`: the versions and mode) and reused: a later
    micro-batch's frame is the first one's analysed plan with the micro-batch's own source in place of the first's.

    Building the frame costs ~2 s a micro-batch, whatever its size (a Py4J call per column function and Spark's
    analysis of the plan after each model stage; bench/serving_profile.py): most of a small micro-batch's time,
    so most of the latency at a steady request rate. Spark gives each micro-batch of a streaming source the same
    output attributes, so only the source node differs. Any surprise (a source with other attributes, a plan
    without the old source, a Py4J error) builds the frame again: this is a cache, never a different result."""

    def __init__(self, log=None):
        self._key, self._plan, self._source = None, None, None
        self.builds = self.reused = 0
        self._log = log

    def frame(self, batch: DataFrame, key: tuple, build) -> tuple[DataFrame, list[DataFrame]]:
        """`build()` -> (frame, cached frames), as score_batch returns; a frame that caches is not reused."""
        source = batch._jdf.queryExecution().analyzed()
        if key == self._key:
            try:
                out = _rebind(batch.sparkSession, self._plan, self._source, source)
            except Exception as e:  # noqa: BLE001 - a cache miss, never a failure
                out = None
                if self._log:
                    self._log(f"plan cache: rebuilding ({type(e).__name__}: {str(e)[:200]})")
            if out is not None:
                self.reused += 1
                return out, []
        out, cached = build()
        self.builds += 1
        self._key, self._plan, self._source = (None, None, None) if cached else (
            key, out._jdf.queryExecution().analyzed(), source)
        return out, cached


def _rebind(spark, plan, old, new) -> DataFrame | None:
    """`plan` with its subtree equal to `old` replaced by `new`, as a DataFrame (None when `new` has other output
    attributes than `old`, or `plan` has no such subtree)."""
    if not old.output().equals(new.output()):
        return None
    jvm = spark._jvm

    def swap(node):
        if node.equals(old):
            return new
        kids = node.children()
        for i in range(kids.size()):
            got = swap(kids.apply(i))
            if got is not None:
                seq = jvm.java.util.ArrayList()
                for j in range(kids.size()):
                    seq.add(got if j == i else kids.apply(j))
                return node.withNewChildren(jvm.scala.jdk.javaapi.CollectionConverters.asScala(seq).toSeq())
        return None

    rebound = swap(plan)
    if rebound is None:
        return None
    return DataFrame(jvm.org.apache.spark.sql.classic.Dataset.ofRows(spark._jsparkSession, rebound), spark)
