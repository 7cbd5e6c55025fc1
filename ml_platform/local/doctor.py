"""`ml-platform doctor`: is the local stack working, and if not, where to look. One line per check, OK, WARN or
FAIL, each naming what it saw and where to look next; any FAIL makes the command exit 1.

Reads only what the stack already keeps: `<home>/stack.json` (the supervisor's services), each service's health
URL, the Dagster webserver (daemons, the new-batch sensor's cursor and ticks, runs and partitions), the store
(landing zone, batch accounting), `<home>/scorer-<dataset>.json`, and the MLflow registry's `champion`."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import requests

from ml_platform.data.accounting import account, read_store_facts
from ml_platform.data.landing import Cursor, is_temporary, partition_key
from ml_platform.layout import landing_dir
from ml_platform.local import dagster_gql as gql

SETTLE_SECONDS = 5.0  # the new-batch sensor's settle time: a younger file is not due yet
SCORER_STALE_SECONDS = 120.0  # the scorer rewrites its status at least every 10 s while alive
OK_SERVICE, SLOW_SERVICE = {"running"}, {"starting", "restarting"}
URL = re.compile(r"https?://[^\s()]+")


@dataclass(frozen=True)
class Check:
    level: str  # OK, WARN or FAIL
    what: str
    where: str = ""


def render(checks: list[Check]) -> str:
    return "\n".join(f"{c.level:<4}  {c.what}" + (f"  [{c.where}]" if c.where else "") for c in checks)


def _epoch(value) -> float | None:
    if isinstance(value, int | float):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def services(home: Path, now: float) -> tuple[list[Check], dict]:
    """The supervisor and each service it runs, from stack.json. Returns the checks and the services table."""
    path = home / "stack.json"
    try:
        stack = json.loads(path.read_text())
    except FileNotFoundError:
        return [Check("WARN", "no stack.json: not started by make run", str(path))], {}
    except (OSError, ValueError) as e:
        return [Check("FAIL", f"stack.json is unreadable: {e}", str(path))], {}
    pid = stack.get("supervisor_pid")
    if not _alive(pid):
        return [Check("FAIL", f"supervisor pid {pid} is not running (stack.json last updated "
                              f"{stack.get('updated_at')}): the stack is down; start it with `make run`",
                      str(path))], {}
    out = [Check("OK", f"supervisor pid {pid} up since {stack.get('started_at')}", str(path))]
    table = stack.get("services") or {}
    for name, s in sorted(table.items()):
        state, restarts, log = s.get("state"), s.get("restarts") or 0, s.get("log") or str(path)
        last = f"last exit {s.get('last_exit')} at {s.get('last_restart_at')}" if restarts else ""
        if state in OK_SERVICE and not _alive(s.get("pid")):
            out.append(Check("FAIL", f"service {name}: state {state} but pid {s.get('pid')} is not running", log))
        elif state in OK_SERVICE:
            out.append(Check("WARN" if restarts else "OK", f"service {name} running (pid {s.get('pid')})"
                             + (f", restarted {restarts} time(s), {last}" if restarts else ""), log))
        elif state in SLOW_SERVICE:
            out.append(Check("WARN", f"service {name} is {state} (restarts {restarts}{', ' + last if last else ''})",
                             log))
        else:
            out.append(Check("FAIL", f"service {name} is {state} (restarts {restarts}{', ' + last if last else ''})",
                             log))
    return out, table


def health(table: dict) -> list[Check]:
    """Every running service's first http URL answers (any status below 500)."""
    out = []
    for name, s in sorted(table.items()):
        m = URL.search(str(s.get("url") or ""))
        if not m or s.get("state") not in OK_SERVICE:
            continue
        try:
            code = requests.get(m.group(0), timeout=3).status_code
        except requests.RequestException as e:
            out.append(Check("FAIL", f"{name}: {m.group(0)} does not answer: {type(e).__name__}", s.get("log", "")))
            continue
        out.append(Check("OK" if code < 500 else "FAIL", f"{name}: {m.group(0)} answers HTTP {code}", s.get("log", "")))
    return out


def dagster(url: str, home: Path) -> tuple[Check, bool]:
    """The webserver answers (the second value) and every daemon the instance requires is healthy."""
    logs = home / "logs"
    try:
        daemons = gql.daemon_health(url)
    except gql.DagsterError as e:
        return Check("FAIL", str(e), f"{logs / 'dagster-webserver.log'}"), False
    sick = [d for d in daemons if not d["healthy"]]
    if not sick:
        return Check("OK", f"Dagster at {url}: {len(daemons)} daemon(s) healthy", url), True
    why = "; ".join(f"{d['daemonType']}" + (f" ({d['lastHeartbeatErrors'][0]['message'][:200]})"
                                             if d.get("lastHeartbeatErrors") else "") for d in sick)
    return Check("FAIL", f"Dagster daemon not healthy: {why}", f"{logs / 'dagster-daemon.log'}"), True


def sensor(url: str, spec, store, known: set[str], quarantined: dict, now: float) -> list[Check]:
    """The new-batch sensor runs, ticks without error, and has picked up every settled landed file within two of
    its intervals."""
    name = f"{spec.name}_new_batch_sensor"
    info = gql.sensor_cursor(url, name)
    if info is None:
        return [Check("FAIL", f"sensor {name} is not defined in any code location", f"{url}/automation")]
    page = f"{url}/locations/{info.location}/sensors/{name}"
    out = []
    if info.status != "RUNNING":
        out.append(Check("FAIL", f"sensor {name} is {info.status}: no new batch is picked up; start it", page))
    if info.last_tick_error:
        out.append(Check("FAIL", f"sensor {name}'s last tick failed: {info.last_tick_error.strip()[:300]}", page))
    quiet = now - info.last_tick_at if info.last_tick_at else None
    if info.status == "RUNNING" and (quiet is None or quiet > max(2 * info.interval, 60)):
        out.append(Check("WARN", f"sensor {name} has not ticked for "
                                 f"{'ever' if quiet is None else f'{quiet:.0f}s'} (every {info.interval}s): "
                                 f"is the daemon running?", page))
    held = Cursor.parse(info.cursor).held
    due = now - SETTLE_SECONDS - 2 * info.interval
    missed = sorted(f.name for f in store.list_files(landing_dir(spec))
                    if f.mtime_ns / 1e9 < due and not is_temporary(f.name) and partition_key(f.name) not in known
                    and f.name not in held and f.name not in quarantined)
    if missed:
        out.append(Check("FAIL", f"{len(missed)} landed file(s) not picked up after 2 sensor intervals "
                                 f"({2 * info.interval}s): {missed[:5]}", page))
    if held:
        out.append(Check("WARN", f"{len(held)} rejected file(s) could not be moved to quarantine and stay in "
                                 f"{landing_dir(spec)}/: {sorted(held)[:5]}", page))
    if not out:
        out.append(Check("OK", f"sensor {name} running, every {info.interval}s, no landed file missed", page))
    return out


def batches(spec, facts, known: set[str], runs, now: float, stuck_minutes: float, max_attempts: int = 4
            ) -> list[Check]:
    bs = account(spec, facts, known, runs, now, max_attempts)
    where = f"ml-platform batches {spec.name}"
    failed = [b for b in bs if b.state == "failed"]
    stuck = sorted((b for b in bs if b.state in ("waiting", "running") and now - b.since > stuck_minutes * 60),
                   key=lambda b: b.since)
    out = []
    if failed:
        out.append(Check("FAIL", f"{spec.name}: {len(failed)} batch(es) failed for good: "
                                 + "; ".join(f"{b.file or b.key} ({b.attempts} runs: {b.reason[:120]})"
                                             for b in failed[:3]), where))
    if stuck:
        out.append(Check("FAIL", f"{spec.name}: {len(stuck)} batch(es) {'/'.join(sorted({b.state for b in stuck}))} "
                                 f"for over {stuck_minutes:g} min: "
                                 + "; ".join(f"{b.file or b.key} ({b.state}: {b.reason[:120]})" for b in stuck[:5]),
                         where))
    if not out:
        counts = {s: sum(b.state == s for b in bs) for s in ("accepted", "waiting", "running", "quarantined",
                                                             "superseded")}
        out.append(Check("OK", f"{spec.name}: {len(bs)} batch(es), none failed or stuck ("
                               + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")", where))
    return out


def scorer(home: Path, ds: str, now: float) -> list[Check]:
    path = home / f"scorer-{ds}.json"
    log = str(home / "logs" / f"scorer-{ds}.log")
    try:
        st = json.loads(path.read_text())
    except FileNotFoundError:
        return [Check("WARN", f"scorer {ds}: no status file (the scorer has not started)", str(path))]
    except (OSError, ValueError) as e:
        return [Check("FAIL", f"scorer {ds}: status file unreadable: {e}", str(path))]
    state, updated = st.get("state"), _epoch(st.get("updated_at"))
    if state == "failing":
        return [Check("FAIL", f"scorer {ds} is failing ({st.get('consecutive_failures')} in a row): "
                              f"{str(st.get('last_error'))[:300]}", log)]
    if updated is None or now - updated > SCORER_STALE_SECONDS:
        return [Check("WARN", f"scorer {ds}: status not updated since {st.get('updated_at')} (state {state}): "
                              f"is it alive?", log)]
    if state in ("serving", "waiting"):
        return [Check("OK", f"scorer {ds} {state}" + (f", model version {st['model_version']}"
                                                     if st.get("model_version") else ""), str(path))]
    return [Check("WARN", f"scorer {ds} is {state}", log)]


def champion(tracking_uri: str, ds: str) -> list[Check]:
    from ml_platform.train.registry import CHAMPION, CHECKS_TAG

    if tracking_uri.startswith(("http://", "https://")):  # the MLflow client retries for minutes on a dead server
        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=3).raise_for_status()
        except requests.RequestException as e:
            return [Check("FAIL", f"MLflow at {tracking_uri} unreachable: {type(e).__name__}", "logs/mlflow.log")]
    from ml_platform.train.registry import Tracker

    tracker = Tracker(tracking_uri)
    page = f"{tracking_uri.rstrip('/')}/#/models/{ds}"
    version = tracker.version_for(ds, CHAMPION)
    if version is None:
        return [Check("WARN", f"{ds}: no champion yet (a retrain promotes one once a batch is accepted)", page)]
    checks = tracker.version_tags(ds, version).get(CHECKS_TAG)
    if checks != "passed":
        return [Check("FAIL", f"{ds}: champion version {version} has checks {checks or 'not recorded'}: it should "
                              f"never serve; roll back with `ml-platform rollback {ds}`", page)]
    return [Check("OK", f"{ds}: champion is version {version}, checks passed", page)]


def run_doctor(home: Path, dagster_url: str, specs: list, store, tracking_uri: str, stuck_minutes: float,
               now: float | None = None, max_attempts: int = 4) -> list[Check]:
    now = time.time() if now is None else now
    out, table = services(home, now)
    out += health(table)
    check, up = dagster(dagster_url, home)
    out.append(check)
    for spec in specs:
        facts = read_store_facts(store, spec)
        if up:
            try:
                known = gql.known_partitions(dagster_url, spec)
                out += sensor(dagster_url, spec, store, known, facts.quarantined, now)
                runs = gql.runs_from_graphql(dagster_url, spec, settled=set(facts.accepted) | set(facts.superseded)
                                             | set(facts.not_accepted))
                out += batches(spec, facts, known, runs, now, stuck_minutes, max_attempts)
            except gql.DagsterError as e:
                out.append(Check("FAIL", f"{spec.name}: {e}", dagster_url))
        out += scorer(home, spec.name, now)
        out += champion(tracking_uri, spec.name)
    return out
