"""Batch files into a dataset's landing zone, where the new-batch sensor picks them up. Names follow the landing
rules (ml_platform.data.landing), so a file accepted here is one the sensor will read.

- Local data root: `PUT /datasets/{ds}/uploads/{filename}` streams the body into the landing folder under a
  hidden temporary name (which the sensor ignores) and links it into place when complete, so a half-written file
  is never seen as a batch. The header is checked as the sensor would: a file it would quarantine is refused here.
- S3 data root: `POST /datasets/{ds}/uploads` returns a presigned POST; the client sends the file straight to S3
  (the size limit is in the signed policy), and the API never carries the bytes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import uuid
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from api.app import dataset_server
from api.models import errors
from ml_platform.data.ingest import RejectedFile, check_header
from ml_platform.data.landing import is_temporary, partition_key, rejection_for_name
from ml_platform.layout import batch_record_path, landed_file, landing_dir
from ml_platform.stores.base import StorageError
from ml_platform.stores.local import LocalStore
from ml_platform.stores.s3 import S3Store

router = APIRouter(tags=["uploads"])
GRANT_SECONDS = 15 * 60
HEAD_BYTES = 65536  # what the sensor reads of a file to check its header
# The landing rules as a schema, slightly stricter than the sensor (it also takes other scripts' letters): ends
# .csv, no path separator, control character or '..', not hidden or temporary, at most 240 bytes in UTF-8 (no
# look-around: pydantic's regex engine has none)
_CH = r" !-\-0-\[\]-~\u00c0-\u024f"  # no . / \\ or control character
_FIRST = r" !-\-0-\[\]^`-}\u00c0-\u024f"  # nor _ or ~ (hidden, temporary)
NAME_PATTERN = f"^[{_FIRST}](?:[{_CH}]|\\.[{_CH}])*\\.[cC][sS][vV]$"
NAME_RULE = ("a .csv name of at most 120 characters: ASCII letters, digits, spaces and punctuation other than / "
             "and \\, or Latin letters with accents; not starting with '.', '_' or '~', no '..'")


class UploadRequest(BaseModel):
    filename: str = Field(pattern=NAME_PATTERN, max_length=120, description=NAME_RULE,
                          examples=["batch-2026-01-31.csv"])


class UploadTarget(BaseModel):
    """How to send the file. PUT: the body is the file (with the X-API-Key header). POST: a multipart form with
    `fields` first and the file last as `file`, to `url` (S3 itself; no API key)."""

    method: Literal["PUT", "POST"]
    url: str
    key: str = Field(description="where the file lands, relative to the data root (S3: the object key)")
    fields: dict[str, str] = Field(default_factory=dict)
    max_bytes: int
    expires_seconds: int | None = None
    curl: str


class Uploaded(BaseModel):
    dataset: str
    filename: str
    key: str
    bytes: int
    sha256: str


ERRORS = errors(e404="unknown dataset",
                e409="the name exists (landed or already ingested), or the data root takes no uploads this way",
                e422="a name the landing zone refuses, or (PUT) a file the sensor would quarantine",
                e503="the data store is unreachable")


def name_problem(name: str) -> str | None:
    """Why a batch file may not land under this name (None: it may). The sensor's own rules, plus what the sensor
    never has to see: a path separator, and a temporary name it would wait on forever."""
    if "/" in name or "\\" in name:
        return "file name contains a path separator"
    if len(name.encode()) > 255:
        return "file name longer than 255 bytes"
    reason = rejection_for_name(name)
    if reason is None and is_temporary(name):
        reason = ("a hidden or partial-upload name (starting with '.', '_' or '~', or ending .part, .tmp, ...): the "
                  "landing sensor never picks it up")
    return reason


def _check(request: Request, dataset: str, filename: str):
    platform = request.app.state.platform
    spec = dataset_server(platform, dataset).spec
    reason = name_problem(filename)
    if reason:
        raise HTTPException(422, f"filename {filename[:100]!r}: {reason}")
    try:
        store = platform.data_store()
        if store.exists(landed_file(spec, filename)):
            raise HTTPException(409, f"{filename!r} is already in the {dataset} landing zone; choose another name")
        if store.exists(batch_record_path(spec, partition_key(filename))):
            raise HTTPException(409, f"a batch named {filename!r} was already ingested into {dataset}; a file under "
                                     f"that name would be skipped, so choose another name")
    except (StorageError, OSError) as e:
        raise HTTPException(503, f"data store: {str(e)[:300]}") from None
    return platform, spec, store


@router.post("/datasets/{dataset}/uploads", response_model=UploadTarget,
             responses=ERRORS | errors(e400="the body is not JSON"))
def grant_upload(dataset: str, body: UploadRequest, request: Request) -> UploadTarget:
    """Where and how to upload a batch file named `filename`. Local data root: PUT the file to the returned
    url. S3: a presigned POST valid 15 minutes for this one object, up to the API's upload limit."""
    platform, spec, store = _check(request, dataset, body.filename)
    limit = platform.settings.max_upload_bytes
    if isinstance(store, S3Store):
        try:
            grant = store.presigned_upload(landed_file(spec, body.filename), limit, GRANT_SECONDS)
        except StorageError as e:
            raise HTTPException(503, f"data store: {str(e)[:300]}") from None
        return UploadTarget(method="POST", url=grant.url, key=grant.key, fields=grant.fields, max_bytes=limit,
                            expires_seconds=GRANT_SECONDS, curl=grant.curl(body.filename))
    if not isinstance(store, LocalStore):
        raise HTTPException(409, f"the data root {platform.settings.data_root!r} takes no uploads through the API "
                                 f"(only local folders and S3); copy files into {landing_dir(spec)} directly")
    url = f"/datasets/{quote(dataset, safe='')}/uploads/{quote(body.filename, safe='')}"
    return UploadTarget(method="PUT", url=url, key=landed_file(spec, body.filename), max_bytes=limit,
                        curl=f"curl -sf -X PUT -H \"X-API-Key: $ML_PLATFORM_API_KEY\" -H 'Content-Type: text/csv' "
                             f"--data-binary @'{body.filename}' 'http://<api-host>{url}'")


async def receive_to(request: Request, target: Path, limit: int) -> tuple[int, str, bytes]:
    """Stream the request body into `target` (never whole in memory): (bytes, sha256, first HEAD_BYTES). Over
    `limit` bytes: 413, and `target` is removed. The file is fsynced, so a rename after this publishes it whole."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"file of {int(length)} bytes is over the upload limit of {limit} bytes")
    n, digest, head = 0, hashlib.sha256(), b""
    try:
        with open(target, "xb") as f:
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise HTTPException(413, f"file over the upload limit of {limit} bytes")
                f.write(chunk)
                digest.update(chunk)
                if len(head) < HEAD_BYTES:
                    head += chunk[:HEAD_BYTES - len(head)]
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # too large, the client went away, or the disk is full: no partial file stays
        target.unlink(missing_ok=True)
        raise
    return n, digest.hexdigest(), head


@router.put("/datasets/{dataset}/uploads/{filename}", status_code=201, response_model=Uploaded,
            responses=ERRORS | errors(e413="file over the upload limit"),
            openapi_extra={"requestBody": {"required": True, "description": "the CSV file, as the raw body",
                                           "content": {"text/csv": {"schema": {"type": "string"}}}}})
async def put_upload(dataset: str, request: Request,
                     filename: str = PathParam(pattern=NAME_PATTERN, max_length=120,
                                                              description=NAME_RULE)) -> Uploaded:
    """Upload a batch file into the landing zone (local data root). It appears under its name only once complete;
    a name that exists is refused, and so is a file whose header the sensor would reject (the reason says why)."""
    platform, spec, store = _check(request, dataset, filename)
    if not isinstance(store, LocalStore):
        raise HTTPException(409, f"the data root {platform.settings.data_root!r} is not a local folder: ask POST "
                                 f"/datasets/{dataset}/uploads for a presigned upload instead")
    folder = store.path(landing_dir(spec))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".upload-{uuid.uuid4().hex}.part"  # hidden and .part: the sensor waits on it, never reads it
    n, sha, head = await receive_to(request, tmp, platform.settings.max_upload_bytes)
    try:
        check_header(head, spec, n)
        # a hard link publishes the complete file atomically and, unlike rename, never replaces one that exists
        os.link(tmp, folder / filename)
    except RejectedFile as e:
        raise HTTPException(422, f"{filename!r} would be quarantined by the landing sensor: {e}") from None
    except csv.Error as e:  # check_header lets the csv module's own errors through (a lone CR in the header)
        raise HTTPException(422, f"{filename!r}: the header line is not readable as CSV: {e}") from None
    except FileExistsError:
        raise HTTPException(409, f"{filename!r} landed meanwhile from another upload; choose another name") from None
    finally:
        tmp.unlink(missing_ok=True)
    return Uploaded(dataset=dataset, filename=filename, key=landed_file(spec, filename), bytes=n, sha256=sha)
