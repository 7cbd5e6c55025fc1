"""A new dataset from an uploaded CSV, in three steps that each leave nothing behind when they fail:

1. **stage**: the file goes to `staging/<upload id>/` in the data store (streamed: a local data root receives it
   through the API without holding it in memory, an S3 root through a presigned POST straight to S3), then its
   first rows are read as a draft (`ml_platform.spec_draft`); a file that is no CSV is refused and deleted.
2. **edit**: the page shows the draft; a chosen target is checked over the whole file (the task it implies).
3. **create**: the spec is written into the spec directory under an exclusive name (two users creating one name:
   the first wins, the second is told), the staged file moves into the dataset's landing zone as its first batch,
   the API starts serving the dataset, and Dagster is asked to reload, so the new-batch sensor takes it from
   there. A failure after the spec is written removes it again.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ml_platform.layout import STAGING_DIR, accepted_dir, batch_records_dir, landed_file, landing_dir
from ml_platform.spec import load_spec, load_spec_dir
from ml_platform.spec_draft import ColumnDraft, Draft, DraftError, compose, draft, implied_task, target_counts
from ml_platform.spec_infer import InferError
from ml_platform.stores.base import Store
from ml_platform.stores.local import LocalStore

SAMPLE_BYTES = 4 * 1_048_576  # what a draft reads of a staged file kept elsewhere than a local folder
STAGED_HOURS = 24              # a staged file nobody turned into a dataset is removed after this


class Refused(ValueError):
    """The user's input cannot become a dataset; `status` is the HTTP status that says why (409, 413, 422)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def new_upload_id() -> str:
    return uuid.uuid4().hex


def check_upload_id(upload_id: str) -> str:
    if len(upload_id) != 32 or any(c not in "0123456789abcdef" for c in upload_id):
        raise Refused(404, f"no staged upload {upload_id[:40]!r}")
    return upload_id


def _files(store: Store, upload_id: str) -> list[str]:
    prefix = f"{check_upload_id(upload_id)}-"
    return [f"{STAGING_DIR}/{f.name}" for f in store.list_files(STAGING_DIR) if f.name.startswith(prefix)]


def staged(store: Store, upload_id: str) -> str:
    """The staged file's path in the store."""
    files = _files(store, upload_id)
    if not files:
        raise Refused(404, f"no staged upload {upload_id!r}: it was never completed, or it expired or was used")
    return files[0]


def original_name(rel: str) -> str:
    return rel.rsplit("/", 1)[-1][33:]


def discard(store: Store, upload_id: str) -> None:
    for rel in _files(store, upload_id):
        store.delete_tree(rel)


def expire_staged(store: Store, now: float | None = None) -> int:
    """Remove staged uploads older than STAGED_HOURS; returns how many."""
    cutoff = (now or time.time()) - STAGED_HOURS * 3600
    old = [f for f in store.list_files(STAGING_DIR) if f.mtime_ns / 1e9 < cutoff and not f.name.startswith(".")]
    for f in old:
        store.delete_tree(f"{STAGING_DIR}/{f.name}")
    return len(old)


def _local_sample(store: Store, rel: str, work: Path) -> Path:
    if isinstance(store, LocalStore):
        return store.path(rel)
    head = store.read_head(rel, SAMPLE_BYTES)
    if len(head) == SAMPLE_BYTES and b"\n" in head:  # cut at the last whole line
        head = head[:head.rindex(b"\n") + 1]
    path = work / original_name(rel)
    path.write_bytes(head)
    return path


def draft_of(store: Store, upload_id: str) -> Draft:
    """The staged file's draft; a file that cannot be one is deleted and refused (422) with the reason."""
    rel = staged(store, upload_id)
    work = Path(tempfile.mkdtemp(prefix="draft-"))
    try:
        d = draft(_local_sample(store, rel, work))
        d.file = original_name(rel)
        return d
    except InferError as e:
        discard(store, upload_id)
        raise Refused(422, str(e).split(": ", 1)[-1] if str(e).startswith("/") else str(e)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def target_of(store: Store, upload_id: str, target: str) -> dict:
    """The task the column implies over the whole staged file (DraftError: nothing can learn from it)."""
    rel = staged(store, upload_id)
    with io.TextIOWrapper(store.open_read(rel), encoding="utf-8-sig", newline="") as text:
        counts, rows, missing = target_counts(text, target)
    return implied_task(target, counts, rows, missing) | {"rows": rows, "missing": missing}


@dataclass
class Choice:
    name: str
    target: str
    columns: dict[str, dict]          # column name -> {parse, feature, unit, format}; absent: as drafted
    algorithms: dict[str, dict]       # algorithm -> its grid


def apply(d: Draft, edits: dict[str, dict]) -> list[ColumnDraft]:
    unknown = sorted(set(edits) - {c.name for c in d.columns})
    if unknown:
        raise DraftError(f"columns {unknown[:5]} are not in the file")
    out = []
    for c in d.columns:
        e = edits.get(c.name) or {}
        out.append(ColumnDraft(**{**c.__dict__, **{k: e[k] for k in ("parse", "feature", "unit", "format")
                                                   if k in e and e[k] is not None}}))
    return out


def existing(specs_dir: Path, store: Store, name: str, served: set[str]) -> str | None:
    """Why `name` is taken (None: it is free): a spec of that name, a spec file, or data in the store."""
    if name in served or name in load_spec_dir(specs_dir).specs:
        return f"a dataset named {name!r} exists already; choose another name"
    if (specs_dir / f"{name}.yaml").exists() or (specs_dir / f"{name}.yml").exists():
        return f"a spec file {name}.yaml exists already in {specs_dir.name}/ (it may not load); choose another name"
    if store.list_files(landing_dir_of(name)) or store.list_files(batch_records_dir(_N(name))) \
            or store.list_files(accepted_dir(_N(name))):
        return f"the data store holds data of an earlier dataset named {name!r}; choose another name"
    return None


class _N:
    def __init__(self, name: str):
        self.name = name


def landing_dir_of(name: str) -> str:
    return landing_dir(_N(name))


def create(specs_dir: Path, store: Store, upload_id: str, choice: Choice, served: set[str], batch_name: str):
    """Write the spec and land the staged file as the first batch; returns (spec, the landed file's store path).
    Refused (409: name taken, 422: a choice that makes no spec) leaves no spec and no landed file."""
    rel = staged(store, upload_id)
    try:
        d = draft_of(store, upload_id)
        columns = apply(d, choice.columns)
        implied = target_of(store, upload_id, choice.target)
        text = compose(choice.name, columns, choice.target, implied, choice.algorithms,
                       key=d.key if choice.columns.get(d.key or "", {}).get("parse") in (None, "string") else None)
    except DraftError as e:
        raise Refused(422, str(e)) from None
    taken = existing(specs_dir, store, choice.name, served)
    if taken:
        raise Refused(409, taken)
    specs_dir.mkdir(parents=True, exist_ok=True)
    final = specs_dir / f"{choice.name}.yaml"
    tmp = specs_dir / f".{choice.name}.{uuid.uuid4().hex}.tmp"  # not *.yaml: never loaded half-written
    tmp.write_text(text)
    try:
        os.link(tmp, final)  # exclusive: of two creators of one name, the second finds the file there
    except FileExistsError:
        raise Refused(409, f"a dataset named {choice.name!r} was created meanwhile by someone else; choose another "
                           f"name") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        spec = load_spec(final)
        dst = landed_file(spec, batch_name)
        store.move(rel, dst)
        discard(store, upload_id)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return spec, dst
