"""Serving, shared by every front end (the Kafka scorer in spark_streaming/, and any request/response app): the
message contracts (messages, with the JSON Schemas in contracts/), the Spark scoring path (scoring), Spark's
Kafka source and sink (spark_kafka), the champion watcher that loads and hot-swaps models (watcher), live
quality from actuals (live), and plain Kafka clients (kafka_io)."""
