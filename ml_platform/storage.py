"""Where the platform's files live. One layout, three backends: a local folder, S3 (objstore.py) and HDFS
(hdfs.py). `open_store(root)` picks one by the root's scheme.

Layout, relative to the store's root:
    landing/<dataset>/                 batch files as they arrive
    quarantine/<dataset>/files/        rejected batch files, each beside <name>.reason.json
    quarantine/<dataset>/rows/         rows that failed parsing or cleaning, with the reason, per batch
    bronze/<dataset>/batch=<key>/      parsed rows of accepted files (Parquet, every value a string)
    bronze/<dataset>/_batches/<key>.json  what ingestion recorded about a batch
    bronze/<dataset>/_hashes/<sha256>     which batch first brought this content
    silver/<dataset>/batch=<key>/      cleaned, typed rows (Parquet)
    gold/<dataset>/<version>/          training-set export, feature pipeline, models, stacked model
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@dataclass(frozen=True)
class FileInfo:
    name: str
    size: int
    mtime_ns: int  # when the file arrived in its folder


class StorageError(RuntimeError):
    """A store could not be used; the message says which setting to fix."""


class Store:
    """The operations the platform needs from a file store; paths are '/'-separated and relative."""

    def uri(self, rel: str) -> str:  # what Spark reads and writes
        raise NotImplementedError

    def list_files(self, rel_dir: str) -> list[FileInfo]:
        raise NotImplementedError

    def open_read(self, rel: str) -> BinaryIO:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def move(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def write_text(self, rel: str, text: str) -> None:
        raise NotImplementedError

    def read_text(self, rel: str) -> str | None:
        raise NotImplementedError

    def create_exclusive(self, rel: str, text: str) -> str | None:
        """Write `text` only if `rel` does not exist; return the existing text if it does."""
        raise NotImplementedError

    def delete_tree(self, rel: str) -> None:
        raise NotImplementedError

    def read_head(self, rel: str, n: int = 65536) -> bytes:
        with self.open_read(rel) as f:
            return f.read(n)

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        return None if text is None else json.loads(text)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str))


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, rel: str) -> Path:
        p = (self.root / rel).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"path {rel!r} escapes the store root {self.root}")
        return p

    def uri(self, rel: str) -> str:
        return str(self.path(rel))

    def list_files(self, rel_dir: str) -> list[FileInfo]:
        out = []
        try:
            entries = list(os.scandir(self.path(rel_dir)))
        except FileNotFoundError:
            return []
        for e in entries:
            try:
                if e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    # arrival = max(mtime, ctime): a rename updates ctime, so a file moved in keeps counting as new
                    out.append(FileInfo(e.name, st.st_size, max(st.st_mtime_ns, st.st_ctime_ns)))
            except OSError:
                continue  # vanished or unreadable between listing and stat: next tick sees it again
        return out

    def open_read(self, rel: str) -> BinaryIO:
        return open(self.path(rel), "rb")

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def move(self, src: str, dst: str) -> None:
        d = self.path(dst)
        d.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path(src), d)

    def write_text(self, rel: str, text: str) -> None:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)

    def read_text(self, rel: str) -> str | None:
        try:
            return self.path(rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def create_exclusive(self, rel: str, text: str) -> str | None:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return p.read_text(encoding="utf-8")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return None

    def delete_tree(self, rel: str) -> None:
        p = self.path(rel)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def open_store(root: str, **options) -> Store:
    """The store for a root: a path, s3://bucket/prefix or hdfs://namenode:port/path."""
    if root.startswith(("s3://", "s3a://")):
        from ml_platform.objstore import S3Store

        return S3Store(root, **options)
    if root.startswith("hdfs://"):
        from ml_platform.hdfs import HdfsStore

        return HdfsStore(root, **options)
    if "://" in root:
        raise StorageError(f"data root {root!r}: the scheme is not one of a local path, s3:// or hdfs:// "
                           f"(ML_PLATFORM_DATA)")
    return LocalStore(root)
