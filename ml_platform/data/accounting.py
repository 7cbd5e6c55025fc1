"""Where every landed file stands, as one state derived from Dagster's own run records and the store: no second
ledger. Readers (a DagsterInstance in the sensor, GraphQL in the CLI) turn runs into RunFacts; `read_store_facts`
lists the store; `account` decides, first matching rule wins:

  quarantined by the sensor (and not landed again)  -> quarantined (the sensor's reason)
  key accepted for training                          -> accepted
  same content as an earlier batch (duplicate_of)    -> superseded
  the cleaning did not accept it                     -> quarantined (its blocking checks; rows in quarantine/)
  a run of the batch in flight                       -> running, or waiting ("queued as run ...")
  the newest batch run was refused by its job        -> quarantined (the refusal: final, never retried)
  max_attempts failed runs and no retry coming       -> failed (newest error, attempts)
  a known partition                                  -> waiting (what it waits for: a retry, the cleaning, ...)
  a file the sensor has not picked up yet            -> waiting

`retry_due` says which waiting batches the sensor should request again (exponential backoff after failures)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass

from ml_platform.data.landing import is_temporary, partition_key
from ml_platform.layout import (
    accepted_dir,
    batch_record_path,
    batch_records_dir,
    landing_dir,
    quarantine_files_dir,
    quarantine_table,
    rejected_dir,
    rejected_marker,
)
from ml_platform.stores.base import FileInfo, Store

STATES = ("waiting", "running", "accepted", "quarantined", "failed", "superseded")
IN_FLIGHT = frozenset({"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"})
QUEUED = frozenset({"QUEUED", "NOT_STARTED"})
BATCH_LAYERS = ("raw_batches", "cleaned_features")
RETRY_BASE_SECONDS = 30.0
ATTENTION = {"failed": 0, "running": 1, "waiting": 2, "quarantined": 3, "superseded": 4, "accepted": 5}


@dataclass(frozen=True)
class RunFact:
    """One Dagster run, whoever read it (a DagsterInstance or the webserver's GraphQL)."""
    run_id: str
    partition: str | None
    layer: str | None  # raw_batches, else cleaned_features, else the first selected layer of the dataset
    status: str  # a DagsterRunStatus name
    created: float
    ended: float | None = None
    refused: str | None = None  # tag ml_platform/refused: the job refused the data; final, never retried
    will_retry: bool = False  # tag dagster/will_retry: Dagster's run retries will re-execute it
    error: str | None = None


@dataclass(frozen=True)
class StoreFacts:
    landed: list[FileInfo]
    quarantined: dict[str, tuple[str, float]]  # original file name -> (reason, rejected at)
    ingested: set[str]
    superseded: dict[str, str]  # key -> the key whose content it repeats
    accepted: dict[str, float]  # key -> marker mtime
    not_accepted: dict[str, str]  # key -> why the cleaning did not accept it


@dataclass(frozen=True)
class Batch:
    file: str
    key: str
    state: str
    since: float
    reason: str
    attempts: int
    run_id: str | None
    next_layer: str | None


def _stamp(text: str) -> float | None:
    try:  # layers.quarantine_file's stamp
        return dt.datetime.strptime(text, "%Y%m%dT%H%M%S%f").replace(tzinfo=dt.UTC).timestamp()
    except (TypeError, ValueError):
        return None


def read_store_facts(store: Store, spec) -> StoreFacts:
    """Listings, plus the JSON only of what a listing cannot tell: quarantine reasons, and the bronze record and
    cleaning verdict of batches that are not accepted (accepted ones, the bulk, cost no read)."""
    quarantined: dict[str, tuple[str, float]] = {}
    for f in store.list_files(quarantine_files_dir(spec)):
        if not f.name.endswith(".reason.json"):
            continue
        try:
            rec = store.read_json(f"{quarantine_files_dir(spec)}/{f.name}") or {}
        except ValueError:
            rec = {}
        name = str(rec.get("file") or f.name.removesuffix(".reason.json"))
        at = _stamp(rec.get("rejected_at")) or f.mtime_ns / 1e9
        if name not in quarantined or quarantined[name][1] < at:  # quarantined twice: the newest reason
            quarantined[name] = (str(rec.get("reason") or "no reason recorded"), at)
    accepted = {f.name.removesuffix(".json"): f.mtime_ns / 1e9 for f in store.list_files(accepted_dir(spec))
                if f.name.endswith(".json")}
    ingested = {f.name.removesuffix(".json") for f in store.list_files(batch_records_dir(spec))
                if f.name.endswith(".json")}
    superseded = {}
    for key in ingested - accepted.keys():
        try:
            rec = store.read_json(batch_record_path(spec, key)) or {}
        except ValueError:
            continue
        if rec.get("duplicate_of"):
            superseded[key] = str(rec["duplicate_of"])
    not_accepted = {}
    for f in store.list_files(rejected_dir(spec)):
        key = f.name.removesuffix(".json")
        if key in accepted or key in superseded or not f.name.endswith(".json"):
            continue
        try:
            why = (store.read_json(rejected_marker(spec, key)) or {}).get("why") or []
        except ValueError:
            why = ["its verdict file is unreadable"]
        not_accepted[key] = "; ".join(map(str, why if isinstance(why, list) else [why])) or "not accepted"
    return StoreFacts(store.list_files(landing_dir(spec)), quarantined, ingested, superseded, accepted, not_accepted)


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S UTC")


def _end(r: RunFact) -> float:
    return r.ended if r.ended is not None else r.created


def _attempts(mine: list[RunFact]) -> list[RunFact]:
    return [r for r in mine if r.status == "FAILURE" and not r.refused]


def _backoff_due(failures: list[RunFact], base: float) -> float:
    return max(map(_end, failures)) + base * 2 ** (len(failures) - 1)


def _decide(spec, file: str, key: str, landed: FileInfo | None, facts: StoreFacts, known: bool,
            mine: list[RunFact], now: float, max_attempts: int, base: float) -> Batch:
    """One batch's state; `mine` are the batch-layer runs of its key, newest first."""
    newest = mine[0] if mine else None
    run_id = newest.run_id if newest else None
    arrived = landed.mtime_ns / 1e9 if landed else (_end(mine[-1]) if mine else now)
    failures = _attempts(mine)

    def b(state: str, since: float, reason: str, next_layer: str | None = None) -> Batch:
        return Batch(file, key, state, since, reason, len(failures), run_id, next_layer)

    def last_ok(layer: str) -> float:
        return max((_end(r) for r in mine if r.layer == layer and r.status == "SUCCESS"), default=arrived)

    if landed is None and file in facts.quarantined:
        reason, at = facts.quarantined[file]
        return b("quarantined", at, reason)
    if key in facts.accepted:
        at = facts.accepted[key]
        again = landed is not None and arrived > at
        return b("accepted", at, f"landed again at {_clock(arrived)} after it was accepted: a name is ingested once, "
                                 f"land a correction under a new name" if again else "accepted for training")
    if key in facts.superseded:
        return b("superseded", last_ok("raw_batches"), f"same content as batch {facts.superseded[key]}")
    if key in facts.not_accepted:
        return b("quarantined", last_ok("cleaned_features"),
                 f"{facts.not_accepted[key]} (rows: {quarantine_table(spec)} where _batch = '{key}')")
    flying = [r for r in mine if r.status in IN_FLIGHT]
    if flying:
        r = flying[0]
        if r.status in QUEUED:
            return Batch(file, key, "waiting", r.created, f"queued as run {r.run_id} ({r.layer})", len(failures),
                         r.run_id, None)
        return Batch(file, key, "running", r.created, f"{r.layer} in run {r.run_id} ({r.status.lower()})",
                     len(failures), r.run_id, None)
    if newest is not None and newest.refused:
        return b("quarantined", _end(newest), f"refused by {newest.layer}: {newest.refused}")
    last_error = next((r.error for r in failures if r.error), "the run failed") if failures else ""
    coming = newest is not None and newest.status == "FAILURE" and newest.will_retry
    if len(failures) >= max_attempts and not coming:
        return b("failed", _end(failures[0]), last_error)
    if not known:
        if is_temporary(file):
            return b("waiting", arrived, "still being written (temporary name)")
        return b("waiting", arrived, "landed, not yet picked up by the sensor")
    next_layer = "cleaned_features" if key in facts.ingested else "raw_batches"
    since = max(arrived, max(map(_end, mine), default=arrived))
    if coming:
        return b("waiting", since, f"Dagster will retry run {newest.run_id} (failed: {last_error})", None)
    if failures:
        n = len(failures)
        return b("waiting", since, f"retry {n} of {max_attempts - 1} due at {_clock(_backoff_due(failures, base))} "
                                   f"({next_layer}; last error: {last_error})", next_layer)
    if landed is None and next_layer == "raw_batches":
        why = f"not ingested and its file is no longer in {landing_dir(spec)}/"
    elif next_layer == "raw_batches":
        why = "ingestion not started"
    elif any(r.layer == "cleaned_features" and r.status == "SUCCESS" for r in mine):
        why = "cleaned, but the store has no verdict for it: cleaning again"
    else:
        why = "cleaning not started"
    if newest is not None and newest.status == "CANCELED":
        why += f" (run {newest.run_id} was canceled)"
    return b("waiting", since, why, next_layer)


def account(spec, facts: StoreFacts, known_keys: set[str], runs: list[RunFact], now: float,
            max_attempts: int = 4, *, base_seconds: float = RETRY_BASE_SECONDS) -> list[Batch]:
    """One Batch per landed file, quarantined file, and known partition without a file. Linear in files + runs."""
    by_key: dict[str, list[RunFact]] = defaultdict(list)
    for r in sorted(runs, key=lambda r: -r.created):
        if r.partition is not None and r.layer in BATCH_LAYERS:
            by_key[r.partition].append(r)
    landed = {f.name: f for f in facts.landed}
    out, with_file = [], set()
    for name in list(landed) + [n for n in facts.quarantined if n not in landed]:
        key = partition_key(name)
        with_file.add(key)
        out.append(_decide(spec, name, key, landed.get(name), facts, key in known_keys, by_key.get(key, []), now,
                           max_attempts, base_seconds))
    for key in sorted(known_keys - with_file):
        out.append(_decide(spec, "", key, None, facts, True, by_key.get(key, []), now, max_attempts, base_seconds))
    return out


def retry_due(batches: list[Batch], runs: list[RunFact], now: float, base_seconds: float = RETRY_BASE_SECONDS,
              max_attempts: int = 4) -> list[Batch]:
    """Waiting batches of known partitions with nothing in flight whose backoff has passed: no failure yet, or
    base * 2**(attempts-1) seconds since their latest failed run ended. Oldest first."""
    by_key: dict[str, list[RunFact]] = defaultdict(list)
    for r in runs:
        if r.partition is not None and r.layer in BATCH_LAYERS:
            by_key[r.partition].append(r)
    due = []
    for b in batches:
        if b.state != "waiting" or not b.next_layer or b.attempts >= max_attempts:
            continue
        mine = by_key.get(b.key, [])
        if any(r.status in IN_FLIGHT for r in mine):
            continue
        failures = _attempts(mine)
        if failures and now < _backoff_due(failures, base_seconds):
            continue
        due.append(b)
    return sorted(due, key=lambda b: b.since)


def summarize(batches: list[Batch], runs: list[RunFact], now: float) -> dict:
    counts = dict.fromkeys(STATES, 0)
    for b in batches:
        counts[b.state] += 1
    open_since = [b.since for b in batches if b.state in ("waiting", "running", "failed")]
    return {"counts": counts,
            "oldest_unhandled_age_s": max(0.0, now - min(open_since)) if open_since else None,
            "queue_depth": sum(r.status in QUEUED for r in runs),
            "in_flight": sum(r.status in IN_FLIGHT for r in runs),
            "failed": [{"file": b.file, "key": b.key, "attempts": b.attempts, "reason": b.reason}
                       for b in batches if b.state == "failed"]}


def age(seconds: float) -> str:
    s = max(0, int(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def render_table(batches: list[Batch], now: float, width: int = 120) -> str:
    """The batches most in need of a person first (failed, running, waiting ...), each state oldest first."""
    rows = sorted(batches, key=lambda b: (ATTENTION[b.state], b.since, b.file, b.key))
    fw = min(40, max([4] + [len(b.file) for b in rows]))
    kw = min(40, max([3] + [len(b.key) for b in rows]))
    head = f"{'state':<11} {'file':<{fw}} {'key':<{kw}} {'age':>5} {'tries':>5}  "
    room = max(20, width - len(head))

    def cut(text: str, n: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= n else text[:n - 1] + "…"

    lines = [head + "reason"]
    lines += [f"{b.state:<11} {cut(b.file or '-', fw):<{fw}} {cut(b.key, kw):<{kw}} {age(now - b.since):>5} "
              f"{b.attempts:>5}  {cut(b.reason, room)}" for b in rows]
    return "\n".join(lines)
