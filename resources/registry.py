"""The model registry as a Dagster resource. MLflow is the one backend; its tracking server (`make run`) or a plain
sqlite URI (tests) are both just a tracking URI. Credentials, if the server needs them, come from MLflow's own
environment variables (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN) and never pass through config or metadata."""

from __future__ import annotations

from dagster import ConfigurableResource

from ml_platform.train.registry import Tracker


class ModelRegistryResource(ConfigurableResource):
    def tracker(self) -> Tracker:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


class MlflowRegistry(ModelRegistryResource):
    tracking_uri: str
    ui_url: str | None = None  # where links in asset metadata point (the MLflow UI)
    # where new experiments keep artifacts (s3://bucket/mlflow, hdfs://…); None: the tracking server decides
    artifact_root: str | None = None

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.ui_url, self.artifact_root)

    def describe(self) -> dict:
        """For a Spark job elsewhere (EMR): where MLflow is. Its credentials stay in that job's environment."""
        from urllib.parse import urlsplit, urlunsplit

        u = urlsplit(self.tracking_uri)  # a user:password@ in the URI stays here
        uri = urlunsplit(u._replace(netloc=u.hostname + (f":{u.port}" if u.port else ""))) if u.password else \
            self.tracking_uri
        return {"tracking_uri": uri, "ui_url": self.ui_url, "artifact_root": self.artifact_root}
