"""Rebuild a registered model from the data it was trained on: the silver table at the Delta version its training
set recorded (time travel), the spec recorded with it, the same split, search and stacking. Deterministic learners
give the same holdout metrics; the comparison says how close each model came.

`ml-platform reproduce <dataset> <model_version>` finds the training version and the silver version in the
registered version's MLflow tags; `reproduce_training` does the work with Spark, wherever Spark runs."""

from __future__ import annotations

import datetime as dt
import math

from ml_platform.layout import stacked_model_record
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from ml_platform.train.kinds import kind
from ml_platform.train.models import model_results
from ml_platform.train.training_set import TrainingError, build_training_set, training_version
from ml_platform.wire import spec_from_wire


def _diff(before: dict, after: dict) -> dict:
    """Per metric: the recorded value, the reproduced one, and their absolute difference (finite numbers only)."""
    out = {}
    for m, v in (before or {}).items():
        w = (after or {}).get(m)
        if isinstance(v, int | float) and isinstance(w, int | float) and math.isfinite(v) and math.isfinite(w):
            out[m] = {"recorded": v, "reproduced": w, "abs_diff": abs(v - w)}
    return out


def reproduce_training(spark, store: Store, spec: DatasetSpec, recorded_version: str,
                       silver_version: int | None = None, recorded_served: dict | None = None, log=print) -> dict:
    """Train again what training version `recorded_version` trained, from silver at `silver_version` (default: the
    version that training set recorded), under a new training version. Returns both sets of holdout metrics: the
    recorded ones from the gold records, or `recorded_served` (the served model's, from MLflow) where those are
    gone."""
    recorded = training_version(store, spec, recorded_version)
    silver_v = silver_version if silver_version is not None else (recorded.get("delta_versions") or {}).get("silver")
    if silver_v is None:
        raise TrainingError(f"{spec.name}: training version {recorded_version} recorded no silver version (it "
                            f"predates the Delta tables); it cannot be rebuilt by time travel")
    used = spec_from_wire(recorded["spec"]) if recorded.get("spec") else spec
    new = f"{recorded_version}-reproduced-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%S')}"
    log(f"{spec.name}: rebuilding training set {recorded_version} from silver version {silver_v} as {new}")
    ts = build_training_set(spark, store, used, new, silver_version=int(silver_v))
    k = kind(used)
    k.features(spark, store, used, new)
    trained = k.train(spark, store, used, new, list(used.algorithms), used.training.parallelism, log=log)
    failed = {n: str(r) for n, r in trained.items() if isinstance(r, Exception)}
    results = {n: r for n, r in trained.items() if not isinstance(r, Exception)}
    selected = k.select(spark, store, used, new, results)
    before_models = model_results(store, used, recorded_version)
    before_stack = store.read_json(stacked_model_record(used, recorded_version)) or {"holdout": recorded_served}
    models = {n: _diff(before_models.get(n, {}).get("holdout"), r.get("holdout")) for n, r in results.items()}
    served = _diff(before_stack.get("holdout"), selected.get("holdout"))
    worst = max([d["abs_diff"] for m in [*models.values(), served] for d in m.values()] or [float("nan")])
    same_rows = (ts["train_rows"], ts["holdout_rows"]) == (recorded["train_rows"], recorded["holdout_rows"])
    return {"dataset": spec.name, "recorded_version": recorded_version, "reproduced_version": new,
            "silver_version": int(silver_v), "same_rows": same_rows, "rows": ts["rows"],
            "recorded_rows": recorded["rows"], "models": models, "served": served,
            "served_model": (selected.get("served"), before_stack.get("served")), "failed": failed,
            "max_abs_diff": worst}
