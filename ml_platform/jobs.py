"""The Spark work of each asset layer, by name: one function per layer, the same code wherever Spark runs. In the
Dagster process (local threads, a standalone cluster) the Spark resource calls `run_job` directly; on EMR the same
`run_job` runs inside the Spark application (`ml_platform/emr_job.py`), and its summary travels back as a Dagster
Pipes message. So a summary is plain JSON (`to_wire` / `from_wire` carry bytes, such as plots).

A job owns its side effects: the cleaning job commits its batch's rows and acceptance, the models and stack jobs log
their MLflow runs (the parent run of a training version is found by its tags, so no run id passes between processes).
The asset that launched it only turns the summary into Dagster events. `log` is how a job reports progress: the
run's log in the Dagster process, Pipes' log on EMR."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.wire import from_wire, spec_from_wire, spec_to_wire, to_wire  # noqa: F401 - the jobs' wire format


class JobFailed(RuntimeError):
    """The data, not the machinery, was wrong (a rejected file, too few rows, …): the message says what."""


def _checks(outcomes) -> list[dict]:
    return [dataclasses.asdict(o) for o in outcomes]


def _ingest(spark, store, spec, a, tracker, log):
    from ml_platform.data.checks import raw_checks
    from ml_platform.data.layers import ingest_batch
    from ml_platform.layout import bronze_table

    # the file the new-batch sensor named; a run launched by hand without it finds the file by its partition key
    record = ingest_batch(spark, store, spec, a["partition"], a.get("file"))
    return record | {"checks": _checks(raw_checks(spec, record)), "path": store.uri(bronze_table(spec))}


def _clean(spark, store, spec, a, tracker, log):
    from ml_platform.data.checks import cleaned_checks
    from ml_platform.data.layers import clean_stored_batch
    from ml_platform.layout import quarantine_table, silver_table

    def judge(s: dict) -> list[str]:
        """Why the batch must not be trained on (nothing: accepted), decided before its silver commit."""
        if s.get("duplicate_of"):
            return [f"duplicate of batch {s['duplicate_of']}: nothing new to train on"]
        return [f"{o.name}: {o.description}" for o in cleaned_checks(spec, s) if o.blocking and not o.passed]

    # training reads only the rows of accepted batches: the cleaning commit itself says so
    s = clean_stored_batch(spark, store, spec, a["partition"], judge)
    blocked = judge(s)
    if s.get("unchanged"):
        log(f"{spec.name} batch {a['partition']}: already cleaned from the same bronze rows and spec; nothing written")
    return s | {"accepted": not blocked, "not_accepted_because": blocked, "checks": _checks(cleaned_checks(spec, s)),
                "path": store.uri(silver_table(spec)), "quarantine_path": store.uri(quarantine_table(spec))}


def _training_set(spark, store, spec, a, tracker, log):
    from ml_platform.train.training_set import build_training_set

    return build_training_set(spark, store, spec, a["version"])


def _feature_pipeline(spark, store, spec, a, tracker, log):
    from ml_platform.train.kinds import kind

    return kind(spec).features(spark, store, spec, a["version"])


def _models(spark, store, spec, a, tracker, log):
    from ml_platform.train.kinds import kind
    from ml_platform.train.training_set import training_version

    parent = tracker.parent_run(spec.name, training_version(store, spec, a["version"]), a.get("tags", {}))
    lock = threading.Lock()  # models finish in worker threads; MLflow calls and log lines one at a time

    def done(name: str, r: dict | Exception) -> None:
        with lock:
            if isinstance(r, Exception):
                tracker.log_failed_model(parent, spec.name, name, str(r), a.get("tags", {}))
            else:
                r["mlflow_run"] = tracker.run_link(tracker.log_model_run(parent, spec.name, r, a.get("tags", {})))

    def say(line: str) -> None:
        with lock:
            log(line)

    results = kind(spec).train(spark, store, spec, a["version"], a["algorithms"], spec.training.parallelism,
                               log=say, on_done=done)
    # a failed model is reported beside the ones that trained, never raised: they are still materialized
    return {n: {"error": str(r)} if isinstance(r, Exception) else r for n, r in results.items()}


def _stack(spark, store, spec, a, tracker, log):
    from ml_platform.train.release import stack_and_register

    return stack_and_register(spark, store, tracker, spec, a["version"], a.get("tags", {}))


def _maintain(spark, store, spec, a, tracker, log):
    from ml_platform.data.maintenance import maintain

    return maintain(spark, store, spec, float(a["retention_hours"]), [int(v) for v in a.get("pinned_silver", [])], log)


def _top_n(spark, store, spec, a, tracker, log):
    from ml_platform.train.recommend import build_top_n

    return build_top_n(spark, store, spec, a["version"])


def _promote(spark, store, spec, a, tracker, log):
    from ml_platform.train.release import promotion_gate

    return promotion_gate(spark, store, tracker, spec, a["challenger"])


def _feedback(spark, store, spec, a, tracker, log):
    from ml_platform.serve.feedback import collect
    from ml_platform.serve.store import PredictionStore

    predictions = PredictionStore(a["store_table"], a.get("store_endpoint"), a.get("region", "us-east-1"))
    try:
        return collect(spark, store, spec, a["bootstrap"], predictions, min_rows=int(a.get("min_rows", 1)))
    finally:
        predictions.close()


# imported on call: a job for the data layers runs where MLflow and xgboost are not installed
JOBS: dict[str, Callable] = {"ingest": _ingest, "clean": _clean, "training_set": _training_set,
                             "feature_pipeline": _feature_pipeline, "models": _models, "stack": _stack,
                             "promote": _promote, "top_n": _top_n, "feedback": _feedback,
                             "maintain": _maintain}
NEEDS_TRACKER = {"models", "stack", "promote"}


def run_job(name: str, spark, store: Store, spec: DatasetSpec, args: dict, tracker=None,
            log: Callable[[str], None] = print) -> dict:
    from ml_platform.data.ingest import RejectedFile
    from ml_platform.train.features import FeatureError
    from ml_platform.train.training_set import TrainingError

    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; one of {sorted(JOBS)}")
    if name in NEEDS_TRACKER and tracker is None:
        raise ValueError(f"the {name} job logs to MLflow: pass a tracker (the model registry resource)")
    try:
        return JOBS[name](spark, store, spec, args, tracker, log)
    except (RejectedFile, TrainingError, FeatureError) as e:
        raise JobFailed(str(e)) from e
