"""What a landing-zone sensor should do with a listing, as a pure function (no Dagster, no I/O of its own).

(cursor, listing, known partitions, clock, header reader) -> (new cursor, new batches, rejected files, waiting).

- A file counts as arrived at max(mtime, ctime), so a file moved in with an old mtime is still new.
- A file younger than `settle_seconds`, or with a temporary name, may still be written: it waits.
- The cursor is the (arrival, name) of the last file handled; files at or before it were handled already.
  The set of known partitions is the second guard, so a reset cursor never ingests or quarantines a file
  twice. A corrected file must land under a new name: a known name is skipped (and said so).
- At most `max_new` files are handled per tick, so a backlog of thousands drains over a few ticks.
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
from ml_platform.stores import FileInfo

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
    arrival_ns: int = -1
    name: str = ""

    @staticmethod
    def parse(text: str | None) -> Cursor:
        if not text:
            return Cursor()
        try:
            d = json.loads(text)
            return Cursor(int(d["arrival_ns"]), str(d["name"]))
        except (ValueError, KeyError, TypeError):
            return Cursor()  # an unreadable cursor: start over; known partitions prevent re-ingestion

    def dump(self) -> str:
        return json.dumps({"arrival_ns": self.arrival_ns, "name": self.name})


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
    keys_this_tick: dict[str, str] = {}
    for f in sorted(listing, key=lambda f: (f.mtime_ns, f.name)):
        if (f.mtime_ns, f.name) <= (cursor.arrival_ns, cursor.name):
            continue
        if is_temporary(f.name) or now_ns - f.mtime_ns < settle_ns:
            plan.waiting.append(f.name)
            continue
        if len(plan.new) + len(plan.rejected) >= max_new:
            plan.backlog += 1
            continue
        plan.cursor = Cursor(f.mtime_ns, f.name)
        key = partition_key(f.name)
        if key in known_keys:  # handled before (the cursor was reset, or the same name landed again)
            plan.already_ingested.append(f.name)
            continue
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
        else:
            keys_this_tick[key] = f.name
            plan.new.append((key, f))
    return plan
