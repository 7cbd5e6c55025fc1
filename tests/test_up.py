"""`make run`'s supervisor: a dead service is restarted with backoff, counted in <home>/stack.json and logged, and
stopping the stack leaves no process and no port behind.

The restart bookkeeping and one supervision round are tested on `sleep` processes; then the real
`ml-platform up` runs once for the module (Kafka, MLflow, Dagster, dynalite, the API, one dataset's store writer
and scorer; a user's spec, so no simulator), on free loopback ports."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT
from local_stack import _identity, all_running

from ml_platform.local.procs import _alive, descendants, port_free, stop_pid
from ml_platform.local.restarts import RestartPolicy, Supervision
from ml_platform.local.services import Service, StackConfig
from ml_platform.local.supervisor import Stack, status, status_table

KEYS = {"pid", "state", "restarts", "last_exit", "last_restart_at", "url", "log"}


# -- the policy, without processes ------------------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_spell():
    policy = RestartPolicy(first_delay=1, max_delay=60, healthy_reset=120, limit=100, window=600)
    s, now, delays = Supervision(), 0.0, []
    for _ in range(8):
        delays.append(s.died(-9, now, policy))
        s.restarted(now, now)
        now += 1
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    s.healthy(now)
    s.tick(now + 119, policy)
    assert s.died(1, now + 119, policy) == 60  # not healthy long enough: still backing off
    s.restarted(now + 119, now)
    s.healthy(now + 120)
    s.tick(now + 240, policy)
    assert s.died(1, now + 240, policy) == 1
    assert s.restarts == 9 and s.last_exit == 1 and s.state == "restarting"


def test_too_many_restarts_within_the_window_give_the_service_up():
    policy = RestartPolicy(limit=3, window=600)
    s = Supervision()
    for t in (0, 10, 20):
        assert s.died(-9, t, policy) is not None
        s.restarted(t, t)
    assert s.died(-9, 30, policy) is None
    assert s.state == "failed" and s.restarts == 3
    # the same deaths spread wider than the window are restarted
    s = Supervision()
    for t in (0, 400, 800, 1200):
        assert s.died(-9, t, policy) is not None
        s.restarted(t, t)


# -- one supervision round on real (tiny) processes -------------------------------------------------------------------

def _sleeper_stack(tmp_path, **policy) -> tuple[Stack, io.StringIO]:
    out = io.StringIO()
    cfg = StackConfig(home=tmp_path, repo=tmp_path, jars=tmp_path, datasets=(), restart=RestartPolicy(**policy))
    stack = Stack(cfg, out=out)
    for d in (stack.pid_dir, stack.log_dir):
        d.mkdir(parents=True)
    stack.services = [Service("sleeper", ["bash", "-c", "echo hello from the sleeper; exec sleep 60"], None,
                              "(nothing)", lambda: True)]
    stack.sup = {"sleeper": Supervision()}
    stack._launch(stack.services[0])
    return stack, out


def _until(cond, seconds: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + seconds
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:.0f} s")
        time.sleep(every)
    return got


def test_a_killed_service_is_restarted_counted_logged_and_given_up(tmp_path):
    stack, out = _sleeper_stack(tmp_path, first_delay=0.2, limit=1, window=600)
    try:
        stack.check()
        first = stack.services[0].proc.pid
        doc = json.loads((tmp_path / "stack.json").read_text())
        assert doc["supervisor_pid"] == os.getpid() and set(doc["services"]["sleeper"]) == KEYS
        assert doc["services"]["sleeper"]["state"] == "running" and doc["services"]["sleeper"]["pid"] == first

        _until(lambda: "hello" in (tmp_path / "logs" / "sleeper.log").read_text(), 10, "the sleeper's log line")
        os.kill(first, signal.SIGKILL)
        _until(lambda: stack.check() or stack.sup["sleeper"].state == "restarting", 5, "death noticed")
        assert "sleeper exited with code -9 (SIGKILL); restarting in 0.2 s" in out.getvalue()
        assert "hello from the sleeper" in out.getvalue().splitlines()[-1]  # the log's tail, on the same line
        _until(lambda: stack.check() or stack.sup["sleeper"].state == "running", 5, "restarted")
        svc = json.loads((tmp_path / "stack.json").read_text())["services"]["sleeper"]
        assert svc["restarts"] == 1 and svc["last_exit"] == -9 and svc["last_restart_at"]
        assert svc["pid"] != first and _alive(svc["pid"])
        assert "restarted by the supervisor after code -9" in (tmp_path / "logs" / "sleeper.log").read_text()
        assert "sleeper" in status_table(json.loads((tmp_path / "stack.json").read_text()))

        os.kill(svc["pid"], signal.SIGTERM)  # the second death within the window: limit=1, given up
        _until(lambda: stack.check() or stack.sup["sleeper"].state == "failed", 5, "given up")
        assert "giving up on it after 1 restarts" in out.getvalue()
        assert json.loads((tmp_path / "stack.json").read_text())["services"]["sleeper"]["last_exit"] == -15
    finally:
        stack.stop()
    doc = json.loads((tmp_path / "stack.json").read_text())
    assert doc["services"]["sleeper"]["state"] == "stopped" and doc["services"]["sleeper"]["pid"] is None


def test_a_dead_service_s_children_are_stopped_before_it_restarts(tmp_path):
    """As MLflow's uvicorn worker would keep MLflow's port: what a killed service started goes with it."""
    stack, out = _sleeper_stack(tmp_path, first_delay=30)
    svc = stack.services[0]
    svc.cmd = ["bash", "-c", "sleep 60 & wait"]
    stop_pid(svc.proc.pid, grace=1)
    svc.proc.wait()
    stack._launch(svc)
    try:
        child = _until(lambda: descendants(svc.proc.pid), 5, "child started")[0]
        os.kill(svc.proc.pid, signal.SIGKILL)
        _until(lambda: stack.check() or stack.sup["sleeper"].state == "restarting", 5, "death noticed")
        assert not _alive(child)
    finally:
        stack.stop()


def test_status_reads_stack_json(tmp_path):
    assert status(tmp_path, out=io.StringIO()) == 1  # none yet
    doc = {"supervisor_pid": os.getpid(), "started_at": "x", "updated_at": "y",
           "services": {"api": {"pid": os.getpid(), "state": "running", "restarts": 2, "last_exit": -9,
                                "last_restart_at": "z", "url": "http://127.0.0.1:1/docs", "log": "l"}}}
    (tmp_path / "stack.json").write_text(json.dumps(doc))
    out = io.StringIO()
    assert status(tmp_path, out=out) == 0
    assert "api" in out.getvalue() and "running" in out.getvalue() and " 2 " in out.getvalue()
    doc["services"]["api"]["state"] = "failed"
    (tmp_path / "stack.json").write_text(json.dumps(doc))
    assert status(tmp_path, out=io.StringIO()) == 1


# -- the real `ml-platform up` ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def up(local_stack):
    """The session's real `ml-platform up` (tests/local_stack.py); the last test here stops it. conftest runs every
    test that uses the stack last, the browser tests (tests/test_browser_app.py) before these (name order)."""
    return local_stack


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_up_runs_every_service_and_says_so_in_stack_json(up):
    doc = up.doc()
    assert doc["supervisor_pid"] == up.proc.pid and doc["started_at"] and doc["updated_at"]
    assert {"kafka", "mlflow", "dagster-webserver", "dagster-daemon", "prediction-store", "api",
            "store-writer-cars", "scorer-cars"} == set(doc["services"])  # a user's dataset: no simulator
    for name, s in doc["services"].items():
        assert set(s) == KEYS, name
        assert _alive(s["pid"]) and s["restarts"] == 0 and s["last_exit"] is None, name
    assert "ml-platform stack is up:" in up.output() and "restarts" in up.output()
    assert _health(up.ports["api"])


def test_killed_services_are_restarted_counted_and_logged(up):
    before = up.doc()["services"]
    for name in ("api", "dagster-daemon"):
        os.kill(before[name]["pid"], signal.SIGKILL)
    doc = up.wait(lambda s: all_running(s) and s["api"]["restarts"] == 1 and s["dagster-daemon"]["restarts"] == 1,
                  180, "api and dagster-daemon restarted")
    for name in ("api", "dagster-daemon"):
        s = doc["services"][name]
        assert s["pid"] != before[name]["pid"] and _alive(s["pid"])
        assert s["last_exit"] == -9 and s["last_restart_at"]
        assert f"{name} exited with code -9 (SIGKILL); restarting in 1 s" in up.output()
        assert "restarted by the supervisor" in Path(s["log"]).read_text(errors="replace")
    assert all(s["restarts"] == 0 for n, s in doc["services"].items() if n not in ("api", "dagster-daemon"))
    assert _health(up.ports["api"])


def _runs(port: int) -> list[dict]:
    q = '{"query": "{ runsOrError { ... on Runs { results { runId status } } } }"}'
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=q.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)["data"]["runsOrError"]["results"]
    except (OSError, KeyError, TypeError, ValueError):
        return []


def test_a_run_in_flight_survives_its_daemon_being_killed(up, tmp_path):
    """The daemon's code server runs the run worker and outlives the daemon until its runs end (keep_orphans);
    the restarted daemon carries on with the sensors and the queue."""
    subprocess.run([str(Path(sys.executable).parent / "ml-platform"), "simulate", "used_cars", "--landing",
                    str(tmp_path), "--batches", "1", "--rows-per-batch", "300", "--quiet"], check=True, cwd=ROOT)
    landing = up.home / "data" / "landing" / "cars"
    landing.mkdir(parents=True, exist_ok=True)
    (batch,) = tmp_path.glob("*.csv")
    (landing / "batch-1.csv").write_bytes(batch.read_bytes())
    port = up.ports["dagster"]
    _until(lambda: any(r["status"] == "STARTED" for r in _runs(port)), 120, "a run started", every=0.5)
    daemon = up.doc()["services"]["dagster-daemon"]
    os.kill(daemon["pid"], signal.SIGKILL)
    up.wait(lambda s: s["dagster-daemon"]["state"] == "running" and s["dagster-daemon"]["pid"] != daemon["pid"],
            120, "dagster-daemon restarted")
    marker = up.home / "data" / "silver" / "cars" / "_accepted" / "batch-1.json"
    _until(lambda: up.doc() and marker.exists(), 600, f"{marker} written", every=1)  # ~1 min idle
    runs = _runs(port)
    assert not [r for r in runs if r["status"] == "FAILURE"], runs


def test_sigterm_stops_every_process_and_frees_every_port(up):
    up.doc()
    assert len(up.seen) >= 10  # the services, their JVMs and code servers
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=150) == 0, up.output()[-3000:]
    time.sleep(0.5)
    left = [pid for pid, start in up.seen if _identity(pid) == (pid, start) and _alive(pid)]
    assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left]
    taken = {what: port for what, port in up.ports.items() if not port_free(port)}
    assert not taken
    doc = json.loads((up.home / "stack.json").read_text())
    assert {s["state"] for s in doc["services"].values()} == {"stopped"}
    assert not list((up.home / "pids").glob("*.pid"))
