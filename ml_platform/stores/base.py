"""The Store contract: the file operations the platform needs, whatever holds the files. Paths are relative to
the store's root and built only by ml_platform.layout."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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

    # Whether Delta's own commit protocol excludes a second writing process on this store. HDFS and local folders
    # rename without overwriting, atomically, so two drivers committing the same table version cannot both win.
    # S3 cannot rename, and Delta's S3 log store assumes a single driver (S3SingleDriverLogStore).
    delta_excludes_writers = True

    @contextlib.contextmanager
    def commit_lock(self, rel: str, ttl_s: float = 1800, wait_s: float = 3600) -> Iterator[None]:
        """Hold the writing of table `rel` against other processes, where the store needs it (see
        delta_excludes_writers): a lock object made by a conditional put, with an expiry so that a writer that died
        holding it does not block the table for good."""
        if self.delta_excludes_writers:
            yield
            return
        lock, me = f"_locks/{rel}.lock", f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait_s
        while True:
            held = self.create_exclusive(lock, json.dumps({"owner": me, "expires": time.time() + ttl_s}))
            if held is None:
                break
            try:
                info = json.loads(held)
            except ValueError:
                info = {}
            if info.get("expires", 0) < time.time():
                self.delete_tree(lock)  # its writer died holding it
            elif time.monotonic() > deadline:
                raise StorageError(f"{rel}: still being written by {info.get('owner')} after {wait_s:.0f} s; if "
                                   f"that process is gone, delete {lock}")
            else:
                time.sleep(0.2 + random.random() * 0.5)
        try:
            yield
        finally:
            if me in (self.read_text(lock) or ""):
                self.delete_tree(lock)

    def read_head(self, rel: str, n: int = 65536) -> bytes:
        with self.open_read(rel) as f:
            return f.read(n)

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        return None if text is None else json.loads(text)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str))
