"""Where the platform's files live: the Store contract (base), and its backends, a local folder (local), S3 (s3)
and HDFS (hdfs). `open_store(root)` is the only place that picks a backend, by the root's scheme. The layout of
paths inside a store is ml_platform.layout's alone."""

from __future__ import annotations

from ml_platform.stores.base import FileInfo, StorageError, Store
from ml_platform.stores.local import LocalStore

__all__ = ["FileInfo", "LocalStore", "StorageError", "Store", "open_store"]


def open_store(root: str, **options) -> Store:
    """The store for a root: a path, s3://bucket/prefix or hdfs://namenode:port/path."""
    if root.startswith(("s3://", "s3a://")):
        from ml_platform.stores.s3 import S3Store

        return S3Store(root, **options)
    if root.startswith("hdfs://"):
        from ml_platform.stores.hdfs import HdfsStore

        return HdfsStore(root, **options)
    if "://" in root:
        raise StorageError(f"data root {root!r}: the scheme is not one of a local path, s3:// or hdfs:// "
                           f"(ML_PLATFORM_DATA)")
    return LocalStore(root)
