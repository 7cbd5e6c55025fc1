"""The web app's new-dataset upload of a large CSV: does it land without the server holding the file in memory?

Starts the API (`python -m api`, the process `make run` starts) on a loopback port with an empty spec directory (no
dataset, so no Spark), logs in as the web app does, and sends a CSV of --mb megabytes through the page's own upload
route (PUT /app/api/uploads/<id>/<file>, streamed from disk by the client), then asks for the draft the editor
shows. Side by side, in the same run: the server's peak resident memory (VmHWM) before the upload and after it,
and the same for a plain FastAPI route that reads the whole body into memory (`await request.body()`), which is
what a naive upload handler does. Figures: bench/README.md.

    .venv/bin/python bench/web_upload_bench.py --mb 100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "web_upload"
NAIVE = '''
import uvicorn
from fastapi import FastAPI, Request
app = FastAPI()
@app.put("/upload")
async def upload(request: Request):
    body = await request.body()  # the whole file in memory
    return {"bytes": len(body)}
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_csv(path: Path, mb: int) -> None:
    if path.exists() and path.stat().st_size >= mb * 1_048_576:
        return
    row = "o-{i:09d},{v:.2f},{n},web,yes,2024-05-01,\"a note, with a comma\",{r}\n"
    with path.open("w") as f:
        f.write("order_id,basket_value,items,channel,coupon,signup_date,note,returned\n")
        i = 0
        while f.tell() < mb * 1_048_576:
            f.write("".join(row.format(i=i + k, v=(i + k) % 997 * 1.5, n=(i + k) % 9,
                                       r="yes" if (i + k) % 7 == 0 else "no") for k in range(10000)))
            i += 10000


def peak_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process, in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+) kB", text).group(1)) / 1024  # noqa: E731
    return get("VmHWM"), get("VmRSS")


def wait_up(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer")


def bench_api(csv: Path) -> dict:
    home = OUT / "home"
    subprocess.run(["rm", "-rf", str(home)], check=True)
    (home / "specs").mkdir(parents=True)
    port = free_port()
    env = os.environ | {"ML_PLATFORM_HOME": str(home), "ML_PLATFORM_SPECS": str(home / "specs"),
                        "ML_PLATFORM_API_KEYS": "bench-key", "ML_PLATFORM_MAX_UPLOAD_MB": "1024",
                        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = subprocess.Popen([sys.executable, "-m", "api", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            cwd=ROOT, stdout=open(OUT / "api.log", "wb"), stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(f"{base}/health", proc)
        s = requests.Session()
        s.post(f"{base}/app/login", data={"key": "bench-key", "next": "/app/new"}).raise_for_status()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', s.get(f"{base}/app/new").text).group(1)
        before = peak_mb(proc.pid)
        size = csv.stat().st_size
        grant = s.post(f"{base}/app/api/uploads", json={"filename": csv.name, "bytes": size},
                       headers={"X-CSRF-Token": csrf}).json()
        t0 = time.perf_counter()
        with csv.open("rb") as f:  # a file object: requests streams it
            r = s.put(f"{base}{grant['url']}", data=f, headers={"X-CSRF-Token": csrf, "Content-Type": "text/csv"})
        seconds = time.perf_counter() - t0
        r.raise_for_status()
        t1 = time.perf_counter()
        editor = s.get(f"{base}{r.json()['editor']}")
        editor.raise_for_status()
        editor_seconds = time.perf_counter() - t1
        t1 = time.perf_counter()
        target = s.get(f"{base}/app/api/uploads/{grant['upload_id']}/target", params={"column": "returned"})
        target_seconds = time.perf_counter() - t1
        after = peak_mb(proc.pid)
        staged = list((home / "data" / "staging").iterdir())
        return {"bytes": size, "upload_seconds": round(seconds, 2), "mb_per_s": round(size / 1_048_576 / seconds, 1),
                "peak_mb_before": round(before[0], 1), "peak_mb_after": round(after[0], 1),
                "peak_growth_mb": round(after[0] - before[0], 1), "staged": [p.name for p in staged],
                "staged_bytes": sum(p.stat().st_size for p in staged), "editor_seconds": round(editor_seconds, 2),
                "target_check_seconds": round(target_seconds, 2), "target_check": target.json()}
    finally:
        proc.terminate()
        proc.wait(30)


def bench_naive(csv: Path) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", NAIVE.replace("{port}", str(port))], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_up(f"{base}/docs", proc)
        before = peak_mb(proc.pid)
        with csv.open("rb") as f:
            requests.put(f"{base}/upload", data=f).raise_for_status()
        after = peak_mb(proc.pid)
        return {"peak_mb_before": round(before[0], 1), "peak_mb_after": round(after[0], 1),
                "peak_growth_mb": round(after[0] - before[0], 1)}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=100)
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    csv = OUT / f"orders-{a.mb}mb.csv"
    make_csv(csv, a.mb)
    out = {"file_mb": round(csv.stat().st_size / 1_048_576, 1), "api": bench_api(csv), "naive": bench_naive(csv)}
    print(json.dumps(out, indent=1))
    (OUT / "result.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
