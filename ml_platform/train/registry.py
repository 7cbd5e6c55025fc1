"""MLflow tracking and the Model Registry, through an explicit client (no global active run: base models are
trained in threads). One experiment per dataset, a parent run per training version
(tagged `training_version`, found or created by the job that first logs to it), a nested run per model.

Aliases on the registered model `<dataset>`:
  challenger         the newest stacked model; where the spec's serving.challenger.mode is shadow or split, the
                     version served beside the champion, set by the promotion gate (or by hand), never by a
                     registration: a stack that failed its checks must not take live traffic
  champion           what the scorer serves
  previous_champion  the champion before the last promotion: rollback moves `champion` back to it

A version becomes `champion` only if its `checks` tag says `passed` (promote and rollback refuse any other): a
version registered by a run killed before its checks were recorded, or registered by hand, is never served.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHALLENGER, CHAMPION, PREVIOUS = "challenger", "champion", "previous_champion"
CHECKS_TAG = "checks"  # on a registered version: "passed" or "failed", set when it is registered
DAGSTER_RUN_TAG = "dagster_run_id"  # on MLflow runs made by a Dagster step (assets.common.run_tags)


class Unchecked(ValueError):
    """A version without passing checks was asked to become champion."""


def _flat(prefix: str, d: dict) -> dict[str, str]:
    return {f"{prefix}{k}": str(v)[:500] for k, v in d.items()}


def _finite_metrics(prefix: str, d: dict) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in d.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")}


class Tracker:
    def __init__(self, tracking_uri: str, ui_url: str | None = None, artifact_root: str | None = None):
        self.uri = tracking_uri
        self.artifact_root = artifact_root.rstrip("/") if artifact_root else None
        self.ui_url = ui_url.rstrip("/") if ui_url else None
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ---- tracking
    def experiment_id(self, dataset: str) -> str:
        name = f"ml_platform/{dataset}"
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_root(dataset))
        except MlflowException:  # created meanwhile by another run
            return self.client.get_experiment_by_name(name).experiment_id

    def _artifact_root(self, dataset: str) -> str | None:
        """An explicit root (s3://bucket/mlflow) wins; otherwise a server decides where artifacts go. A bare sqlite
        URI would default to ./mlruns under whatever the working directory is, so keep them beside the database."""
        if self.artifact_root:
            return f"{self.artifact_root}/{dataset}"
        if self.uri.startswith("sqlite:///"):
            return (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts" / dataset).resolve().as_uri()
        return None

    def run_link(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        if self.ui_url:
            return f"{self.ui_url}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        return f"{self.uri} experiment {run.info.experiment_id} run {run_id}"

    def model_page(self, dataset: str, version: str | None = None) -> str | None:
        """The registered model's page in the MLflow UI (its GenAI landing view has no Models entry)."""
        if not self.ui_url:
            return None
        return f"{self.ui_url}/#/models/{dataset}" + (f"/versions/{version}" if version else "")

    def parent_run(self, dataset: str, summary: dict, tags: dict[str, str]) -> str:
        """The parent run of one training version: found by its tags, created by the first job that needs it (the
        models job), so every job of the version logs under it wherever it runs and no run id travels."""
        version = summary["version"]
        exp = self.experiment_id(dataset)
        found = self.client.search_runs([exp], f"tags.training_version = '{version}' and tags.role = 'parent'",
                                        order_by=["attributes.start_time ASC"], max_results=1)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(exp, run_name=f"train {version}",
                                     tags=tags | {"dataset": dataset, "training_version": version, "role": "parent"})
        rid = run.info.run_id
        self.client.log_batch(rid, params=[_p(k, v) for k, v in _flat("data.", {
            "batches": ",".join(summary["batches"]), "data_hash": summary["data_hash"], "rows": summary["rows"],
            "silver_version": (summary.get("delta_versions") or {}).get("silver"),
            "train_rows": summary["train_rows"], "holdout_rows": summary["holdout_rows"]}).items()])
        return rid

    def log_model_run(self, parent_id: str, dataset: str, result: dict, tags: dict[str, str]) -> str:
        name = result["algorithm"]
        run = self.client.create_run(self.experiment_id(dataset), run_name=name,
                                     tags=tags | {"mlflow.parentRunId": parent_id, "algorithm": name})
        rid = run.info.run_id
        params = {"search_space": json.dumps(result["search_space"]), "param_maps": result["param_maps"],
                  "folds": result["folds"], "features": result["features"]} | _flat("best.", result["best_params"])
        cv = result["cv_metric"]
        metrics = {f"cv_{cv}_mean": result["cv_mean"], f"cv_{cv}_std": result["cv_std"],
                   "train_seconds": result["train_seconds"], "validation_seconds": result["validation_seconds"]}
        self.client.log_batch(rid, params=[_p(k, v) for k, v in params.items()],
                              metrics=[_m(k, v) for k, v in (metrics | _finite_metrics("holdout_", result["holdout"]))
                                       .items()])
        self.client.set_terminated(rid, "FINISHED")
        return rid

    def log_failed_model(self, parent_id: str, dataset: str, algorithm: str, error: str, tags: dict[str, str]) -> None:
        run = self.client.create_run(self.experiment_id(dataset), run_name=algorithm,
                                     tags=tags | {"mlflow.parentRunId": parent_id, "algorithm": algorithm,
                                                  "error": error[:4000]})
        self.client.set_terminated(run.info.run_id, "FAILED")

    def log_artifact_bytes(self, run_id: str, name: str, data: bytes | str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_bytes(data.encode() if isinstance(data, str) else data)
            self.client.log_artifact(run_id, str(p))

    # ---- registry
    def register_stack(self, parent_id: str, dataset: str, spark_model, input_example, prediction_example,
                       metrics: dict, tags: dict[str, str], alias: str | None = CHALLENGER) -> str:
        """Log the stacked PipelineModel (MLflow's spark flavour, with signature and input example) under the
        parent run, create a registered version, tag it and point `alias` (None: no alias) at it. Returns the
        version."""
        import mlflow.spark
        from mlflow.models import infer_signature

        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "model"
            mlflow.spark.save_model(
                spark_model, str(local), signature=infer_signature(input_example, prediction_example),
                input_example=input_example, pip_requirements=_requirements())
            # a folder per registration: the stack of one training version may be registered again (a re-run),
            # and an earlier version's source must not be overwritten under the shared parent run
            artifact_path = f"model-{uuid.uuid4().hex[:12]}"
            self.client.log_artifacts(parent_id, str(local), artifact_path)
        self.client.log_batch(parent_id, metrics=[_m(k, v) for k, v in _finite_metrics("stack_holdout_", metrics)
                                                  .items()])
        try:
            self.client.create_registered_model(dataset, description=f"Stacked model for {dataset}")
        except MlflowException:
            pass  # exists
        source = f"{self.client.get_run(parent_id).info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(dataset, source=source, run_id=parent_id, tags=tags)
        if alias:
            self.client.set_registered_model_alias(dataset, alias, str(mv.version))
        self.client.set_terminated(parent_id, "FINISHED")
        return str(mv.version)

    def end_orphaned_runs(self, dataset: str, alive) -> list[str]:
        """End as FAILED the dataset's MLflow runs still RUNNING whose Dagster run (tag dagster_run_id) is not in
        flight any more: `alive(dagster_run_id)` says. A killed run worker leaves its run RUNNING forever otherwise.
        Runs without the tag (a notebook's) are left alone. Returns the run ids ended."""
        exp = self.client.get_experiment_by_name(f"ml_platform/{dataset}")
        if exp is None:
            return []
        ended = []
        for run in self.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=500):
            owner = run.data.tags.get(DAGSTER_RUN_TAG)
            if owner and not alive(owner):
                self.client.set_tag(run.info.run_id, "ended_by",
                                    f"ml_platform: its Dagster run {owner} ended without finishing it")
                self.client.set_terminated(run.info.run_id, "FAILED")
                ended.append(run.info.run_id)
        return ended

    def version_for(self, dataset: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(dataset, alias).version)
        except MlflowException:
            return None

    def set_alias(self, dataset: str, alias: str, version: str | None) -> None:
        """Point `alias` at `version`; None removes the alias (a removed `challenger` stops serving)."""
        if version is None:
            try:
                self.client.delete_registered_model_alias(dataset, alias)
            except MlflowException:
                pass  # not set
        else:
            self.client.set_registered_model_alias(dataset, alias, str(version))

    def tag_version(self, dataset: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(dataset, version, k, str(v))

    def version_tags(self, dataset: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(dataset, version).tags)

    def pinned_silver_versions(self, dataset: str) -> list[int]:
        """The silver versions every registered version of `dataset` was trained on: lake maintenance keeps them."""
        try:
            found = self.client.search_model_versions(f"name = '{dataset}'")
        except MlflowException:
            return []
        return sorted({int(v.tags["silver_version"]) for v in found if v.tags.get("silver_version", "").isdigit()})

    def require_checked(self, dataset: str, version: str) -> None:
        checks = self.version_tags(dataset, str(version)).get(CHECKS_TAG)
        if checks != "passed":
            raise Unchecked(f"{dataset} version {version} cannot become champion: its checks are "
                            f"{checks or 'not recorded'} (tag {CHECKS_TAG!r} must be 'passed')")

    def promote(self, dataset: str, version: str) -> str | None:
        """Point `champion` at `version`, keeping the old champion as `previous_champion`. Returns the old one.
        Refuses (Unchecked) a version whose checks did not pass."""
        self.require_checked(dataset, version)
        old = self.version_for(dataset, CHAMPION)
        if old is not None and old != str(version):
            self.client.set_registered_model_alias(dataset, PREVIOUS, old)
        self.client.set_registered_model_alias(dataset, CHAMPION, str(version))
        return old

    def rollback(self, dataset: str) -> tuple[str, str]:
        """Move `champion` back to `previous_champion` (and the rolled-back version becomes `previous_champion`, so
        rolling back twice rolls forward). Returns (from, to)."""
        cur, prev = self.version_for(dataset, CHAMPION), self.version_for(dataset, PREVIOUS)
        if prev is None or cur is None:
            raise ValueError(f"{dataset}: nothing to roll back to (champion={cur}, previous_champion={prev})")
        self.require_checked(dataset, prev)
        self.client.set_registered_model_alias(dataset, CHAMPION, prev)
        self.client.set_registered_model_alias(dataset, PREVIOUS, cur)
        self.tag_version(dataset, prev, {"rolled_back_from": cur})
        return cur, prev

    def load(self, dataset: str, version: str):
        """The registered PipelineModel of a version, loaded into the active SparkSession."""
        from mlflow.artifacts import download_artifacts
        from pyspark.ml import PipelineModel

        mv = self.client.get_model_version(dataset, version)
        dst = tempfile.mkdtemp(prefix=f"mlflow-{dataset}-{version}-")
        local = download_artifacts(artifact_uri=mv.source, dst_path=dst, tracking_uri=self.uri)
        return PipelineModel.load(str(Path(local) / "sparkml"))


def _p(k, v):
    from mlflow.entities import Param

    return Param(k, str(v)[:6000])


def _m(k, v):
    import time

    from mlflow.entities import Metric

    return Metric(k, float(v), int(time.time() * 1000), 0)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("pyspark", "mlflow", "xgboost-cpu", "ml-platform"):  # xgboost stages load only with xgboost
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return out
