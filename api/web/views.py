"""What the web pages show, gathered from where it lives: champions and their metrics from the MLflow registry (one
search for every dataset's aliases; a version's metrics never change, so they are read once), batches from the data
store, training state from Dagster (one GraphQL query for every dataset's assets) and live quality from each
dataset's metrics topic (a background thread keeps the newest window). A source that cannot be reached is named
on the page; the rest still shows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from ml_platform.layout import accepted_marker, batch_records_dir, landing_dir, rejected_marker
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec
from ml_platform.train.metrics import primary
from ml_platform.train.registry import CHALLENGER, CHAMPION

STACK_PREFIX = "stack_holdout_"
LIVE_SECONDS = 15.0


def chain(spec: DatasetSpec) -> list[str]:
    """The assets a batch goes through, in order, up to serving."""
    return ["raw_batches", "cleaned_features", "training_set", "feature_pipeline",
            *[f"model_{a}" for a in spec.algorithms], "stacked_model", "serving_deployment"]


def when(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else None


class VersionCache:
    """(dataset, version) -> its holdout metrics and facts: registered versions are immutable."""

    def __init__(self):
        self._known: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()

    def get(self, client, dataset: str, version: str) -> dict:
        k = (dataset, version)
        with self._lock:
            if k in self._known:
                return self._known[k]
        mv = client.get_model_version(dataset, version)
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        info = {"version": str(mv.version), "run_id": mv.run_id, "created": when(mv.creation_timestamp / 1000),
                "decision": mv.tags.get("decision"), "served": mv.tags.get("served_model"),
                "training_version": mv.tags.get("training_version"),
                "holdout": {k.removeprefix(STACK_PREFIX): v for k, v in metrics.items() if k.startswith(STACK_PREFIX)}}
        with self._lock:
            self._known[k] = info
        return info


class LiveCache:
    """The newest live-metrics window of each served dataset, read from `<ds>.metrics` every LIVE_SECONDS."""

    def __init__(self, bootstrap: str, datasets, seconds: float = LIVE_SECONDS):
        self.bootstrap, self.datasets, self.seconds = bootstrap, datasets, seconds
        self.latest: dict[str, dict] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="web-live-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.error = None
            except Exception as e:  # the broker is down: the pages say so, and the next round tries again
                self.error = f"{type(e).__name__}: {str(e)[:200]}"
            self._stop.wait(self.seconds)

    def refresh(self) -> None:
        from ml_platform.serve.kafka_io import end_offsets, read_new

        for ds in list(self.datasets()):
            name = topic(ds, "metrics")
            ends = end_offsets(self.bootstrap, name, timeout_s=3)
            if not any(ends.values()):
                continue
            msgs, _ = read_new(self.bootstrap, name, {p: max(0, e - 3) for p, e in ends.items()}, max_messages=20)
            windows = [m["value"] for m in msgs if isinstance(m["value"], dict) and "window_end" in m["value"]]
            if windows:
                self.latest[ds] = max(windows, key=lambda w: w["window_end"])


def last_batch(store, spec: DatasetSpec) -> dict | None:
    """The newest ingested batch and what became of it, and how many files wait in the landing zone."""
    records = store.list_files(batch_records_dir(spec))
    waiting = len([f for f in store.list_files(landing_dir(spec)) if not f.name.startswith((".", "_", "~"))])
    if not records:
        return {"name": None, "waiting": waiting} if waiting else None
    newest = max(records, key=lambda f: f.mtime_ns)
    key = newest.name.removesuffix(".json")
    state = ("accepted" if store.exists(accepted_marker(spec, key)) else
             "rejected" if store.exists(rejected_marker(spec, key)) else "cleaning")
    return {"name": key, "at": when(newest.mtime_ns / 1e9), "state": state, "waiting": waiting}


def champions(client, cache: VersionCache, names: list[str]) -> dict[str, dict]:
    """dataset -> {champion: version info, challenger: version info or None}, for the datasets with a model."""
    aliases = {m.name: dict(m.aliases) for m in client.search_registered_models(max_results=1000)
               if m.name in names}
    wanted = [(ds, role, v) for ds, a in aliases.items() for role, v in
              ((CHAMPION, a.get(CHAMPION)), (CHALLENGER, a.get(CHALLENGER))) if v]
    out: dict[str, dict] = {ds: {} for ds in aliases}
    with ThreadPoolExecutor(8) as pool:
        for (ds, role, _v), info in zip(wanted, pool.map(lambda w: cache.get(client, w[0], w[2]), wanted),
                                       strict=True):
            out[ds][role] = info
    for roles in out.values():
        if roles.get(CHALLENGER) and roles.get(CHAMPION) and roles[CHALLENGER]["version"] == roles[CHAMPION]["version"]:
            roles.pop(CHALLENGER)
    return out


def headline(spec: DatasetSpec, holdout: dict) -> str | None:
    metric, _ = primary(spec.task)
    v = holdout.get(metric)
    return f"{metric} {v:.4g}" if isinstance(v, float | int) else None


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
