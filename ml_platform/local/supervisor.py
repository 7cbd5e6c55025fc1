"""`make run`: the single-machine version of the production stack, started and stopped as one command.

Kafka (KRaft, from the Maven jars), an MLflow tracking server, the Dagster webserver and daemon, the prediction
store, the REST API, and per dataset the store writer, the scorer and (for the shipped examples) the simulator.
All state lives under one folder (ML_PLATFORM_HOME, default .local/), so a second run resumes. Services are
started in their own sessions and stopped by pid, children included.

A service that fails to start stops the whole stack (a setup error should be loud, not retried). Once the stack
is up, a service that dies is restarted with backoff (restarts.py says when, and when it is given up on), and
<home>/stack.json says what runs where: pids, states, restart counts, last exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# the names tests, benchmarks and the CLI import from here, from before this module was split
from ml_platform.local.prepare import (  # noqa: F401
    MLFLOW_SERVER_ENV,
    StackError,
    api_key_file,
    dagster_home,
    dynalite_command,
    kafka_properties,
    prepare_kafka,
    prepare_specs,
)
from ml_platform.local.procs import (
    LOOPBACK,
    _alive,
    _read_pid,
    become_subreaper,
    descendants,
    port_free,
    reap_adopted,
    session_members,
    stop_pid,
    stop_pids,
)
from ml_platform.local.restarts import Supervision
from ml_platform.local.services import Service, StackConfig, build_services, dagster_daemon_ok, http_ok, kafka_ok  # noqa: F401
from ml_platform.serve.status import iso


def check_ports(wanted: dict[str, int], pid_dir: Path) -> None:
    """Fail before starting anything if a port is taken, saying by whom when it is our own leftover."""
    taken = [f"port {port} ({what}) is already in use on {LOOPBACK}" for what, port in wanted.items()
             if not port_free(port)]
    if not taken:
        return
    leftovers = [p.stem for p in pid_dir.glob("*.pid") if _alive(_read_pid(p))] if pid_dir.exists() else []
    if leftovers:
        hint = f"an earlier `make run` still has {sorted(leftovers)} running: stop it with `ml-platform down`"
    else:
        hint = "stop whatever holds it, or choose other ports (`ml-platform up --help`)"
    raise StackError("\n".join(taken + [hint]))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code (stopped for not becoming healthy)"
    if code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"code {code}"
    return f"code {code}"


class Stack:
    def __init__(self, cfg: StackConfig, out=sys.stdout):
        self.cfg, self.out = cfg, out
        self.pid_dir = cfg.home / "pids"
        self.log_dir = cfg.home / "logs"
        self.status_path = cfg.home / "stack.json"
        self.services: list[Service] = []
        self.sup: dict[str, Supervision] = {}
        self.started_at = time.time()
        self.adopting = False  # up() made this process the subreaper of what services leave behind
        self.kept: list[int] = []  # sessions of dead instances whose children were left to finish (keep_orphans)
        self.waiting: set[str] = set()  # restarts held back because the port is still taken

    def say(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def start(self) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # every dataset of <home>/specs: those asked for, and those created in the web app (each gets its scorer and
        # store writer from the next start on)
        _, self.cfg.datasets = prepare_specs(self.cfg.home, self.cfg.specs, self.cfg.datasets)
        check_ports(self.cfg.ports(), self.pid_dir)
        (self.pid_dir / "supervisor.pid").write_text(str(os.getpid()))
        self.services = build_services(self.cfg)
        self.sup = {s.name: Supervision() for s in self.services}
        self.write_status()
        for svc in self.services:
            self._launch(svc)
            self._wait_healthy(svc)
        self.say(self.table())

    def _launch(self, svc: Service) -> None:
        log_path = self.log_dir / f"{svc.name}.log"
        self.say(f"starting {svc.name} (log: {log_path})")
        with open(log_path, "ab") as log:  # the child keeps its own descriptor
            svc.proc = subprocess.Popen(svc.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=os.environ | svc.env, cwd=self.cfg.repo, start_new_session=True)
        (self.pid_dir / f"{svc.name}.pid").write_text(str(svc.proc.pid))
        self.sup[svc.name].launched(time.monotonic())
        self.write_status()

    def _wait_healthy(self, svc: Service) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise StackError(f"{svc.name} exited with code {svc.proc.returncode} while starting:\n"
                                 + self.tail(svc.name))
            if svc.healthy():
                self.say(f"  {svc.name} is healthy")
                self.sup[svc.name].healthy(time.monotonic())
                self.write_status()
                return
            time.sleep(1.0)
        raise StackError(f"{svc.name} was not healthy after {self.cfg.startup_timeout:.0f}s:\n" + self.tail(svc.name))

    def tail(self, name: str, lines: int = 20) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- supervision ----------------------------------------------------------------------------------------------

    def watch(self, tick: float = 1.0) -> int:
        """Keep the services running until Ctrl-C or SIGTERM; returns 1 only if every service has been given up."""
        while True:
            self.check()
            if self.sup and all(s.state == "failed" for s in self.sup.values()):
                self.say("every service has failed: stopping")
                return 1
            time.sleep(tick)

    def check(self) -> None:
        """One round: notice deaths, start what is due, promote what became healthy."""
        now, changed = time.monotonic(), False
        for svc in self.services:
            s = self.sup[svc.name]
            if s.state in ("starting", "running"):
                code = svc.proc.poll()
                if code is not None:
                    self._died(svc, code)
                    changed = True
                elif s.state == "starting":
                    if svc.healthy():
                        s.healthy(now)
                        self.say(f"  {svc.name} is healthy again (restart {s.restarts})")
                        changed = True
                    elif now - s.launched_at > self.cfg.startup_timeout:
                        stop_pid(svc.proc.pid, grace=5)
                        svc.proc.poll()
                        self._died(svc, None)
                        changed = True
                else:
                    s.tick(now, self.cfg.restart)
            elif s.state == "restarting" and now >= s.due:
                if svc.port is not None and not port_free(svc.port):
                    if svc.name not in self.waiting:
                        self.waiting.add(svc.name)
                        self.say(f"{svc.name}: waiting for port {svc.port} to be free before restarting it")
                else:
                    self.waiting.discard(svc.name)
                    s.restarted(now, time.time())
                    self._note(svc, f"restarted by the supervisor after {describe_exit(s.last_exit)}")
                    self._launch(svc)
                    changed = True
        if self.adopting:
            reap_adopted({svc.proc.pid for svc in self.services if svc.proc})
        if changed:
            self.write_status()

    def _died(self, svc: Service, code: int | None) -> None:
        s, policy = self.sup[svc.name], self.cfg.restart
        if svc.keep_orphans:
            self.kept.append(svc.proc.pid)
        else:  # e.g. MLflow's uvicorn worker, which would keep the port
            left = session_members(svc.proc.pid)
            if left:
                stop_pids(left, grace=5)
        tail = " | ".join(line.strip() for line in self.tail(svc.name, 3).splitlines() if line.strip())[-400:]
        delay = s.died(code, time.monotonic(), policy)
        if delay is None:
            self.say(f"{svc.name} exited with {describe_exit(code)}; giving up on it after {policy.limit} restarts "
                     f"in {policy.window:g} s (state failed; the rest keep running); log tail: {tail}")
        else:
            self.say(f"{svc.name} exited with {describe_exit(code)}; restarting in {delay:g} s "
                     f"(restarts so far: {s.restarts}); log tail: {tail}")
        (self.pid_dir / f"{svc.name}.pid").unlink(missing_ok=True)

    def _note(self, svc: Service, msg: str) -> None:
        """A line in the service's own log, so whoever reads it sees where one life ends and the next begins."""
        try:
            with open(self.log_dir / f"{svc.name}.log", "a") as f:
                f.write(f"\n--- {iso(time.time())} {msg} ---\n")
        except OSError:
            pass

    # -- status ---------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        services = {}
        for svc in self.services:
            s = self.sup[svc.name]
            alive = svc.proc is not None and s.state in ("starting", "running")
            services[svc.name] = {
                "pid": svc.proc.pid if alive else None, "state": s.state, "restarts": s.restarts,
                "last_exit": s.last_exit, "last_restart_at": iso(s.last_restart_at) if s.last_restart_at else None,
                "url": svc.url, "log": str(self.log_dir.resolve() / f"{svc.name}.log")}
        return {"supervisor_pid": os.getpid(), "started_at": iso(self.started_at), "updated_at": iso(time.time()),
                "services": services}

    def write_status(self) -> None:
        """<home>/stack.json, replaced atomically: `ml-platform doctor` and the tests read it while it changes."""
        tmp = self.status_path.with_name(f".{self.status_path.name}.tmp")
        tmp.write_text(json.dumps(self.status(), indent=1))
        tmp.replace(self.status_path)

    def status_table(self) -> str:
        return status_table(self.status())

    def table(self) -> str:
        web = f"http://{LOOPBACK}:{self.cfg.api_port}/app/"
        return "\n".join(["", "ml-platform stack is up:", self.status_table(),
                          f"  web app: {web} (log in with the API key in {api_key_file(self.cfg.home)})",
                          f"  state folder: {self.cfg.home.resolve()} (status: {self.status_path.resolve()})",
                          "Ctrl-C stops everything.", ""])

    # -- stop -----------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        for svc in reversed(self.services):
            if svc.proc is not None and svc.proc.poll() is None:
                self.say(f"stopping {svc.name} (pid {svc.proc.pid})")
                stop_pid(svc.proc.pid)
            if svc.proc is not None:
                left = session_members(svc.proc.pid)  # a dead instance's children that were left running
                if left:
                    stop_pids(left, grace=5)
            (self.pid_dir / f"{svc.name}.pid").unlink(missing_ok=True)
            self.sup[svc.name].state = "stopped"
        left = [p for sid in self.kept for p in session_members(sid)]
        if left:
            self.say(f"stopping {len(left)} process(es) dead services left to finish their work")
            stop_pids(left, grace=5)
        if self.adopting:  # what escaped its session too: a subreaper's descendants are all the stack's
            reap_adopted(set())
            left = [p for p in descendants(os.getpid()) if _alive(p)]
            if left:
                self.say(f"stopping {len(left)} other leftover process(es)")
                stop_pids(left, grace=5)
        if self.services:
            self.write_status()
        (self.pid_dir / "supervisor.pid").unlink(missing_ok=True)


def status_table(status: dict) -> str:
    """stack.json as a table: one line per service with its state, pid, restarts and last exit code."""
    rows = [f"  {'service':<22} {'state':<11} {'pid':>7} {'restarts':>8} {'last exit':>9}  where"]
    for name, s in status.get("services", {}).items():
        last = "" if s.get("last_exit") is None else str(s["last_exit"])
        rows.append(f"  {name:<22} {s.get('state', '?'):<11} {s.get('pid') or '':>7} {s.get('restarts', 0):>8} "
                    f"{last:>9}  {s.get('url', '')}")
    return "\n".join(rows)


def status(home: Path, out=sys.stdout) -> int:
    """`ml-platform status`: the running stack's table from <home>/stack.json. 0 when the supervisor is alive and
    every service is running, 1 otherwise (stopped, starting, restarting or failed services)."""
    path = home / "stack.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no {path}: `make run` has not been started with this state folder", file=out)
        return 1
    except (OSError, ValueError) as e:
        print(f"{path} is unreadable: {e}", file=out)
        return 1
    pid = data.get("supervisor_pid")
    live = _alive(pid)
    states = [s.get("state") for s in data.get("services", {}).values()]
    head = (f"supervisor pid {pid}, up since {data.get('started_at')}" if live else
            f"supervisor pid {pid} is not running (last update {data.get('updated_at')})"
            + ("" if all(st == "stopped" for st in states) else ": stop what it left with `ml-platform down`"))
    print(head + "\n" + status_table(data), file=out)
    return 0 if live and states and all(st == "running" for st in states) else 1


def down(home: Path, out=sys.stdout) -> int:
    """Stop whatever an earlier, interrupted `make run` left behind, by the pids it recorded."""
    stopped = 0
    pid_files = sorted((home / "pids").glob("*.pid"), key=lambda p: p.stem != "supervisor")  # supervisor first
    for p in pid_files:
        pid = _read_pid(p)
        if _alive(pid):
            print(f"stopping {p.stem} (pid {pid})", file=out)
            stop_pid(pid)
            stopped += 1
        p.unlink(missing_ok=True)
    print(f"stopped {stopped} service(s)", file=out)
    return 0


def up(cfg: StackConfig) -> int:
    stack = Stack(cfg)
    stack.adopting = become_subreaper()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack.start()
        return stack.watch()
    except StackError as e:
        stack.say(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        stack.say("\ninterrupted")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C or kill must not abandon the clean-up
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()
