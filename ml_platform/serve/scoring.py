"""The scorer's hot path as Spark column expressions (no Python UDF): Kafka request rows -> validated, cleaned
rows with a DLQ reason -> scored rows -> prediction and DLQ messages. The cleaning is `cleaning.classify`, the
batch path's own function, so a request is cleaned exactly as a training row was.

The shapes of the messages it writes are serve/messages.py's (the JSON Schemas in contracts/).
"""

from __future__ import annotations

from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from ml_platform.data.cleaning import REASON, classify
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec

ISO = "yyyy-MM-dd'T'HH:mm:ss.SSSXXX"
PRE = "__pre_reason"
CORRUPT_JSON = "__corrupt_json"


def request_schema(spec: DatasetSpec) -> StructType:
    """Every source column as a string: a JSON number or boolean is read as its text, so '12,345' and 12345
    both reach the same parse rules as in the batch files."""
    names = ["request_id", "event_time"] + [c for c in spec.column_names if c not in ("request_id", "event_time")]
    return StructType([StructField(n, StringType()) for n in names])


def iso(col: Column) -> Column:
    return F.date_format(col, ISO)


def parse_requests(kafka_rows: DataFrame, spec: DatasetSpec, max_bytes: int) -> DataFrame:
    """Kafka source rows -> one row per message: the cleaned typed columns, `request_id`, `event_ts`, the Kafka
    coordinates, `__raw` and `_reject_reason` (null when the request can be scored)."""
    raw = F.col("value").cast("string")
    size = F.octet_length(F.col("value"))
    big = size > max_bytes
    df = kafka_rows.select(
        F.col("topic").alias("__topic"), F.col("partition").alias("__partition"), F.col("offset").alias("__offset"),
        F.col("key").cast("string").alias("__key"), raw.alias("__raw"), size.alias("__bytes"),
        # one JSON parse: PERMISSIVE from_json puts anything that is not a JSON object in the corrupt column;
        # NaN and Infinity tokens (which careless producers write) parse, and count as missing values later
        F.when(~big, F.from_json(raw, request_schema(spec).add(CORRUPT_JSON, StringType()),
                                 {"columnNameOfCorruptRecord": CORRUPT_JSON})).alias("__json"))
    rid = F.trim(F.col("__json.request_id"))
    ts = F.try_to_timestamp(F.trim(F.col("__json.event_time")))
    pre = (F.when(F.col("__bytes") > max_bytes, F.concat(F.lit("message too large: "), F.col("__bytes").cast("string"),
                                                       F.lit(f" bytes (limit {max_bytes})")))
           .when(F.col("__json").isNull() | F.col(f"__json.{CORRUPT_JSON}").isNotNull(),
                 F.lit("not a JSON object (malformed or truncated JSON)"))
           .when(rid.isNull() | (rid == ""), F.lit("missing request_id"))
           .when(ts.isNull(), F.concat(F.lit("event_time: missing or not an ISO-8601 time '"),
                                       F.coalesce(F.col("__json.event_time"), F.lit("")), F.lit("'"))))
    flat = df.select("__topic", "__partition", "__offset", "__key", "__raw", "__bytes",
                     rid.alias("request_id"), ts.alias("event_ts"), pre.alias(PRE),
                     *[F.col("__json").getField(c).alias(c) for c in spec.column_names])
    typed = classify(flat.withColumn(spec.target, F.lit(None).cast("string")), spec, serving=True)
    keep = ["__topic", "__partition", "__offset", "__key", "__raw", "__bytes", "request_id", "event_ts"]
    numeric, categorical = spec.feature_columns()
    needed = set(numeric) | set(categorical) | {c.name for c in spec.columns if c.required} | (
        {spec.key} if spec.key else set())
    # only the columns a model can read: Spark then skips parsing the rest (free text, excluded columns)
    out = typed.select(*[F.col(f"__src_{c}").alias(c) for c in keep],
                       *[F.col(c) for c in spec.cleaned_columns if c != spec.target and c in needed],
                       F.coalesce(F.col(f"__src_{PRE}"), F.col(REASON)).alias(REASON))
    return out


def score(model, good: DataFrame, spec: DatasetSpec, model_name: str, version: str) -> DataFrame:
    """The champion's predictions for cleaned requests, with a reason where the model gave a non-finite one."""
    out = model.transform(good)
    pred = F.col("prediction").cast("double")
    prob = (vector_to_array("probability")[1] if spec.task == "classification" else F.lit(None)).cast("double")
    finite = ~F.isnan(pred) & (F.abs(pred) != float("inf"))
    return out.select(
        "__topic", "__partition", "__offset", "__key", "__raw", "__bytes", "request_id", "event_ts",
        pred.alias("prediction"), prob.alias("probability"), F.lit(model_name).alias("model_name"),
        F.lit(str(version)).alias("model_version"),
        F.when(~finite, F.lit("the model produced a non-finite prediction")).alias(REASON))


def prediction_messages(scored: DataFrame, pred_topic: str) -> DataFrame:
    body = F.struct(
        "request_id", "prediction", "probability", "model_name", "model_version",
        iso(F.col("event_ts")).alias("event_time"), iso(F.current_timestamp()).alias("scored_at"))
    return scored.select(F.lit(pred_topic).alias("topic"), F.col("request_id").alias("key"),
                         F.to_json(body, {"ignoreNullFields": "false"}).alias("value"))


def dlq_messages(rejected: DataFrame, dlq_topic: str) -> DataFrame:
    body = F.struct(F.col("__raw").alias("raw"), F.col("__bytes").alias("raw_bytes"), F.col("__topic").alias("topic"),
                    F.col("__partition").alias("partition"), F.col("__offset").alias("offset"),
                    F.col(REASON).alias("reason"), iso(F.current_timestamp()).alias("dlq_at"))
    return rejected.select(F.lit(dlq_topic).alias("topic"), F.coalesce("request_id", "__key").alias("key"),
                           F.to_json(body, {"ignoreNullFields": "false"}).alias("value"))


def score_batch(kafka_rows: DataFrame, spec: DatasetSpec, model, model_name: str, version: str,
                max_bytes: int) -> tuple[DataFrame, list[DataFrame]]:
    """One micro-batch of requests -> (topic, key, value) rows for the predictions and DLQ topics, and the cached
    frames to unpersist once written. Every input message yields exactly one output row: requests in =
    predictions + DLQ. Parsing and scoring are cached so that each runs once per micro-batch."""
    parsed = parse_requests(kafka_rows, spec, max_bytes).persist()
    bad = parsed.where(F.col(REASON).isNotNull())
    scored = score(model, parsed.where(F.col(REASON).isNull()).drop(REASON), spec, model_name, version).persist()
    out_pred = prediction_messages(scored.where(F.col(REASON).isNull()), topic(spec, "predictions"))
    out_bad = dlq_messages(bad.select("__topic", "__partition", "__offset", "__key", "__raw", "__bytes",
                                      "request_id", REASON), topic(spec, "dlq"))
    out_bad_model = dlq_messages(scored.where(F.col(REASON).isNotNull()), topic(spec, "dlq"))
    return out_pred.unionByName(out_bad).unionByName(out_bad_model), [parsed, scored]
