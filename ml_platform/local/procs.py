"""Processes and ports of `make run`, read from /proc (Linux): who is alive, a process's whole tree, stopping one
with its children, and the supervisor adopting what its services leave behind."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_taken(port: int) -> bool:
    return not port_free(port)


def _read_pid(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    """Running (a zombie, exited but not yet reaped, is not)."""
    if not pid:
        return False
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _table() -> dict[int, list[str]]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(d.name)
            if st is not None:
                out[int(d.name)] = st
    return out


def descendants(pid: int) -> list[int]:
    """All live descendants of pid, from /proc (children that started their own sessions included)."""
    children: dict[int, list[int]] = {}
    for p, st in _table().items():
        try:
            children.setdefault(int(st[1]), []).append(p)
        except (IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def session_members(sid: int) -> list[int]:
    """Live processes of a session: what a service started with start_new_session leaves behind when it dies
    (its children are reparented, but keep its session unless they started their own)."""
    return [p for p, st in _table().items() if len(st) > 3 and st[3] == str(sid) and st[0] != "Z"]


def stop_pid(pid: int, grace: float = 15.0) -> None:
    """SIGTERM a process and every descendant, then SIGKILL whatever is left after `grace` seconds."""
    stop_pids([pid], grace)


def stop_pids(pids: list[int], grace: float = 15.0) -> None:
    """stop_pid for several processes at once: one grace period for all of them."""
    tree = [t for p in pids for t in [p] + descendants(p)]
    for p in tree:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        for p in pids:
            _reap(p)
        time.sleep(0.2)
    for p in tree + [d for root in pids for d in descendants(root)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in pids:
        _reap(p)


def become_subreaper() -> bool:
    """Make orphaned descendants (a killed service's children) this process's children rather than init's, so
    the supervisor still finds them, and stops them, when it stops. False where prctl is not available."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_adopted(own: set[int]) -> None:
    """Collect adopted orphans that have exited (zombies), leaving alone the children subprocess.Popen waits
    for itself (`own`): reaping those here would lose their exit codes."""
    me = str(os.getpid())
    for p, st in _table().items():
        if len(st) > 1 and st[1] == me and st[0] == "Z" and p not in own:
            _reap(p)
