"""The real `make run` stack for the tests that need all of it: `ml-platform up` on free loopback ports (Kafka,
MLflow, Dagster webserver and daemon, dynalite, the API with its web app, one dataset's store writer and scorer) with
a user's spec `cars` (used_cars's columns, one cheap algorithm; no simulator). One per session (conftest's
`local_stack`): the browser tests drive it, then tests/test_up.py restarts and finally stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import ROOT, free_port

from ml_platform.local.procs import _stat, descendants, port_free

MAX_UPLOAD_MB = 2  # the API's upload limit in this stack: the size-cap rejection needs no large file


def _two_free_ports() -> int:
    """A port whose next one is free too (the KRaft controller's)."""
    while not port_free((port := free_port()) + 1):
        pass
    return port


def _term_with_parent() -> None:
    """In the child: SIGTERM when pytest dies (killed by a CI timeout, its fixtures' clean-up never runs), so the
    supervisor still stops its stack."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _identity(pid: int) -> tuple[int, str] | None:
    st = _stat(pid)
    return (pid, st[19]) if st and len(st) > 19 else None  # start time: a reused pid is another process


class Up:
    def __init__(self, tmp: Path):
        self.home, specs = tmp / "home", tmp / "specs"
        specs.mkdir()
        # a user's dataset (no simulator, no producer): used_cars's columns, one cheap algorithm
        spec = yaml.safe_load((ROOT / "ml_platform/specs/used_cars.yaml").read_text())
        spec["name"] = "cars"
        spec["algorithms"] = {"linear": {"grid": {"regParam": [0.1], "elasticNetParam": [0.0]}}}
        (specs / "cars.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        kafka = _two_free_ports()
        self.ports = {"kafka": kafka, "controller": kafka + 1, "mlflow": free_port(), "dagster": free_port(),
                      "api": free_port(), "store": free_port(), "scorer": free_port()}
        self.out = tmp / "up.out"
        cmd = [str(Path(sys.executable).parent / "ml-platform"), "up", "--home", str(self.home),
               "--jars", str(ROOT / ".jars"), "--kafka-port", str(kafka), "--mlflow-port", str(self.ports["mlflow"]),
               "--dagster-port", str(self.ports["dagster"]), "--api-port", str(self.ports["api"]),
               "--store-port", str(self.ports["store"]), "--datasets", "cars", "--sensor-interval", "2"]
        env = os.environ | {"ML_PLATFORM_SPECS": str(specs), "ML_PLATFORM_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
                            "ML_PLATFORM_SCORER_METRICS_PORT": str(self.ports["scorer"])}
        env.pop("ML_PLATFORM_HOME", None)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.out, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_term_with_parent)
        self.seen: set[tuple[int, str]] = set()  # every process of the stack ever seen: (pid, start time)

    def doc(self) -> dict:
        try:
            doc = json.loads((self.home / "stack.json").read_text())
        except (OSError, ValueError):
            return {}
        self.record(doc)
        return doc

    def record(self, doc: dict) -> None:
        pids = [self.proc.pid] + descendants(self.proc.pid)
        pids += [s["pid"] for s in doc.get("services", {}).values() if s.get("pid")]
        pids += [d for s in doc.get("services", {}).values() if s.get("pid") for d in descendants(s["pid"])]
        self.seen.update(i for i in map(_identity, pids) if i)

    def wait(self, cond, seconds: float, what: str):
        deadline = time.monotonic() + seconds
        while True:
            doc = self.doc()
            if doc and cond(doc["services"]):
                return doc
            if self.proc.poll() is not None or time.monotonic() > deadline:
                state = "runs" if self.proc.poll() is None else f"exited {self.proc.returncode}"
                raise AssertionError(f"{what}: not within {seconds:.0f} s (ml-platform up {state})\n"
                                     f"{self.output()[-3000:]}\n{json.dumps(doc, indent=1)}")
            time.sleep(1)

    def output(self) -> str:
        return self.out.read_text(errors="replace")


def _all_running(services: dict) -> bool:
    return bool(services) and all(s["state"] == "running" for s in services.values())


def all_running(services: dict) -> bool:
    return bool(services) and all(s["state"] == "running" for s in services.values())


def api_key(stack: Up) -> str:
    return (stack.home / "api-key").read_text().strip()
