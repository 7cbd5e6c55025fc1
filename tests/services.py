"""Real storage services for the storage tests, on free loopback ports: MinIO (S3), Hadoop's MiniDFSCluster
(HDFS: a real namenode and datanode), and moto's server (the EMR API, which cannot run here)."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import requests
from conftest import ROOT, free_port

from ml_platform.local.supervisor import dagster_home, http_ok, stop_pid


def _wait(ok, proc: subprocess.Popen, log: Path, what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not ok():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited:\n" + log.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {seconds:.0f} s:\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(0.3)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Minio:
    """MinIO (built from the Go module proxy by `make tools`) with throwaway root credentials."""

    def __init__(self, home: Path):
        self.binary = ROOT / ".tools" / "minio"
        if not self.binary.exists():
            raise RuntimeError(f"{self.binary} is missing: run `make tools` (builds MinIO from the Go module proxy)")
        self.port, self.console = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.access_key, self.secret_key = "test-" + secrets.token_hex(4), secrets.token_hex(16)
        self.home, self.log = home, home / "minio.log"
        env = os.environ | {"MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key,
                            "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
        self.proc = subprocess.Popen(
            [str(self.binary), "server", str(home / "data"), "--address", f"127.0.0.1:{self.port}",
             "--console-address", f"127.0.0.1:{self.console}", "--quiet"],
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: _http_ok(f"{self.endpoint}/minio/health/live"), self.proc, self.log, "MinIO")

    def env(self) -> dict[str, str]:
        """What a process needs to use this server: credentials through the environment only."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def stop(self) -> None:
        stop_pid(self.proc.pid)


class MiniHdfs:
    """Hadoop's MiniDFSCluster (one namenode, one datanode) from the Maven jars in .jars/hdfs."""

    def __init__(self, home: Path):
        jars = ROOT / ".jars" / "hdfs"
        if not jars.is_dir():
            raise RuntimeError(f"{jars} is missing: run `make setup` (it copies the test jars)")
        self.rpc_port, self.http_port = free_port(), free_port()
        details, self.log = home / "details.json", home / "hdfs.log"
        loopback = ["-D", "dfs.datanode.address=127.0.0.1:0", "-D", "dfs.datanode.http.address=127.0.0.1:0",
                    "-D", "dfs.datanode.ipc.address=127.0.0.1:0", "-D", f"hadoop.tmp.dir={home / 'tmp'}",
                    "-D", "dfs.permissions.enabled=true"]
        self.proc = subprocess.Popen(
            ["java", "-Xmx768m", "-cp", f"{jars}/*", "org.apache.hadoop.test.MiniDFSClusterManager",
             "-nnport", str(self.rpc_port), "-httpport", str(self.http_port), "-datanodes", "1", "-format",
             "-writeDetails", str(details), *loopback],
            cwd=home, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: details.exists() and _http_ok(
            f"http://127.0.0.1:{self.http_port}/webhdfs/v1/?op=GETFILESTATUS&user.name=root"),
            self.proc, self.log, "MiniDFSCluster")
        self.root = f"hdfs://127.0.0.1:{self.rpc_port}"

    def stop(self) -> None:
        stop_pid(self.proc.pid)


class MotoServer:
    """moto's server mode: the EMR API (and EMR Serverless) on loopback. In-process (a thread), so the EMR
    emulation in tests can play the part of the cluster's nodes on the same backend."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


def post_form(url: str, fields: dict, body: bytes) -> int:
    """A browser-style multipart form POST, as a dataset owner's upload tool would send."""
    import urllib.error
    import urllib.request

    boundary = uuid.uuid4().hex
    buf = io.BytesIO()
    for k, v in fields.items():
        buf.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    buf.write(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.csv"\r\n'
              f"Content-Type: text/csv\r\n\r\n".encode() + body + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(url, data=buf.getvalue(), method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


from ml_platform.local.supervisor import MLFLOW_SERVER_ENV  # noqa: E402
from ml_platform.metadata_stores import mlflow_server_store  # noqa: E402


class Postgres:
    """A real PostgreSQL server (Debian's package; `make setup` installs it) in a throwaway cluster on a free
    loopback port. The server refuses to run as root, so it runs as the package's `postgres` user, in a folder of
    its own outside pytest's (those are private to root). Clients log in over TCP with a password (SCRAM)."""

    def __init__(self, databases: tuple[str, ...] = ()):
        import pwd
        import shutil
        import tempfile

        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            owner = None
        if not bins or owner is None:
            raise RuntimeError("PostgreSQL is missing: run `make setup` (Debian's postgresql package)")
        self.bin = bins[-1].parent
        self.home = Path(tempfile.mkdtemp(prefix="ml-platform-pg-"))
        shutil.chown(self.home, owner.pw_uid, owner.pw_gid)
        self.port, self.log = free_port(), self.home / "postgres.log"
        self.user, self.password = "platform", secrets.token_hex(12)
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.home / "data"), "-U", "postgres",
                           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.home / "data"), "-p", str(self.port), "-c",
             "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.home}", "-c", "fsync=off"],
            user="postgres", stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait(lambda: self._as_postgres([str(self.bin / "pg_isready"), "-h", str(self.home), "-p", str(self.port)],
                                        check=False) == 0, self.proc, self.log, "PostgreSQL")
        self.sql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        for db in databases:
            self.sql(f"CREATE DATABASE {db} OWNER {self.user}")

    def _as_postgres(self, cmd: list[str], check: bool = True) -> int:
        r = subprocess.run(cmd, user="postgres", cwd=self.home, capture_output=True, text=True)
        if check and r.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {r.stderr or r.stdout}")
        return r.returncode

    def sql(self, statement: str, db: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser over the server's Unix socket; the rows, tab-separated."""
        r = subprocess.run([str(self.bin / "psql"), "-h", str(self.home), "-p", str(self.port), "-U",
                            "postgres", "-d", db, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c",
                            statement], user="postgres", cwd=self.home, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"psql: {r.stderr}")
        return [tuple(line.split("\t")) for line in r.stdout.splitlines() if line]

    def url(self, db: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        import shutil

        stop_pid(self.proc.pid)
        shutil.rmtree(self.home, ignore_errors=True)


class MlflowServer:
    """A real MLflow tracking server and registry on a free loopback port, with `make run`'s stores (SQLite and a
    folder under `home`/mlflow) or those the ML_PLATFORM_MLFLOW_* variables in `env` choose (PostgreSQL, S3)."""

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        (home / "mlflow").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | MLFLOW_SERVER_ENV | (env or {})
        self.home, self.log, self.artifacts = home, home / "mlflow.log", home / "mlflow" / "artifacts"
        self.start()

    def start(self) -> None:
        """Start (or, after stop(), start again on the same port and database)."""
        args, store_env, _ = mlflow_server_store(self.home, self.env)
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", *args],
            env=self.env | store_env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(lambda: _http_ok(f"{self.uri}/health"), self.proc, self.log, "MLflow server", seconds=300)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        stop_pid(self.proc.pid)


class DagsterStack:
    """dagster-webserver and dagster-daemon on a free loopback port, with a throwaway DAGSTER_HOME."""

    def __init__(self, home: Path, locations: dict[str, Path], env: dict[str, str] | None = None,
                 daemon: bool = True):
        self.url = f"http://127.0.0.1:{free_port()}"
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.bin_dir = home, Path(sys.executable).parent
        workspace = self.workspace = home / "workspace.yaml"
        workspace.write_text("load_from:\n" + "".join(
            f"  - python_file:\n      relative_path: {path}\n      location_name: {name}\n"
            f"      working_directory: {ROOT}\n"
            for name, path in locations.items()))
        self.env = os.environ | {"DAGSTER_HOME": str(dagster_home(home))} | (env or {})
        self.log = home / "dagster.log"
        # a fresh instance's SQLite storage is created by whichever process opens it first; the webserver and the
        # daemon starting together can both try, and the loser of alembic's race exits (CI: "dagster-webserver did
        # not start", alembic CommandError). Creating it here first leaves them nothing to race for.
        from dagster import DagsterInstance
        DagsterInstance.from_config(self.env["DAGSTER_HOME"]).dispose()
        self.web = self._spawn([str(self.bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                                self.url.rsplit(":", 1)[1], "-w", str(workspace)])
        self.daemon = self.start_daemon() if daemon else None
        deadline = time.monotonic() + 180  # the webserver, the daemon and their code servers all import dagster
        while not (http_ok(f"{self.url}/server_info") and self.loaded()):
            if self.web.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("dagster-webserver did not start:\n" + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=self.env, cwd=self.home, stdout=open(self.log, "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def start_daemon(self) -> subprocess.Popen:
        """The daemon (sensors, the run queue, run monitoring and retries); a test may kill it and start another."""
        self.daemon = self._spawn([str(self.bin_dir / "dagster-daemon"), "run", "-w", str(self.workspace)])
        return self.daemon

    def graphql(self, query: str, **variables) -> dict:
        return requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=10).json()

    def loaded(self) -> bool:
        nodes = self.graphql("{ assetNodes { id } }").get("data", {}).get("assetNodes")
        return bool(nodes)

    def stop(self) -> None:
        for p in (self.web, self.daemon):
            if p is not None and p.poll() is None:
                stop_pid(p.pid, grace=3)  # nothing to save: a throwaway instance
