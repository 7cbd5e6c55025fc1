"""What a dataset's models are: the served contract and input columns, the champion and challenger with their
holdout metrics, the last training's leaderboard (from MLflow), and the champion itself as a downloadable MLflow
model. The registry is read through ml_platform.train.registry.Tracker; a registry that cannot be reached is a 503,
never a guess ("no champion") and never a 500."""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from api.app import dataset_server
from ml_platform.serve.messages import contract
from ml_platform.spec import DatasetSpec
from ml_platform.train.metrics import primary
from ml_platform.train.registry import CHALLENGER, CHAMPION

router = APIRouter(tags=["models"])
STACK_PREFIX = "stack_holdout_"
CLEANED_TYPE = {"number": "double", "unit": "double", "rating": "double", "bool": "boolean", "category": "string",
                "string": "string", "date": "date", "drop": "none"}


class InputColumn(BaseModel):
    name: str
    parse: str = Field(description="the cleaning rule applied to the raw text (the spec's `parse`)")
    type: str = Field(description="the cleaned value's type: double, boolean, string, date (none: dropped)")
    outputs: list[str] = Field(description="the cleaned columns it becomes")
    required: bool = Field(description="a request without a valid value is rejected")
    model_reads: bool = Field(description="a model (or a derived feature it uses) reads this column")
    unit: str | None = None
    units: list[str] = []
    range: list[float] | None = None
    format: str | None = None


class RequestField(BaseModel):
    name: str
    required: bool
    rule: str


class VersionInfo(BaseModel):
    version: str
    run_id: str | None
    training_version: str | None
    checks: str | None
    created_at: str | None
    holdout: dict[str, float] = Field(description="the stack's holdout metrics (stack_holdout_* of its run)")


class DatasetInfo(BaseModel):
    name: str
    task: str
    target: str
    key: str | None
    serving_version: str | None = Field(description="the version this API has loaded and scores with")
    champion: VersionInfo | None
    challenger: VersionInfo | None
    request_fields: list[RequestField]
    input_columns: list[InputColumn]
    request_contract: dict[str, Any] = Field(description="the JSON Schema of a request (Kafka and REST alike)")


class ModelRow(BaseModel):
    algorithm: str
    status: str = Field(description="the MLflow run's status: finished, failed, running, killed")
    holdout: dict[str, float]
    cv_metric: str | None
    cv_mean: float | None
    cv_std: float | None
    train_seconds: float | None
    error: str | None
    run_id: str


class StackRow(BaseModel):
    holdout: dict[str, float] = Field(description="the served model's holdout metrics: the stack's, or those of the "
                                                  "member served in its place")
    served: str | None = Field(None, description="what the registered version serves: `stacked` or a member's "
                                                 "algorithm (the stack did not win)")
    model_versions: list[str] = Field(description="registered versions built from this training")


class Leaderboard(BaseModel):
    dataset: str
    training_version: str | None
    run_id: str
    status: str
    started_at: str | None
    primary_metric: str
    models: list[ModelRow] = Field(description="base models, best first by the primary metric; failed ones last")
    stack: StackRow | None


class ApiError(BaseModel):
    detail: str | list[dict[str, Any]] = Field(description="what went wrong (a list: FastAPI's validation errors)")


def errors(**codes: str) -> dict:
    """`responses=` entries for error statuses, each with the error body's schema: errors(e404="unknown ...")."""
    return {int(k[1:]): {"model": ApiError, "description": v} for k, v in codes.items()}


NOT_FOUND = errors(e404="unknown dataset, version or training", e503="the MLflow registry is unreachable")


def _redact(text: str) -> str:
    return re.sub(r"//[^/@\s]+@", "//***@", text)


@contextmanager
def registry(what: str):
    """MLflow's errors as HTTP answers: a missing resource is a 404, anything else (connection, server) a 503."""
    try:
        yield
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise HTTPException(404, f"{what}: not found in the registry") from None
        raise HTTPException(503, f"{what}: the MLflow registry failed: {_redact(str(e))[:300]}") from None
    except OSError as e:  # requests' connection errors are OSErrors
        raise HTTPException(503, f"{what}: the MLflow registry is unreachable: {_redact(str(e))[:300]}") from None


def _iso(ms: int | None) -> str | None:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else None


def _version(client, dataset: str, version: str) -> VersionInfo:
    mv = client.get_model_version(dataset, version)
    metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
    return VersionInfo(version=str(mv.version), run_id=mv.run_id, training_version=mv.tags.get("training_version"),
                       checks=mv.tags.get("checks"), created_at=_iso(mv.creation_timestamp),
                       holdout={k.removeprefix(STACK_PREFIX): v for k, v in metrics.items()
                                if k.startswith(STACK_PREFIX)})


def model_columns(spec: DatasetSpec) -> set[str]:
    """Cleaned columns a model reads: the features, and (transitively) the inputs of derived features."""
    numeric, categorical = spec.feature_columns()
    used, derived = set(numeric) | set(categorical), {d.name: d for d in spec.derived}
    todo = [n for n in used if n in derived]
    while todo:
        for i in derived[todo.pop()].inputs:
            if i not in used:
                used.add(i)
                todo += [i] if i in derived else []
    return used


def input_columns(spec: DatasetSpec) -> list[InputColumn]:
    used = model_columns(spec)
    return [InputColumn(name=c.name, parse=c.parse, type=CLEANED_TYPE.get(c.parse, "string"),
                        outputs=c.output_names(), required=c.required,
                        model_reads=any(o in used for o in c.output_names()), unit=c.unit, units=list(c.units),
                        range=list(c.range) if c.range else None, format=c.format)
            for c in spec.columns if c.name != spec.target]


def request_fields() -> list[RequestField]:
    schema = contract("request")
    out = []
    for name, prop in schema["properties"].items():
        rule = prop.get("description", "")
        out.append(RequestField(name=name, required=name in schema.get("required", []), rule=rule))
    return out


@router.get("/datasets/{dataset}", response_model=DatasetInfo, responses=NOT_FOUND)
def dataset_info(dataset: str, request: Request) -> DatasetInfo:
    """A dataset's task and target, the champion and challenger with their holdout metrics, and what a request
    carries: request_id and event_time rules, every input column with its parse rule and whether a model reads
    it, and the request's JSON Schema."""
    platform = request.app.state.platform
    server = dataset_server(platform, dataset)
    spec = server.spec
    champion = challenger = None
    with registry(f"{dataset} in the model registry"):
        client = platform.tracker().client
        try:
            aliases = dict(client.get_registered_model(dataset).aliases)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            aliases = {}  # nothing registered yet: a dataset with no model is not an error
        if CHAMPION in aliases:
            champion = _version(client, dataset, aliases[CHAMPION])
        # the alias on the champion's own version (right after a promotion) is no challenger, as in serving
        if CHALLENGER in aliases and aliases[CHALLENGER] != aliases.get(CHAMPION):
            challenger = _version(client, dataset, aliases[CHALLENGER])
    return DatasetInfo(name=spec.name, task=spec.task, target=spec.target, key=spec.key,
                       serving_version=server.readiness()["model_version"], champion=champion, challenger=challenger,
                       request_fields=request_fields(), input_columns=input_columns(spec),
                       request_contract=contract("request"))


def _row(run) -> ModelRow:
    m, tags = run.data.metrics, run.data.tags
    cv = next((k[3:-5] for k in m if k.startswith("cv_") and k.endswith("_mean")), None)
    return ModelRow(algorithm=tags.get("algorithm", run.info.run_name or "?"),
                    status=run.info.status.lower(),
                    holdout={k.removeprefix("holdout_"): v for k, v in m.items() if k.startswith("holdout_")},
                    cv_metric=cv, cv_mean=m.get(f"cv_{cv}_mean"), cv_std=m.get(f"cv_{cv}_std"),
                    train_seconds=m.get("train_seconds"), error=tags.get("error"), run_id=run.info.run_id)


@router.get("/datasets/{dataset}/leaderboard", response_model=Leaderboard, responses=NOT_FOUND)
def leaderboard(dataset: str, request: Request) -> Leaderboard:
    """The last training (the newest parent run of the dataset's MLflow experiment): each base model's holdout
    metrics, cross-validation mean and spread, training time or error, and the stack's holdout metrics."""
    platform = request.app.state.platform
    spec = dataset_server(platform, dataset).spec
    with registry(f"{dataset} trainings"):
        client = platform.tracker().client
        exp = client.get_experiment_by_name(f"ml_platform/{dataset}")
        board = training_board(client, spec, exp.experiment_id) if exp else None
    if board is None:
        raise HTTPException(404, f"no training of {dataset} in MLflow yet")
    return board


def training_board(client, spec: DatasetSpec, experiment_id: str, versions: list | None = None,
                   children: dict | None = None) -> Leaderboard | None:
    """The newest training's leaderboard (None: no training yet). `versions`: the dataset's registered versions
    when the caller has them already; `children`: a cache of a finished training's model runs (they no longer
    change), by parent run id."""
    parents = client.search_runs([experiment_id], "tags.role = 'parent'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        return None
    parent = parents[0]
    pid, finished = parent.info.run_id, parent.info.status == "FINISHED"
    runs = children.get(pid) if children is not None and finished else None
    if runs is None:
        runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=500)
        if children is not None and finished:
            children[pid] = runs
    versions = [v for v in versions if v.run_id == pid] if versions is not None else \
        client.search_model_versions(f"run_id = '{pid}'")
    metric, larger = primary(spec.task)
    rows = [_row(r) for r in runs]
    rows.sort(key=lambda r: (r.status != "finished", r.holdout.get(metric) is None,
                             (-1 if larger else 1) * r.holdout.get(metric, 0.0), r.algorithm))
    stack = {k.removeprefix(STACK_PREFIX): v for k, v in parent.data.metrics.items() if k.startswith(STACK_PREFIX)}
    dataset = spec.name
    return Leaderboard(dataset=dataset, training_version=parent.data.tags.get("training_version"),
                       run_id=pid, status=parent.info.status.lower(),
                       started_at=_iso(parent.info.start_time), primary_metric=metric, models=rows,
                       stack=StackRow(holdout=stack, served=next(
                           (v.tags.get("served_model") for v in versions if v.name == dataset), None),
                           model_versions=sorted((str(v.version) for v in versions if v.name == dataset), key=int))
                       if stack else None)


@router.get("/datasets/{dataset}/model/download", response_class=FileResponse,
            responses={200: {"description": "a zip of the MLflow model directory (MLmodel at the root, sparkml/ "
                                            "inside): unzip and `mlflow.spark.load_model(<dir>)`",
                             "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                       **NOT_FOUND})
def download_model(dataset: str, request: Request,
                   version: int | None = Query(None, ge=1, description="a registered version; default the champion")):
    """The champion (or `version`) as a zip of its MLflow model: the Spark PipelineModel with its signature,
    input example and pip requirements."""
    from mlflow.artifacts import download_artifacts

    platform = request.app.state.platform
    dataset_server(platform, dataset)
    tracker = platform.tracker()
    work = Path(tempfile.mkdtemp(prefix=f"model-{dataset}-"))
    try:
        with registry(f"{dataset} version {version or '@' + CHAMPION}"):
            v = str(version) if version else dict(tracker.client.get_registered_model(dataset).aliases).get(CHAMPION)
            if v is None:
                raise HTTPException(404, f"{dataset} has no champion yet; ask for a version (?version=N)")
            mv = tracker.client.get_model_version(dataset, v)
            local = Path(download_artifacts(artifact_uri=mv.source, dst_path=str(work / "model"),
                                            tracking_uri=tracker.uri))
        if not (local / "MLmodel").is_file():
            raise HTTPException(503, f"{dataset} version {v}: its artifacts have no MLmodel file ({mv.source})")
        archive = shutil.make_archive(str(work / f"{dataset}-v{v}"), "zip", root_dir=local)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=f"{dataset}-v{v}.zip",
                        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))
