"""What the pages' script calls: the staged upload of a new dataset's file, its target check, creating the dataset,
training progress and the plots of a training. Keyed like every API route (the session cookie or X-API-Key; a
cookie-authenticated change carries the CSRF token). Each refusal is a status and a message the page shows."""

from __future__ import annotations

import csv
import tempfile
import threading
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from api.guard import authorized
from api.uploads import NAME_PATTERN, NAME_RULE, name_problem, receive_to
from api.web import PREFIX
from api.web.create import (
    Choice,
    Refused,
    check_upload_id,
    create,
    discard,
    draft_of,
    expire_staged,
    new_upload_id,
    target_of,
)
from api.web.views import PLOTS as VIEW_PLOTS
from api.web.views import chain
from ml_platform.layout import STAGING_DIR, staged_file
from ml_platform.spec_draft import DraftError
from ml_platform.stores.base import StorageError
from ml_platform.stores.local import LocalStore
from ml_platform.stores.s3 import S3Store

router = APIRouter(prefix=f"{PREFIX}/api", dependencies=[Depends(authorized)], include_in_schema=False)
PLOTS = set(VIEW_PLOTS)


class UploadAsk(BaseModel):
    filename: str = Field(pattern=NAME_PATTERN, max_length=120, description=NAME_RULE)
    bytes: int = Field(ge=0)


class NewDataset(BaseModel):
    upload_id: str
    name: str = Field(max_length=200)
    target: str
    columns: dict[str, dict[str, Any]] = {}
    algorithms: dict[str, Any] = {}


def _store(request: Request):
    try:
        return request.app.state.platform.data_store()
    except (StorageError, OSError) as e:
        raise HTTPException(503, f"data store: {str(e)[:300]}") from None


def _refused(e: Refused) -> HTTPException:
    return HTTPException(e.status, str(e))


@router.post("/uploads")
def ask_upload(body: UploadAsk, request: Request) -> dict:
    """Where the browser sends a new dataset's file: PUT to this API (local data root) or a presigned POST
    straight to S3. Too large, empty or a name the landing zone refuses: refused before any byte moves."""
    limit = request.app.state.platform.settings.max_upload_bytes
    if body.bytes > limit:
        raise HTTPException(413, f"{body.filename}: {body.bytes / 1_048_576:.1f} MB is over the upload limit of "
                                 f"{limit / 1_048_576:.0f} MB")
    if body.bytes == 0:
        raise HTTPException(422, f"{body.filename} is empty (0 bytes)")
    reason = name_problem(body.filename)
    if reason:
        raise HTTPException(422, f"file name {body.filename!r}: {reason}; rename the file")
    store, upload_id = _store(request), new_upload_id()
    try:  # uploads abandoned in the editor go when a new one starts (best effort: never in this one's way)
        expire_staged(store)
    except (StorageError, OSError):
        pass
    if isinstance(store, S3Store):
        g = store.presigned_upload(staged_file(upload_id, body.filename), limit, 15 * 60)
        return {"upload_id": upload_id, "method": "POST", "url": g.url, "fields": g.fields, "max_bytes": limit}
    if not isinstance(store, LocalStore):
        raise HTTPException(409, "this data root takes no uploads from the web app (only local folders and S3)")
    return {"upload_id": upload_id, "method": "PUT", "max_bytes": limit,
            "url": f"{PREFIX}/api/uploads/{upload_id}/{quote(body.filename, safe='')}"}


@router.put("/uploads/{upload_id}/{filename}", status_code=201)
async def put_upload(upload_id: str, filename: str, request: Request) -> dict:
    """The file, streamed to the staging area (never whole in memory), then read as a draft: a file that is no
    usable CSV is deleted and refused with the reason."""
    store = _store(request)
    try:
        check_upload_id(upload_id)
    except Refused as e:
        raise _refused(e) from None
    if name_problem(filename) or not isinstance(store, LocalStore):
        raise HTTPException(422, f"file name {filename[:100]!r} or data root not accepted for a direct upload")
    final = store.path(staged_file(upload_id, filename))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = store.path(f"{STAGING_DIR}/.{upload_id}.part")  # hidden: never taken for a staged file
    try:
        await receive_to(request, tmp, request.app.state.platform.settings.max_upload_bytes)
        tmp.rename(final)
    except BaseException:  # too large, cut off halfway, disk full: the staging folder goes too
        await run_in_threadpool(discard, store, upload_id)
        raise
    return await _checked(store, upload_id)


@router.post("/uploads/{upload_id}/check")
async def check_upload(upload_id: str, request: Request) -> dict:
    """After a presigned upload straight to S3: read the staged file as a draft (or refuse and delete it)."""
    return await _checked(_store(request), upload_id)


async def _checked(store, upload_id: str) -> dict:
    try:
        d = await run_in_threadpool(draft_of, store, upload_id)
    except Refused as e:
        raise _refused(e) from None
    return {"upload_id": upload_id, "editor": f"{PREFIX}/new/{upload_id}", "columns": len(d.columns),
            "rows_sampled": d.rows_sampled}


@router.get("/uploads/{upload_id}/target")
def check_target(upload_id: str, column: str, request: Request) -> dict:
    """The task a target column implies, over the whole file; 422 when nothing can learn from it."""
    try:
        return target_of(_store(request), check_upload_id(upload_id), column)
    except Refused as e:
        raise _refused(e) from None
    except (DraftError, csv.Error, UnicodeDecodeError) as e:
        raise HTTPException(422, str(e)) from None


@router.delete("/uploads/{upload_id}", status_code=204)
def cancel_upload(upload_id: str, request: Request):
    try:
        discard(_store(request), check_upload_id(upload_id))
    except Refused as e:
        raise _refused(e) from None
    return Response(status_code=204)


def _specs_dir(p):
    from pathlib import Path

    if not p.settings.specs_dir:
        raise HTTPException(409, "this API reads the shipped example specs, where nothing can be added: start it "
                                 "with ML_PLATFORM_SPECS set to a writable folder (`make run` does)")
    return Path(p.settings.specs_dir)


@router.post("/datasets", status_code=201)
def create_dataset(body: NewDataset, request: Request) -> dict:
    """Write the spec, land the staged file as the first batch, serve the dataset and ask Dagster to reload;
    409 when the name is taken (also by a creation meanwhile), 422 for choices that make no spec."""
    p = request.app.state.platform
    specs_dir = _specs_dir(p)
    batch = body.upload_id and _batch_name(_store(request), body.upload_id)
    choice = Choice(name=body.name.strip(), target=body.target, columns=body.columns,
                    algorithms={a: (g if g else {}) for a, g in body.algorithms.items()})
    try:
        spec, landed = create(specs_dir, _store(request), check_upload_id(body.upload_id), choice, set(p.specs),
                              batch)
    except Refused as e:
        raise _refused(e) from None
    p.serve(spec)
    # off the request: reloading a code location takes Dagster seconds to tens of seconds, and the page has
    # nothing to wait for (the daemon picks the spec up within a minute either way)
    threading.Thread(target=_reload, args=(p.settings.dagster_url,), daemon=True, name="dagster-reload").start()
    return {"dataset": spec.name, "task": spec.task, "landed": landed, "url": f"{PREFIX}/datasets/{spec.name}"}


def _batch_name(store, upload_id: str) -> str:
    from api.web.create import original_name, staged

    try:
        name = original_name(staged(store, check_upload_id(upload_id)))
    except Refused as e:
        raise _refused(e) from None
    return name


def _reload(url: str) -> None:
    from api.platform import say
    from ml_platform.local.dagster_gql import DagsterError, reload_code_locations

    try:
        problems = reload_code_locations(url)
    except DagsterError as e:
        problems = [f"could not be asked ({str(e)[:200]}); its daemon picks the spec up within a minute"]
    if problems:
        say(f"warning: Dagster reload after a new dataset: {'; '.join(problems)}")


@router.get("/datasets/{dataset}/progress")
def training_progress(dataset: str, request: Request) -> dict:
    from api.web.progress import progress
    from ml_platform.local.dagster_gql import DagsterError

    p = request.app.state.platform
    spec = p.specs.get(dataset)
    if spec is None:
        raise HTTPException(404, f"unknown dataset {dataset!r}")
    try:
        out = progress(p.settings.dagster_url, dataset, chain(spec))
    except DagsterError as e:
        raise HTTPException(503, str(e)[:500]) from None
    return out | {"dagster_url": p.settings.dagster_url.rstrip("/")}


@router.get("/datasets/{dataset}/plots/{run_id}/{name}")
def plot(dataset: str, run_id: str, name: str, request: Request) -> Response:
    """A training's plot (PNG) from its MLflow run."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    p = request.app.state.platform
    if dataset not in p.specs or name not in PLOTS or not run_id.isalnum():
        raise HTTPException(404, "no such plot")
    client = p.tracker().client
    try:
        run = client.get_run(run_id)
        exp = client.get_experiment(run.info.experiment_id)
        if exp.name != f"ml_platform/{dataset}":
            raise HTTPException(404, "no such plot")
        with tempfile.TemporaryDirectory(prefix="plot-") as work:
            path = download_artifacts(run_id=run_id, artifact_path=name, dst_path=work,
                                      tracking_uri=p.settings.tracking_uri)
            with open(path, "rb") as f:
                png = f.read()
    except (MlflowException, OSError) as e:
        raise HTTPException(404, f"plot {name}: {str(e)[:200]}") from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})
