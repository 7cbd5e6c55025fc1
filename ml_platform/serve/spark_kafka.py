"""Spark's Kafka source and sink, as every Spark front end (the streaming scorer, the benchmark) reads and writes
the topics."""

from __future__ import annotations

from ml_platform.serve.messages import MAX_MESSAGE_BYTES


def kafka_source(spark, bootstrap: str, topic_name: str, max_per_trigger: int | None):
    reader = (spark.readStream.format("kafka").option("kafka.bootstrap.servers", bootstrap)
              .option("subscribe", topic_name).option("startingOffsets", "earliest")
              # a topic re-created empty or offsets aged out must not stop a long-running service; Spark logs it
              .option("failOnDataLoss", "false"))
    if max_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_per_trigger))
    return reader.load()


def write_kafka(df, bootstrap: str) -> None:
    # the contract's limit, as the broker's: DLQ records are bounded (messages.DLQ_EXCERPT_CHARS), the limit is headroom
    (df.write.format("kafka").option("kafka.bootstrap.servers", bootstrap)
     .option("kafka.max.request.size", str(MAX_MESSAGE_BYTES)).save())
