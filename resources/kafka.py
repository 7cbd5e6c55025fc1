"""Kafka, as Dagster sees it: where the broker is. The scorer is a separate Spark application."""

from dagster import ConfigurableResource

from ml_platform.serve.kafka_io import read_new


class KafkaResource(ConfigurableResource):
    bootstrap_servers: str = "127.0.0.1:9092"

    def read_new(self, topic: str, offsets: dict[int, int], max_messages: int = 500):
        return read_new(self.bootstrap_servers, topic, offsets, max_messages)
