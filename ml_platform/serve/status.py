"""A long-running serving process's state as a JSON file (atomic replace) that `make run`, tests and humans read:
the scorer and the store writer each keep one. Times are ISO-8601 UTC.

A process whose main loop fails and retries (a broker down, a write that keeps failing) says so: `failing(error)`
sets state "failing" with `consecutive_failures`, `last_error` and `last_failure_at`; `recovered(state)` ends the
streak. A crash loop is then visible in the file rather than only in a log."""

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
        self._lock = threading.RLock()  # re-entrant: add() and failing() read and update under one lock

    def update(self, **kw) -> None:
        with self._lock:
            self.data.update(kw, updated_at=iso(time.time()))
            if self.path:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.data, default=str, indent=1))
                tmp.replace(self.path)

    def add(self, **counts: int) -> None:
        with self._lock:
            self.update(**{k: self.data.get(k, 0) + v for k, v in counts.items()})

    def failing(self, error: object, **kw) -> None:
        """The main loop failed and will retry: state failing, one more consecutive failure, the error and when."""
        with self._lock:
            self.update(state="failing", consecutive_failures=self.data.get("consecutive_failures", 0) + 1,
                        last_error=str(error)[:2000], last_failure_at=iso(time.time()), **kw)

    def recovered(self, state: str, **kw) -> None:
        """Working again (`state`: the process's own healthy state): the failure streak ends; `last_failure_at`
        stays as history."""
        self.update(state=state, consecutive_failures=0, **kw)
