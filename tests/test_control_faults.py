"""The control plane's fault matrix: the real composition root (definitions.py) with a tiny used_cars spec, under a
real dagster-webserver and dagster-daemon with make run's instance config (queued runs, run monitoring every 5 s, one
automatic retry of a crashed run), a real MLflow server and a real broker; batches land as files.

Run workers are killed with SIGKILL while ingesting, while cleaning and while a retrain trains a model, and MLflow is
stopped while the retry registers the stack. The cases run in order on one platform and end with the invariant:
every landed file is accepted, every batch accepted before the retrain is in its training set, and the champion is a
checked version. (The daemon killed with a run in flight is tests/test_up.py's, under the real `ml-platform up`.)"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from services import DagsterStack, MlflowServer

from ml_platform.layout import landing_dir
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.local.supervisor import dagster_home
from ml_platform.stores import LocalStore

DS = "used_cars"
STEP = {layer: f"{DS}__{layer}" for layer in ("raw_batches", "cleaned_features", "training_set", "models",
                                               "stacked_model", "serving_deployment")}
TERMINAL = {"accepted", "quarantined", "superseded"}
pytestmark = pytest.mark.scenario  # about 15 minutes: `make test-scenarios`, not CI


def tiny_spec(folder: Path) -> Path:
    spec = yaml.safe_load((ROOT / "ml_platform/specs/used_cars.yaml").read_text())
    spec["algorithms"] = {"linear": {"grid": {"regParam": [0.1]}},
                          "random_forest": {"grid": {"numTrees": [3], "maxDepth": [2]}}}
    spec["training"] |= {"folds": 2, "parallelism": 2}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "used_cars.yaml").write_text(yaml.safe_dump(spec))
    return folder


class Platform:
    def __init__(self, home: Path, kafka):
        self.home, self.data = home, home / "data"
        self.store = LocalStore(self.data)
        self.landing = self.store.path(landing_dir(type("S", (), {"name": DS})))
        self.mlflow = MlflowServer(home / "mlflow")
        env = {"ML_PLATFORM_HOME": str(home), "ML_PLATFORM_DATA": str(self.data),
               "ML_PLATFORM_SPECS": str(tiny_spec(home / "specs")), "ML_PLATFORM_DATASETS": DS,
               "ML_PLATFORM_SENSOR_INTERVAL": "5", "ML_PLATFORM_SHUFFLE_PARTITIONS": "2",
               "MLFLOW_TRACKING_URI": self.mlflow.uri, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap}
        os.environ |= {"ML_PLATFORM_SPECS": env["ML_PLATFORM_SPECS"]}  # this process reads the same spec
        try:
            self.dagster = DagsterStack(home / "dagster", {"ml_platform": ROOT / "definitions.py"}, env=env)
        except Exception:
            self.mlflow.stop()
            raise
        from dagster import DagsterInstance

        self.instance = DagsterInstance.from_config(str(dagster_home(home / "dagster")))
        from ml_platform.spec import load_spec_dir

        self.spec = load_spec_dir(env["ML_PLATFORM_SPECS"]).specs[DS]
        self.batch, self.started = 0, time.time()
        self.workers: dict[str, int] = {}

    def stop(self) -> None:
        self.dagster.stop()
        self.mlflow.stop()
        os.environ.pop("ML_PLATFORM_SPECS", None)

    # ---- what the tests do and look at
    def land(self, n: int = 1, rows: int = 120) -> list[str]:
        names = []
        for _ in range(n):
            self.batch += 1
            names.append(write_batch(SimConfig(DS, rows_per_batch=rows, seed=3), self.batch, self.landing, None).name)
        return names

    def states(self) -> dict[str, tuple[str, str]]:
        from assets.accounting import batch_states

        batches, _ = batch_states(self.instance, self.store, self.spec)
        return {b.file: (b.state, b.reason) for b in batches if b.file}

    def wait(self, what: str, cond, timeout: float = 300.0, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = cond()
            if out:
                return out
            time.sleep(every)
        tail = "\n".join(line for line in self.dagster.log.read_text(errors="replace").splitlines()
                         if "MonitoringDaemon" not in line)[-3000:]
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; batches: {self.states()}\n"
                             f"runs:\n{self.runs_table()}\n{tail}")

    def runs_table(self) -> str:
        rows = []
        for r in reversed(self.instance.get_run_records(limit=30)):
            run = r.dagster_run
            tags = {k: v[:80] for k, v in run.tags.items()
                    if k.startswith(("dagster/partition", "dagster/retry", "dagster/parent", "dagster/will_retry",
                                     "dagster/auto", "ml_platform/", "dagster/failure_reason"))}
            rows.append(f"  {run.run_id[:8]} {run.status.value:<9} {r.create_timestamp:%H:%M:%S} "
                        f"{sorted(k.path[-1] for k in run.asset_selection or [])} {tags}")
        return "\n".join(rows)

    def settled(self, names: list[str], timeout: float = 420.0) -> dict[str, tuple[str, str]]:
        def done():
            s = self.states()
            return s if all(s.get(n, ("",))[0] in TERMINAL | {"failed"} for n in names) else None

        return self.wait(f"{names} to be handled", done, timeout, every=3.0)

    def step_started(self, step: str, since: float, file: str | None = None) -> str | None:
        """The id of a run in flight (created after `since`, of `file`'s batch if given) whose `step` has started;
        its worker's pid is kept for kill_run_worker."""
        from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

        from ml_platform.data.landing import partition_key

        for r in self.instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=20):
            if r.create_timestamp.timestamp() < since or (
                    file and r.dagster_run.tags.get("dagster/partition") != partition_key(file)):
                continue
            for e in self.instance.all_logs(r.dagster_run.run_id, of_type=DagsterEventType.STEP_START):
                if e.step_key == step:
                    self.workers[r.dagster_run.run_id] = e.dagster_event.pid
                    return r.dagster_run.run_id
        return None

    def kill_run_worker(self, run_id: str) -> int:
        """SIGKILL the process executing `run_id` (the pid its step events carry), as an OOM killer would."""
        pid = self.workers[run_id]
        os.kill(pid, signal.SIGKILL)
        return pid

    def run(self, run_id: str):
        return self.instance.get_run_by_id(run_id)

    def retried_ok(self, run_id: str, timeout: float = 300.0) -> str:
        """The failed run's automatic retry (Dagster's run retries), once it has succeeded."""
        from dagster import DagsterRunStatus

        def retry():
            child = self.run(run_id).tags.get("dagster/auto_retry_run_id")
            if child and self.run(child).status == DagsterRunStatus.SUCCESS:
                return child
            assert not child or self.run(child).status != DagsterRunStatus.FAILURE, f"the retry {child} failed too"
            return None

        return self.wait(f"the retry of run {run_id}", retry, timeout, every=2.0)

    def champion(self) -> tuple[str | None, dict]:
        from ml_platform.train.registry import CHAMPION, Tracker

        t = Tracker(self.mlflow.uri)
        v = t.version_for(DS, CHAMPION)
        return v, (t.version_tags(DS, v) if v else {})


@pytest.fixture(scope="module")
def platform(tmp_path_factory, kafka):
    p = Platform(tmp_path_factory.mktemp("control"), kafka)
    yield p
    p.stop()


def test_a_run_worker_killed_while_ingesting_or_cleaning_is_retried_and_the_batch_accepted(platform):
    from dagster import DagsterRunStatus

    t0 = time.time()
    first = platform.land()
    ingesting = platform.wait("an ingest step", lambda: platform.step_started(STEP["raw_batches"], t0, first[0]),
                              timeout=600, every=0.5)
    platform.kill_run_worker(ingesting)
    t1 = time.time()
    second = platform.land()
    cleaning = platform.wait("a cleaning step",
                             lambda: platform.step_started(STEP["cleaned_features"], t1, second[0]),
                             timeout=600, every=0.5)
    platform.kill_run_worker(cleaning)
    for killed in (ingesting, cleaning):
        platform.wait(f"{killed} marked failed", lambda k=killed: platform.run(k).status == DagsterRunStatus.FAILURE,
                      timeout=120)
    # handled by a later run of the same batch: Dagster's automatic retry, or the sensor's request once it is due
    states = platform.settled(first + second, timeout=900)
    assert {n: states[n][0] for n in first + second} == {n: "accepted" for n in first + second}, states


def test_a_retrain_killed_while_training_and_mlflow_stopped_while_registering_ends_with_a_checked_champion(
        platform):
    """The retrain's run worker is killed while a model trains; Dagster's retry re-runs it from that step, and MLflow
    is stopped while the retry registers the stack, and started again. The champion is a checked version, trained on
    every batch accepted before its training set was made, and no MLflow run is left RUNNING."""
    from dagster import DagsterEventType

    from ml_platform.data.accounting import read_store_facts
    from ml_platform.train.registry import Tracker
    from ml_platform.train.training_set import training_version

    t0 = platform.started
    training = platform.wait("a model training step", lambda: platform.step_started(STEP["models"], t0),
                             timeout=900, every=0.5)
    platform.kill_run_worker(training)
    t1 = time.time()
    platform.wait("the retry's registration", lambda: platform.step_started(STEP["stacked_model"], t1),
                  timeout=900, every=0.5)
    platform.mlflow.stop()
    time.sleep(8)
    platform.mlflow.start()
    retry = platform.retried_ok(training, timeout=900)
    version, tags = platform.champion()
    assert version is not None and tags.get("checks") == "passed", (version, tags)

    [made] = [e for e in platform.instance.all_logs(training, of_type=DagsterEventType.ASSET_MATERIALIZATION)
              if e.asset_materialization.asset_key.path[-1] == "training_set"]
    trained = set(training_version(platform.store, platform.spec, made.asset_materialization.metadata["version"]
                                   .value)["batches"])
    before = {k for k, at in read_store_facts(platform.store, platform.spec).accepted.items() if at < made.timestamp}
    assert before and before <= trained, (before, trained)
    assert tags.get("training_version") == made.asset_materialization.metadata["version"].value
    t = Tracker(platform.mlflow.uri)
    assert not t.client.search_runs([t.experiment_id(DS)], "attributes.status = 'RUNNING'"), retry
