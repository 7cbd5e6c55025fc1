"""A real DynamoDB-API server for the prediction store tests: dynalite (npm, Apache-2.0; LevelDB on disk), on a
free loopback port. DynamoDB Local cannot be used here (its licence is the vendor's own terms, not an open-source
one), so the store is tested against dynalite through the same boto3 client that talks to AWS."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, _no_service_in_fast_run, free_port
from services import _wait

from ml_platform.local.supervisor import stop_pid

CLI = ROOT / "node" / "dynalite" / "node_modules" / "dynalite" / "cli.js"


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Dynalite:
    """dynalite with its data under `home`; restartable on the same port and data (the store-down test)."""

    def __init__(self, home: Path):
        if not CLI.exists():
            raise RuntimeError(f"{CLI} is missing: run `make dynalite` (npm ci in node/dynalite)")
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.log = home, home / "dynalite.log"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["node", str(CLI), "--host", "127.0.0.1", "--port", str(self.port), "--path", str(self.home / "data"),
             "--createTableMs", "0", "--deleteTableMs", "0"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _listening(self.port), self.proc, self.log, "dynalite", 30)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None

    def store(self, table: str, **kw):
        from ml_platform.serve.store import PredictionStore

        s = PredictionStore(table, self.endpoint, "us-east-1", **kw)
        s.ensure_table()
        return s

    def env(self, table: str) -> dict[str, str]:
        """What a writer process needs to use this server (no AWS keys: the store gives loopback dummy ones)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        return env | {"ML_PLATFORM_STORE_ENDPOINT": self.endpoint, "ML_PLATFORM_STORE_TABLE": table,
                      "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def dynalite(request, tmp_path_factory):
    _no_service_in_fast_run(request, "dynalite")
    server = Dynalite(tmp_path_factory.mktemp("dynalite"))
    yield server
    server.stop()
