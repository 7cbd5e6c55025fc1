"""A real Kubernetes API server for the deployment tests: etcd and kube-apiserver (both built by `make k8s-tools`
from the Go module proxy) on free loopback ports, with a token and AlwaysAllow. No nodes, no controllers: it
admits, defaults and validates objects exactly as a cluster's API server does, which is what a server-side dry
run (`kubectl apply --dry-run=server`) asks of it."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import requests
import yaml
from conftest import ROOT, free_port

from ml_platform.local.supervisor import stop_pid

TOOLS = ROOT / ".tools" / "k8s"


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make k8s-tools` (builds it from the Go module proxy)")
    return path


class ApiServer:
    def __init__(self, home: Path):
        home.mkdir(parents=True, exist_ok=True)
        self.home, self.token = home, secrets.token_hex(16)
        client, peer, self.port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.log = home / "apiserver.log"
        etcd = f"http://127.0.0.1:{client}"
        self._spawn([str(tool("etcd")), "--data-dir", str(home / "etcd"), "--listen-client-urls", etcd,
                     "--advertise-client-urls", etcd, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                     "--initial-cluster", f"default=http://127.0.0.1:{peer}", "--log-level", "warn"])
        subprocess.run(["openssl", "genrsa", "-out", str(home / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(home / "sa.key"), "-pubout", "-out", str(home / "sa.pub")],
                       check=True, capture_output=True)
        (home / "tokens.csv").write_text(f'{self.token},tester,1,"system:masters"\n')
        # the advertise address may not be loopback; 192.0.2.1 (TEST-NET-1) is never contacted: no endpoint
        # reconciler, no nodes
        self._spawn([str(tool("kube-apiserver")), f"--etcd-servers={etcd}", "--bind-address=127.0.0.1",
                     f"--secure-port={self.port}", f"--cert-dir={home / 'certs'}",
                     f"--token-auth-file={home / 'tokens.csv'}", "--authorization-mode=AlwaysAllow",
                     "--service-account-issuer=https://kubernetes.default.svc",
                     f"--service-account-key-file={home / 'sa.pub'}",
                     f"--service-account-signing-key-file={home / 'sa.key'}",
                     "--service-cluster-ip-range=10.96.0.0/16", "--advertise-address=192.0.2.1",
                     "--endpoint-reconciler-type=none"])
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override `verify`
        # verified against its own self-signed CA and certificate (written at start: see _ready)
        deadline = time.monotonic() + 120
        while not self._ready():
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise RuntimeError("etcd or kube-apiserver exited:\n" + self.log.read_text()[-3000:])
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("kube-apiserver not ready in 120 s:\n" + self.log.read_text()[-3000:])
            time.sleep(0.5)
        self._resources: dict[tuple[str, str], tuple[str, bool]] = {}

    def _spawn(self, cmd: list[str]) -> None:
        self.procs.append(subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def _ready(self) -> bool:
        cert = self.home / "certs" / "apiserver.crt"
        if not cert.exists():
            return False
        self.session.verify = str(cert)
        try:
            return self.session.get(f"{self.url}/readyz", timeout=3).status_code == 200
        except requests.RequestException:
            return False

    def version(self) -> str:
        return self.session.get(f"{self.url}/version", timeout=10).json()["gitVersion"]

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(the collection path under /api or /apis, namespaced?) of a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            r = self.session.get(f"{self.url}{base}", timeout=10)
            if r.status_code == 404:
                raise KeyError(f"the API server does not serve {api_version} (is its CRD applied?)")
            for res in r.json()["resources"]:
                if "/" not in res["name"]:
                    self._resources[(api_version, res["kind"])] = (f"{base}/{{ns}}{res['name']}",
                                                                  res["namespaced"])
        if key not in self._resources:
            raise KeyError(f"the API server has no kind {kind} in {api_version}")
        return self._resources[key]

    def submit(self, obj: dict, dry_run: bool = True, namespace: str = "default") -> requests.Response:
        """Create `obj` as `kubectl apply --dry-run=server` would: every admission step and strict field
        validation (an unknown or duplicated field is an error), nothing stored when dry_run."""
        path, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        path = path.replace("{ns}", f"namespaces/{namespace}/" if namespaced else "")
        params = {"fieldValidation": "Strict"} | ({"dryRun": "All"} if dry_run else {})
        return self.session.post(f"{self.url}{path}", params=params, json=obj, timeout=30)

    def apply_crds(self, files: list[Path]) -> None:
        """Create CustomResourceDefinitions for real and wait until each is established (served)."""
        for f in files:
            for crd in yaml.safe_load_all(f.read_text()):
                r = self.submit(crd, dry_run=False)
                assert r.status_code in (201, 409), r.text
                name = crd["metadata"]["name"]
                deadline = time.monotonic() + 60
                while True:
                    got = self.session.get(f"{self.url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                           f"{name}", timeout=10).json()
                    if any(c["type"] == "Established" and c["status"] == "True"
                           for c in (got.get("status") or {}).get("conditions") or []):
                        break
                    assert time.monotonic() < deadline, f"CRD {name} not established: {got.get('status')}"
                    time.sleep(0.3)
        self._resources.clear()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                stop_pid(p.pid, grace=5)
