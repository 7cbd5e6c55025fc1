"""What a landing-zone sensor should do with a listing, as a pure function (no Dagster, no I/O of its own).

(cursor, listing, known partitions, clock, header reader) -> (new cursor, new batches, rejected files, waiting).

- A file is new when its name's partition key is not a known partition, whatever its time: on HDFS a rename keeps
  the old modification time, so a file moved in after a later one was handled would be missed by a time cursor.
  Known names cost one set lookup each and no store call, so a landing zone of 10,000 files stays cheap.
- A file younger than `settle_seconds`, or with a temporary name, may still be written: it waits.
- New files are handled in (arrival, name) order, at most `max_new` per tick, so a backlog drains over a few ticks.
- The cursor keeps only what the partitions cannot: the latest arrival handled, so a known name that lands again
  later (a correction under the same name) is skipped and said so, once; and the rejected files still in the
  landing zone (their quarantine move failed), so they are not re-read and re-reported every tick until they change.
  A lost cursor loses nothing: known partitions still prevent ingesting or quarantining a file twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from ml_platform.data.ingest import RejectedFile, check_header
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import FileInfo

TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "._COPYING_", ".inprogress")
SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_temporary(name: str) -> bool:
    """Hidden or partial-upload names; a name with '..' is never 'temporary': it is rejected instead."""
    return ".." not in name and (name.startswith((".", "_", "~")) or name.endswith(TEMP_SUFFIXES))


def partition_key(name: str) -> str:
    """A stable Dagster partition key for a file name: ASCII letters, digits, '.', '_' and '-'.

    A name that had to change gets a short hash of the original, so 'bätch 1.csv' and 'batch_1.csv'
    cannot collide."""
    stem = name[:-4] if name.lower().endswith(".csv") else name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    key = SAFE.sub("_", ascii_stem).strip("._-") or "batch"
    if key != stem:
        key = f"{key}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"
    return key


@dataclass(frozen=True)
class Cursor:
    seen_ns: int = -1  # latest arrival handled
    held: dict[str, tuple[int, int]] = field(default_factory=dict)  # rejected, still landed: name -> (size, mtime)

    @staticmethod
    def parse(text: str | None) -> Cursor:
        if not text:
            return Cursor()
        try:
            d = json.loads(text)
            if "arrival_ns" in d:  # the time cursor before names decided: {"arrival_ns": ..., "name": ...}
                return Cursor(int(d["arrival_ns"]))
            return Cursor(int(d["seen_ns"]), {str(k): (int(v[0]), int(v[1])) for k, v in d.get("held", {}).items()})
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return Cursor()  # an unreadable cursor: start over; known partitions prevent re-ingestion

    def dump(self) -> str:
        return json.dumps({"v": 2, "seen_ns": self.seen_ns, "held": {k: list(v) for k, v in self.held.items()}})


@dataclass
class LandingPlan:
    cursor: Cursor
    new: list[tuple[str, FileInfo]] = field(default_factory=list)  # (partition key, file)
    rejected: list[tuple[FileInfo, str]] = field(default_factory=list)  # (file, reason)
    waiting: list[str] = field(default_factory=list)
    already_ingested: list[str] = field(default_factory=list)  # known partitions: skipped, never re-ingested
    backlog: int = 0  # settled files left for later ticks by max_new


def rejection_for_name(name: str) -> str | None:
    if ".." in name:
        return "file name contains '..'"
    if not name.lower().endswith(".csv"):
        return "not a .csv file"
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        return "file name contains control characters"
    return None


def plan_landing(spec: DatasetSpec, cursor: Cursor, listing: list[FileInfo], known_keys: set[str], now_ns: int,
                 read_head: Callable[[str], bytes], settle_seconds: float = 5.0, max_new: int = 50) -> LandingPlan:
    plan = LandingPlan(cursor=cursor)
    settle_ns = int(settle_seconds * 1e9)
    seen, held = cursor.seen_ns, {}
    relanded: list[FileInfo] = []
    candidates: list[tuple[FileInfo, str]] = []
    for f in listing:  # one pass of set and dict lookups; only files that are not known go on
        key = partition_key(f.name)
        if key in known_keys:
            if f.mtime_ns > cursor.seen_ns:  # handled before, and landed again since (or the cursor was reset)
                relanded.append(f)
            continue
        if cursor.held.get(f.name) == (f.size, f.mtime_ns):  # rejected already, its quarantine move failed
            held[f.name] = (f.size, f.mtime_ns)
            continue
        candidates.append((f, key))
    for f in sorted(relanded, key=lambda f: (f.mtime_ns, f.name)):
        plan.already_ingested.append(f.name)
        seen = max(seen, f.mtime_ns)
    keys_this_tick: dict[str, str] = {}
    for f, key in sorted(candidates, key=lambda c: (c[0].mtime_ns, c[0].name)):
        if is_temporary(f.name) or now_ns - f.mtime_ns < settle_ns:
            plan.waiting.append(f.name)
            continue
        if len(plan.new) + len(plan.rejected) >= max_new:
            plan.backlog += 1
            continue
        seen = max(seen, f.mtime_ns)
        reason = rejection_for_name(f.name)
        if reason is None and key in keys_this_tick:
            reason = f"its key {key!r} collides with {keys_this_tick[key]!r}"
        if reason is None:
            try:
                check_header(read_head(f.name), spec, f.size)
            except RejectedFile as e:
                reason = str(e)
            except OSError as e:
                reason = f"unreadable: {e.strerror or e}"
        if reason:
            plan.rejected.append((f, reason))
            held[f.name] = (f.size, f.mtime_ns)
        else:
            keys_this_tick[key] = f.name
            plan.new.append((key, f))
    plan.cursor = Cursor(seen, held)
    return plan
