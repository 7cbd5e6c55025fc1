"""The model registry as a Dagster resource. MLflow is the one backend; its tracking server (`make run`) or a plain
sqlite URI (tests) are both just a tracking URI. Credentials, if the server needs them, come from MLflow's own
environment variables (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN) and never pass through config or metadata."""

from __future__ import annotations

from dagster import ConfigurableResource

from ml_platform.registry import Tracker


class ModelRegistryResource(ConfigurableResource):
    def tracker(self) -> Tracker:
        raise NotImplementedError


class MlflowRegistry(ModelRegistryResource):
    tracking_uri: str
    ui_url: str | None = None  # where links in asset metadata point (the MLflow UI)

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.ui_url)
