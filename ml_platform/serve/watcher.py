"""The champion watcher, shared by every front end that serves the champion (and, the same class on the
`challenger` alias, its challenger). Model hot swap: a background thread watches where the alias points and
loads a new version off the hot path; the scorer takes the loaded model between micro-batches, so one
micro-batch is scored by one model version and a swap never restarts the query. A version that fails to load is
reported and the current model keeps serving; it is retried after `retry_seconds` (the alias may be fixed
meanwhile, or the failure may have been transient).

An alias that resolves to nothing: the champion watcher keeps serving what it has (a champion removed by hand
must not stop all traffic); a watcher built with `drop_when_gone` (the challenger) stops serving at the next
take(), which then returns None.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Loaded:
    version: str
    model: Any
    loaded_at: float
    load_seconds: float


class ChampionWatcher:
    def __init__(self, resolve: Callable[[], str | None], load: Callable[[str], Any], poll_seconds: float = 5.0,
                 retry_seconds: float = 60.0, log: Callable[[str], None] = print,
                 on_error: Callable[[str], None] | None = None, alias: str = "champion",
                 drop_when_gone: bool = False):
        self.resolve, self.load, self.log = resolve, load, log
        self.alias, self.drop_when_gone = alias, drop_when_gone
        self._drop = False  # the alias is gone: the next take() stops serving
        # told at once (the scorer's status file): a failed load must show even while no micro-batch completes
        self.on_error = on_error
        self.poll_seconds, self.retry_seconds = poll_seconds, retry_seconds
        self.current: Loaded | None = None
        self._pending: Loaded | None = None
        self._failed: dict[str, float] = {}
        self.wanted: str | None = None  # where the alias pointed at the last successful read
        self.last_error: str | None = None
        self.swaps: list[tuple[str | None, str | None, float]] = []  # (from, to, at); to None: stopped serving
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def failing(self) -> bool:
        """The alias points at a version that failed to load (the loaded one, if any, keeps serving): what a
        readiness probe reports. Pointing the alias back at a loadable version clears it."""
        return self.wanted is not None and self.wanted in self._failed

    def check(self) -> bool:
        """One poll: load the alias's version if it is new. Returns whether a model is waiting to be taken."""
        try:
            wanted = self.resolve()
        except Exception as e:  # the registry is down: keep serving, say so
            self._error(f"cannot read the {self.alias} alias: {e}")
            return self._pending is not None
        self.wanted = wanted
        with self._lock:
            if wanted is None and self.drop_when_gone:
                if self.current is not None or self._pending is not None:
                    self._drop, self._pending = True, None
                return False
            self._drop = False
            have = {x.version for x in (self.current, self._pending) if x is not None}
        if wanted is None or wanted in have:
            return self._pending is not None
        failed_at = self._failed.get(wanted)
        if failed_at is not None and time.time() - failed_at < self.retry_seconds:
            return self._pending is not None
        t0 = time.perf_counter()
        try:
            model = self.load(wanted)
        except Exception as e:
            self._failed[wanted] = time.time()
            serving = self.current.version if self.current else "nothing"
            self._error(f"model version {wanted} failed to load; still serving version {serving}: "
                        f"{type(e).__name__}: {str(e)[:500]}")
            return self._pending is not None
        self._failed.pop(wanted, None)
        with self._lock:
            self._pending = Loaded(wanted, model, time.time(), time.perf_counter() - t0)
            self._drop = False
        self.log(f"loaded {self.alias} model version {wanted} in {self._pending.load_seconds:.1f}s; it serves from "
                 f"the next micro-batch")
        return True

    def _error(self, msg: str) -> None:
        self.last_error = msg
        self.log(f"error: {msg}")
        if self.on_error is not None:
            self.on_error(msg)

    def take(self) -> Loaded | None:
        """Between micro-batches: switch to a freshly loaded model if there is one; the model to score with (None
        when nothing is loaded, or the alias of a `drop_when_gone` watcher was removed)."""
        with self._lock:
            if self._drop:
                self._drop = False
                if self.current is not None:
                    self.swaps.append((self.current.version, None, time.time()))
                    self.log(f"the {self.alias} alias is gone: version {self.current.version} stops serving")
                self.current = None
            if self._pending is not None:
                old = self.current.version if self.current else None
                self.current, self._pending = self._pending, None
                self.swaps.append((old, self.current.version, time.time()))
                self.log(f"now serving {self.alias} model version {self.current.version}"
                         + (f" (was {old})" if old else ""))
            return self.current

    def wait_first(self, stop: threading.Event, say_every: float = 30.0, describe: str = "a champion",
                   heartbeat: Callable[[], None] | None = None) -> bool:
        """Block until a first model is loaded (or `stop` is set), saying that it waits; `heartbeat` is called at
        every poll, so a status file shows a live process that waits rather than a hung one."""
        last = 0.0
        while not stop.is_set():
            if self.check():
                return True
            if heartbeat is not None:
                heartbeat()
            if time.monotonic() - last > say_every:
                self.log(f"waiting for {describe}; no model to serve yet")
                last = time.monotonic()
            stop.wait(self.poll_seconds)
        return False

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_seconds):
                self.check()

        self._thread = threading.Thread(target=loop, name=f"{self.alias}-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.poll_seconds + 5)


def registry_watcher(model_name: str, tracking_uri: str, poll_seconds: float, logger: Callable[[str], None] = print,
                     on_error: Callable[[str], None] | None = None, alias: str = "champion") -> ChampionWatcher:
    """Resolve `models:/<name>@<alias>` to its version and load that version with mlflow.spark.load_model
    (by version, so the alias moving during a load cannot mix two versions). Any alias but `champion` is followed
    with drop_when_gone: removing it stops that model serving. The `challenger` alias pointing at the champion's
    version (as it does right after a promotion) resolves to nothing: no challenger."""
    import mlflow
    import mlflow.spark

    from ml_platform.train.registry import CHALLENGER, CHAMPION, Tracker

    name = model_name
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    tracker = Tracker(tracking_uri)

    def resolve() -> str | None:
        version = tracker.version_for(name, alias)
        if alias == CHALLENGER and version is not None and version == tracker.version_for(name, CHAMPION):
            return None
        return version

    return ChampionWatcher(resolve, lambda v: mlflow.spark.load_model(f"models:/{name}/{v}"), poll_seconds,
                           log=logger, on_error=on_error, alias=alias, drop_when_gone=alias != CHAMPION)
