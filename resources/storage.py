"""Storage as a Dagster resource: the landing zone and the bronze, silver, quarantine and gold stores, on a local
folder, S3 or HDFS. Each backend also says what Spark needs to read its URIs (jars, Hadoop settings)."""

from __future__ import annotations

from dagster import ConfigurableResource

from ml_platform.spark import s3a_conf
from ml_platform.stores import LocalStore, Store, open_store


class StorageResource(ConfigurableResource):
    def store(self) -> Store:
        raise NotImplementedError

    def describe(self) -> dict:
        """Where the store is, for a Spark job elsewhere (EMR): config only, never a credential."""
        raise NotImplementedError

    def spark_conf(self) -> dict[str, str]:
        return {}

    def jar_groups(self) -> list[str]:
        return []


class LocalStorage(StorageResource):
    """A folder on this machine (or a shared mount every Spark worker sees at the same path)."""

    root: str

    def store(self) -> Store:
        return LocalStore(self.root)

    def describe(self) -> dict:
        return {"root": self.root}


class S3Storage(StorageResource):
    """s3://bucket/prefix. Credentials only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a
    profile or an instance role), read by boto3 and by s3a; `endpoint_url` for an S3-compatible server."""

    root: str
    endpoint_url: str | None = None
    region: str = "us-east-1"

    def store(self) -> Store:
        return open_store(self.root, endpoint_url=self.endpoint_url, region=self.region)

    def describe(self) -> dict:
        return {"root": self.root, "endpoint_url": self.endpoint_url, "region": self.region}

    def spark_conf(self) -> dict[str, str]:
        return s3a_conf(self.endpoint_url, self.region)

    def jar_groups(self) -> list[str]:
        return ["aws"]


class HdfsStorage(StorageResource):
    """hdfs://namenode:port/path: Spark through Hadoop's own client, the platform's file operations through
    WebHDFS on the namenode's HTTP port as `user` (simple authentication)."""

    root: str
    http_port: int = 9870
    user: str = "hdfs"

    def store(self) -> Store:
        return open_store(self.root, http_port=self.http_port, user=self.user)

    def describe(self) -> dict:
        return {"root": self.root, "http_port": self.http_port, "user": self.user}
