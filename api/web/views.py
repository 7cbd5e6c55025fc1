"""What the web pages show, gathered from where it lives: champions and their metrics from the MLflow registry (one
search for every dataset's aliases; a version's metrics never change, so they are read once), batches from the data
store, training state from Dagster (one GraphQL query for every dataset's assets) and live quality from each
dataset's metrics topic (a background thread keeps the newest window). A source that cannot be reached is named
on the page; the rest still shows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from ml_platform.data.landing import is_temporary, partition_key
from ml_platform.layout import accepted_marker, batch_records_dir, landing_dir, rejected_marker
from ml_platform.serve.messages import topic
from ml_platform.spec import DatasetSpec
from ml_platform.train.metrics import primary
from ml_platform.train.registry import CHALLENGER, CHAMPION

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
        from api.models import _version

        info = _version(client, dataset, version).model_dump()  # what the REST API's dataset route says of it
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
    ingested = {f.name.removesuffix(".json") for f in records}
    waiting = len([f for f in store.list_files(landing_dir(spec))  # landed files stay; waiting: not ingested yet
                   if not is_temporary(f.name) and partition_key(f.name) not in ingested])
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


class ArtifactCache:
    """A finished training run's plot names and feature importance (its artifacts no longer change)."""

    def __init__(self, size: int = 256):
        self.size = size
        self._known: dict[str, tuple[list[str], dict]] = {}
        self._lock = threading.Lock()
        self.children: dict[str, list] = {}     # a finished training's model runs, by parent run id
        self.experiments: dict[str, str] = {}  # dataset -> its experiment's id

    def experiment(self, client, dataset: str) -> str | None:
        if dataset not in self.experiments:
            exp = client.get_experiment_by_name(f"ml_platform/{dataset}")
            if exp is None:
                return None
            self.experiments[dataset] = exp.experiment_id
        return self.experiments[dataset]

    def get(self, client, run_id: str, finished: bool) -> tuple[list[str], dict]:
        with self._lock:
            if run_id in self._known:
                return self._known[run_id]
        import json

        from mlflow.artifacts import load_text

        names = [a.path for a in client.list_artifacts(run_id)]
        plots = [n for n in PLOTS if n in names]
        importance = json.loads(load_text(f"runs:/{run_id}/importance.json") or "{}") \
            if "importance.json" in names else {}
        if finished:
            with self._lock:
                if len(self._known) >= self.size:
                    self._known.pop(next(iter(self._known)))
                self._known[run_id] = (plots, importance)
        return plots, importance


PLOTS = ("predicted_vs_actual.png", "residuals.png", "roc.png", "pr.png", "confusion.png", "reliability.png")


def dataset_view(p, versions: VersionCache, artifacts: ArtifactCache, spec: DatasetSpec) -> dict:
    """Everything a dataset's page shows from MLflow: three reads in parallel (the newest training with its model
    runs, the aliases, every version), plus what never changes from caches (a version's metrics, a finished
    training's model runs and artifacts, the experiment's id). A registry that cannot be read is a problem named
    on the page, not an error page."""
    from api.models import input_columns, training_board

    client, ds, problems = p.tracker().client, spec.name, []
    if len(artifacts.children) > 256:
        artifacts.children.clear()

    def aliases():
        from mlflow.exceptions import MlflowException

        try:
            return dict(client.get_registered_model(ds).aliases)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return {}

    def all_versions():
        return sorted(client.search_model_versions(f"name = '{ds}'"), key=lambda v: -int(v.version))

    with ThreadPoolExecutor(3) as pool:
        jobs = {"aliases": pool.submit(aliases), "versions": pool.submit(all_versions)}
        got = {}
        try:
            exp = artifacts.experiment(client, ds)
            got["board"] = training_board(client, spec, exp, jobs["versions"].result(),
                                          artifacts.children) if exp else None
        except Exception as e:
            problems.append(f"MLflow (trainings): {type(e).__name__}: {str(e)[:200]}")
            got["board"] = None
        for k, job in jobs.items():
            try:
                got[k] = job.result()
            except Exception as e:
                problems.append(f"MLflow ({k}): {type(e).__name__}: {str(e)[:200]}")
                got[k] = None
        got["experiment"] = artifacts.experiments.get(ds)
    alias_of, roles = got["aliases"] or {}, {}
    for alias, v in alias_of.items():
        roles.setdefault(str(v), []).append(alias)
    info = {"champion": None, "challenger": None, "input_columns": input_columns(spec),
            "serving_version": p.servers[ds].readiness()["model_version"]}
    try:
        for role in (CHAMPION, CHALLENGER):
            if alias_of.get(role) and not (role == CHALLENGER and alias_of.get(role) == alias_of.get(CHAMPION)):
                info[role] = versions.get(client, ds, str(alias_of[role]))
    except Exception as e:
        problems.append(f"MLflow (versions): {type(e).__name__}: {str(e)[:200]}")
    rows = [{"version": str(mv.version), "aliases": sorted(roles.get(str(mv.version), [])),
             "decision": mv.tags.get("decision"), "served": mv.tags.get("served_model"),
             "created": when(mv.creation_timestamp / 1000)} for mv in (got["versions"] or [])[:50]]
    plots, importance, b = [], [], got["board"]
    if b is not None:
        try:
            plots, scores = artifacts.get(client, b.run_id, b.status == "finished")
            served = (b.stack.served if b.stack else None) or "stacked"
            # per model {"permutation": {column: worsening}, "impurity": ...}: the served model's permutation
            chosen = (scores.get(served) or scores.get("stacked") or next(iter(scores.values()), {})) or {}
            importance = sorted(((k, float(v)) for k, v in (chosen.get("permutation") or {}).items()
                                 if isinstance(v, int | float)), key=lambda kv: -kv[1])[:15]
        except Exception as e:
            problems.append(f"MLflow (artifacts): {type(e).__name__}: {str(e)[:200]}")
    return {"info": info, "board": b, "versions": rows, "plots": plots, "importance": importance,
            "experiment_id": got["experiment"], "problems": problems}
