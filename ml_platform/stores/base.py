"""The Store contract: the file operations the platform needs, whatever holds the files. Paths are relative to
the store's root and built only by ml_platform.layout."""

from __future__ import annotations

import json
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

    def read_head(self, rel: str, n: int = 65536) -> bytes:
        with self.open_read(rel) as f:
            return f.read(n)

    def read_json(self, rel: str) -> dict | None:
        text = self.read_text(rel)
        return None if text is None else json.loads(text)

    def write_json(self, rel: str, obj: dict) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str))
