"""Storage as a Dagster resource: the landing zone and the bronze, silver and quarantine stores."""

from __future__ import annotations

from dagster import ConfigurableResource

from ml_platform.storage import LocalStore, Store


class StorageResource(ConfigurableResource):
    def store(self) -> Store:
        raise NotImplementedError


class LocalStorage(StorageResource):
    """A folder on this machine (or a shared mount every Spark worker sees at the same path)."""

    root: str

    def store(self) -> Store:
        return LocalStore(self.root)
