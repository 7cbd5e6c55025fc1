"""A store on a local folder (also what `make run` uses)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO

from ml_platform.stores.base import FileInfo, Store


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
