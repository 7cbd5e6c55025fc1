"""A long-running serving process's state as a JSON file (atomic replace) that `make run`, tests and humans read:
the scorer and the store writer each keep one. Times are ISO-8601 UTC."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusFile:
    def __init__(self, path: Path | None, dataset: str, **counts):
        self.path = Path(path) if path else None
        self.data = {"dataset": dataset, "state": "starting", "pid": os.getpid(), **counts, "last_error": None}
        self._lock = threading.Lock()

    def update(self, **kw) -> None:
        with self._lock:
            self.data.update(kw, updated_at=iso(time.time()))
            if self.path:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, default=str, indent=1))
                tmp.replace(self.path)

    def add(self, **counts: int) -> None:
        self.update(**{k: self.data.get(k, 0) + v for k, v in counts.items()})
