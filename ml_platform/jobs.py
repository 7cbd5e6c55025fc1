"""The Spark work of each asset layer, by name: one function per layer, the same code wherever Spark runs. In the
Dagster process (local threads, a standalone cluster) the Spark resource calls `run_job` directly; on EMR the same
`run_job` runs inside the Spark application (`ml_platform/emr_job.py`), and its summary travels back as a Dagster
Pipes message. So a summary is plain JSON (`to_wire` / `from_wire` carry bytes, such as plots)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Callable

from ml_platform.spec import DatasetSpec
from ml_platform.stores import Store


class JobFailed(RuntimeError):
    """The data, not the machinery, was wrong (a rejected file, too few rows, …): the message says what."""


def _ingest(spark, store, spec, a, tracker):
    from ml_platform.data.layers import ingest_batch

    return ingest_batch(spark, store, spec, a["partition"])


def _clean(spark, store, spec, a, tracker):
    from ml_platform.data.layers import clean_stored_batch

    return clean_stored_batch(spark, store, spec, a["partition"])


def _training_set(spark, store, spec, a, tracker):
    from ml_platform.train.training_set import build_training_set

    return build_training_set(spark, store, spec, a["version"])


def _feature_pipeline(spark, store, spec, a, tracker):
    from ml_platform.train.features import build_feature_pipeline

    return build_feature_pipeline(spark, store, spec, a["version"])


def _models(spark, store, spec, a, tracker):
    from ml_platform.train.models import train_models

    results = train_models(spark, store, spec, a["version"], a["algorithms"], spec.training.parallelism)
    # a failed model is reported beside the ones that trained, never raised: they are still materialized
    return {n: {"error": str(r)} if isinstance(r, Exception) else r for n, r in results.items()}


def _stack(spark, store, spec, a, tracker):
    from ml_platform.train.release import stack_and_register

    return stack_and_register(spark, store, tracker, spec, a["version"], a["tags"])


def _promote(spark, store, spec, a, tracker):
    from ml_platform.train.release import promotion_gate

    return promotion_gate(spark, store, tracker, spec, a["challenger"])


# imported on call: a job for the data layers runs where MLflow and xgboost are not installed
JOBS: dict[str, Callable] = {"ingest": _ingest, "clean": _clean, "training_set": _training_set,
                             "feature_pipeline": _feature_pipeline, "models": _models, "stack": _stack,
                             "promote": _promote}


def run_job(name: str, spark, store: Store, spec: DatasetSpec, args: dict, tracker=None) -> dict:
    from ml_platform.data.ingest import RejectedFile
    from ml_platform.train.features import FeatureError
    from ml_platform.train.training_set import TrainingError

    if name not in JOBS:
        raise ValueError(f"unknown job {name!r}; one of {sorted(JOBS)}")
    try:
        return JOBS[name](spark, store, spec, args, tracker)
    except (RejectedFile, TrainingError, FeatureError) as e:
        raise JobFailed(str(e)) from e


def _encode(o):
    if isinstance(o, bytes):
        return {"__bytes__": base64.b64encode(o).decode()}
    if isinstance(o, dt.datetime | dt.date):
        return o.isoformat()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} cannot travel in a job summary")


def to_wire(summary: dict) -> dict:
    return json.loads(json.dumps(summary, default=_encode))


def from_wire(obj):
    if isinstance(obj, dict):
        if set(obj) == {"__bytes__"}:
            return base64.b64decode(obj["__bytes__"])
        return {k: from_wire(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_wire(v) for v in obj]
    return obj
