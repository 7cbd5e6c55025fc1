"""The prediction store as a Dagster resource: where the DynamoDB-API table is (dynalite under `make run`, AWS's own
endpoint when endpoint_url is None). Credentials come from boto3's usual environment, never from config."""

from __future__ import annotations

from dagster import ConfigurableResource


class PredictionStoreResource(ConfigurableResource):
    table: str = "ml_platform_predictions"
    endpoint_url: str | None = None
    region: str = "us-east-1"

    def describe(self) -> dict:
        """For a Spark job (here or on EMR): which table, where."""
        return {"store_table": self.table, "store_endpoint": self.endpoint_url, "region": self.region}
