"""CSV batch predictions. The file is the raw request body (`Content-Type: text/csv`; `curl --data-binary @f.csv`),
streamed to disk under the upload limit, with a header row naming request columns (as in the dataset's batch
files; the target and unknown columns are ignored). Each row becomes one request scored through the dataset's
`DatasetServer.predict`, the path of POST /predict: same coalescer, champion version and prediction log.

- Up to `batch_direct_rows` rows: answered at once, as CSV (request_id, prediction, probability, model_version,
  status, reason), or as JSON with `Accept: application/json`.
- More: 202 and a job, run in a background thread (one job at a time per dataset) in chunks of `max_rows`; the
  result CSV is written under <home>/batch/<job id>/.

A row without request_id gets `<job id>-<row number>`, one without event_time the time of the upload. A bad row is
a rejected result with its reason (the scorer's, or "line N: ..." for a row with the wrong field count); a request_id
repeated in the file is scored again, as on Kafka. A file that cannot be read as CSV is a 422 naming the line.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from api.app import dataset_server
from api.models import errors
from api.platform import NotReady, say
from api.uploads import receive_to
from ml_platform.data.ingest import name_empty_headers
from ml_platform.serve.messages import now_iso

router = APIRouter(tags=["predictions"])
COLUMNS = ("request_id", "prediction", "probability", "model_version", "status", "reason")
JOB_ID = r"^batch-[0-9a-f]{16}$"
RETRIES = 3  # a chunk that meets no champion or a timeout is tried again before the job fails


class BatchRow(BaseModel):
    request_id: str | None
    prediction: float | None
    probability: float | None
    model_version: str | None
    status: Literal["scored", "rejected"]
    reason: str | None


class BatchResult(BaseModel):
    rows: int
    scored: int
    rejected: int
    results: list[BatchRow]


class BatchJob(BaseModel):
    job_id: str
    dataset: str
    status: Literal["queued", "running", "done", "failed"]
    rows_total: int
    rows_done: int = 0
    scored: int = 0
    rejected: int = 0
    error: str | None = None
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result_url: str | None = None


class BadFile(ValueError):
    def __init__(self, line: int, msg: str):
        super().__init__(f"line {line}: {msg}")


def read_rows(path: Path, spec) -> Iterator[tuple[int, int, dict | None, str | None]]:
    """(row number, line, {column: text} of the request columns, or None and why the row cannot be a request).
    Raises BadFile for what makes the whole file unreadable (encoding, a NUL byte, a broken quote, the header)."""
    wanted = {c for c in spec.column_names if c != spec.target} | {"request_id", "event_time"}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)  # a broken quote would swallow the rows after it: the file is refused
        try:
            first = next(reader, None)
            if not first or not any(h.strip() for h in first):
                raise BadFile(1, "no header row (an empty file, or an empty first line)")
            header = name_empty_headers([h.strip() for h in first], spec)
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise BadFile(1, f"duplicate header columns {dupes[:10]}")
            keep = [(i, h) for i, h in enumerate(header) if h in wanted]
            if not [h for _, h in keep if h in spec.column_names]:
                raise BadFile(1, f"no column of {spec.name}'s requests in the header {header[:6]}; expected "
                                 f"columns such as {spec.column_names[:6]} (comma-separated)")
            n, line = 0, reader.line_num
            for fields in reader:
                start, line = line + 1, reader.line_num
                if not fields:  # a blank line is no row
                    continue
                n += 1
                if any("\x00" in v for v in fields):  # Python's csv reads NULs; the batch path refuses them too
                    raise BadFile(start, "a NUL byte: binary content, not a text CSV file")
                if len(fields) != len(header):
                    yield n, start, None, f"line {start}: {len(fields)} fields, the header has {len(header)}"
                else:
                    yield n, start, {h: fields[i] for i, h in keep}, None
        except csv.Error as e:
            raise BadFile(reader.line_num, f"not readable as CSV: {e}") from None
        except UnicodeDecodeError as e:
            raise BadFile(reader.line_num + 1, f"not UTF-8 text ({e.reason} at byte {e.start} of a read block)") \
                from None


def score_rows(server, rows: list[tuple[int, int, dict | None, str | None]], id_prefix: str, event_time: str,
               max_rows: int) -> list[dict]:
    """Score parsed rows through the predict path: calls of at most `max_rows` rows and no request_id twice in a
    call (outputs are matched to rows by request_id). One result dict per row, in order."""
    out: list[dict | None] = [None] * len(rows)
    calls, cur, ids = [], [], set()
    for k, (n, _, row, reason) in enumerate(rows):
        if row is None:
            out[k] = _result(f"{id_prefix}-{n}", "rejected", reason=reason)
            continue
        msg = dict(row)
        msg["request_id"] = msg.get("request_id") or f"{id_prefix}-{n}"
        msg["event_time"] = msg.get("event_time") or event_time
        if len(cur) >= max_rows or msg["request_id"] in ids:
            calls.append(cur)
            cur, ids = [], set()
        cur.append((k, msg))
        ids.add(msg["request_id"])
    calls.append(cur)
    for call in filter(None, calls):
        outcome = server.predict([m for _, m in call])
        for (k, msg), s in zip(call, outcome.rows, strict=True):
            if s.prediction is not None:
                p = s.prediction
                out[k] = _result(p["request_id"], "scored", p["prediction"], p["probability"], p["model_version"])
            else:
                out[k] = _result(msg["request_id"], "rejected", reason=s.rejected["reason"])
    return out


def _result(rid, status, prediction=None, probability=None, version=None, reason=None) -> dict:
    return {"request_id": rid, "prediction": prediction, "probability": probability, "model_version": version,
            "status": status, "reason": reason}


def _csv_lines(results: list[dict]) -> list[list]:
    return [["" if r[c] is None else r[c] for c in COLUMNS] for r in results]


class Jobs:
    """The batch jobs of one app. A worker thread per dataset runs its jobs one at a time, in arrival order, and
    ends when none is left. Each job's status is also written to <home>/batch/<id>/status.json."""

    def __init__(self, platform):
        self.platform, self.root = platform, Path(platform.settings.home) / "batch"
        self._jobs: dict[str, BatchJob] = {}
        self._queued: dict[str, deque] = {}
        self._workers: set[str] = set()
        self._lock = threading.Lock()

    def submit(self, job: BatchJob) -> None:
        with self._lock:
            self._jobs[job.job_id] = job
            self._queued.setdefault(job.dataset, deque()).append(job)
            start = job.dataset not in self._workers
            self._workers.add(job.dataset)
        self._save(job)
        if start:
            threading.Thread(target=self._drain, args=(job.dataset,), daemon=True, name=f"batch-{job.dataset}").start()

    def get(self, job_id: str) -> BatchJob | None:
        if job_id in self._jobs:
            return self._jobs[job_id]
        try:  # a job of an earlier API process: its file says how far it got
            job = BatchJob.model_validate_json((self.root / job_id / "status.json").read_text())
        except (OSError, ValueError):
            return None
        if job.status in ("queued", "running"):
            job.status, job.error = "failed", "interrupted: the API stopped before the job finished"
        return job

    def _drain(self, dataset: str) -> None:
        while True:
            with self._lock:
                if not self._queued[dataset]:
                    self._workers.discard(dataset)
                    return
                job = self._queued[dataset].popleft()
            self._run(job)

    def _run(self, job: BatchJob) -> None:
        folder = self.root / job.job_id
        s = self.platform.settings
        job.status, job.started_at = "running", now_iso()
        self._save(job)
        try:
            server = self.platform.servers[job.dataset]
            with open(folder / "result.csv.part", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                chunk = []
                for row in chain(read_rows(folder / "input.csv", server.spec), [None]):  # None: the end
                    if row is not None:
                        chunk.append(row)
                    if chunk and (row is None or len(chunk) >= s.max_rows):
                        results = self._chunk(server, job, chunk)
                        w.writerows(_csv_lines(results))
                        job.rows_done += len(results)
                        job.scored += sum(r["status"] == "scored" for r in results)
                        job.rejected = job.rows_done - job.scored
                        chunk = []
                        self._save(job)
            os.replace(folder / "result.csv.part", folder / "result.csv")
            job.status = "done"
        except Exception as e:  # the job fails with its reason; the API and the next job go on
            job.status, job.error = "failed", f"{type(e).__name__}: {str(e)[:500]}"
            say(f"error: batch job {job.job_id} of {job.dataset} failed: {job.error}")
        finally:
            job.finished_at = now_iso()
            (folder / "input.csv").unlink(missing_ok=True)
            self._save(job)

    def _chunk(self, server, job: BatchJob, chunk: list) -> list[dict]:
        for attempt in range(1, RETRIES + 1):
            try:
                return score_rows(server, chunk, job.job_id, job.created_at, self.platform.settings.max_rows)
            except (NotReady, TimeoutError):
                if attempt == RETRIES:
                    raise
                time.sleep(5 * attempt)
        raise AssertionError("unreachable")

    def _save(self, job: BatchJob) -> None:
        folder = self.root / job.job_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "status.tmp").write_text(job.model_dump_json())
        os.replace(folder / "status.tmp", folder / "status.json")


_jobs_lock = threading.Lock()


def jobs_of(request: Request) -> Jobs:
    with _jobs_lock:
        jobs = getattr(request.app.state, "batch_jobs", None)
        if jobs is None:
            jobs = request.app.state.batch_jobs = Jobs(request.app.state.platform)
        return jobs


def _scan(path: Path, spec, direct_rows: int) -> tuple[int, list | None]:
    """(row count, the rows when there are at most `direct_rows`); reads the whole file, so a file that is
    unreadable somewhere is refused before any row is scored."""
    rows, n = [], 0
    for row in read_rows(path, spec):
        n += 1
        if rows is not None:
            rows.append(row)
            if n > direct_rows:
                rows = None
    return n, rows


CSV_BODY = {"requestBody": {"required": True, "description": "the CSV file as the raw body, with a header row",
                            "content": {"text/csv": {"schema": {"type": "string"},
                                                     "example": "request_id,year,mileage\nr-1,2018,\"12,345\"\n"}}}}


@router.post("/datasets/{dataset}/predict/batch", response_model=BatchResult, openapi_extra=CSV_BODY, responses={
    200: {"description": "the predictions, one per row in file order: CSV by default, JSON with Accept: "
                         "application/json", "content": {"text/csv": {"schema": {"type": "string"}}}},
    202: {"model": BatchJob, "description": "more rows than batch_direct_rows: a job; poll its status"},
    **errors(e404="unknown dataset", e413="file over the upload limit", e415="not a CSV body (multipart or JSON)",
             e422="the file cannot be read as CSV; the detail names the line",
             e503="no champion loaded yet, or scoring timed out")})
async def predict_batch(dataset: str, request: Request):
    """Score a CSV file of requests (the raw body, `Content-Type: text/csv`). Small files are answered at once;
    larger ones become a job (202) whose result CSV is fetched when done."""
    platform = request.app.state.platform
    server = dataset_server(platform, dataset)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind.startswith("multipart/") or kind == "application/json":
        raise HTTPException(415, f"send the CSV file as the raw body with Content-Type: text/csv (curl --data-binary "
                                 f"@file.csv), not {kind}" + (f"; JSON rows go to /datasets/{dataset}/predict"
                                                              if kind == "application/json" else ""))
    s = platform.settings
    job_id, submitted = f"batch-{uuid.uuid4().hex[:16]}", now_iso()
    folder = Path(s.home) / "batch" / job_id
    folder.mkdir(parents=True)
    queued = False
    try:
        await receive_to(request, folder / "input.csv", s.max_upload_bytes)
        try:
            total, rows = await run_in_threadpool(_scan, folder / "input.csv", server.spec, s.batch_direct_rows)
        except BadFile as e:
            raise HTTPException(422, f"{dataset} batch file: {e}") from None
        if rows is None:  # a job: the input stays for the worker
            if server.readiness()["model_version"] is None:
                raise HTTPException(503, f"{dataset}: no champion loaded yet")
            job = BatchJob(job_id=job_id, dataset=dataset, status="queued", rows_total=total, created_at=submitted)
            jobs_of(request).submit(job)
            queued = True
            return JSONResponse(job.model_dump(), status_code=202,
                                headers={"Location": f"/datasets/{dataset}/predict/batch/{job_id}"})
        try:
            results = await run_in_threadpool(score_rows, server, rows, job_id, submitted, s.max_rows)
        except NotReady as e:
            raise HTTPException(503, str(e)) from None
        except TimeoutError:
            raise HTTPException(503, f"scoring took over {s.wait_seconds:.0f} s; try again") from None
    finally:
        if not queued:
            shutil.rmtree(folder, ignore_errors=True)
    scored = sum(r["status"] == "scored" for r in results)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/csv" not in accept:
        return {"rows": total, "scored": scored, "rejected": total - scored, "results": results}
    return Response(_to_csv(results), media_type="text/csv")


def _to_csv(results: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    w.writerows(_csv_lines(results))
    return buf.getvalue()


def _job(request: Request, dataset: str, job_id: str) -> BatchJob:
    dataset_server(request.app.state.platform, dataset)
    job = jobs_of(request).get(job_id)
    if job is None or job.dataset != dataset:
        raise HTTPException(404, f"no batch job {job_id!r} for {dataset}")
    if job.status == "done":
        job.result_url = f"/datasets/{dataset}/predict/batch/{job_id}/result"
    return job


JOB_ID_PARAM = PathParam(pattern=JOB_ID, description="the id a 202 answer gave")


@router.get("/datasets/{dataset}/predict/batch/{job_id}", response_model=BatchJob,
            responses=errors(e404="unknown dataset or job"))
def batch_status(dataset: str, request: Request, job_id: str = JOB_ID_PARAM) -> BatchJob:
    """A batch job's status (queued, running, done, failed), rows done of the total, and the error if it failed."""
    return _job(request, dataset, job_id)


@router.get("/datasets/{dataset}/predict/batch/{job_id}/result", response_class=FileResponse, responses={
    200: {"description": "the result CSV, one row per input row in file order",
          "content": {"text/csv": {"schema": {"type": "string"}}}},
    **errors(e404="unknown dataset or job", e409="the job is not done")})
def batch_result(dataset: str, request: Request, job_id: str = JOB_ID_PARAM):
    """The result CSV of a finished job: request_id, prediction, probability, model_version, status, reason."""
    job = _job(request, dataset, job_id)
    path = jobs_of(request).root / job_id / "result.csv"
    if job.status != "done" or not path.is_file():
        raise HTTPException(409, f"batch job {job_id} is {job.status} ({job.rows_done}/{job.rows_total} rows)"
                                 + (f": {job.error}" if job.error else ""))
    return FileResponse(path, media_type="text/csv", filename=f"{job_id}.csv")
