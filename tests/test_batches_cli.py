"""`ml-platform batches` and `ml-platform doctor` as a user runs them, against a real Dagster webserver and daemon
(tests/batch_defs.py: a new-batch sensor and trivial batch assets writing the store) over a real local store.

The instance is `make run`'s (queued runs, run monitoring, run retries), except that the daemon executes each run
itself (Dagster's SyncInMemoryRunLauncher) and looks at its queue every second: a run worker process of its own
imports dagster for ~12 s on 2 cores, and the queue launches them one at a time, while these runs take a second and
the commands read only what the runs record (status, partition, tags, step failures)."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from conftest import ROOT, free_port
from services import DagsterStack

from ml_platform.layout import landed_file, quarantine_files_dir
from ml_platform.local.supervisor import dagster_home, stop_pid
from ml_platform.stores import open_store

CLI = [sys.executable, "-m", "ml_platform.cli"]
LANDED = ["good.csv", "copy-of-good.csv", "dirty.csv", "bad.csv", "refuse.csv", ".late.csv.tmp"]
DONE = {"SUCCESS", "FAILURE", "CANCELED"}
LAUNCH = """mutation Launch($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""


def runs(stack) -> list[dict]:
    q = "{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }"
    return stack.graphql(q)["data"]["runsOrError"]["results"]


def wait_for(stack, done, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not done(rs := runs(stack)):
        assert time.monotonic() < deadline, f"{what}: {rs}\n" + stack.log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)


def partition(r) -> str | None:
    return next((t["value"] for t in r["tags"] if t["key"] == "dagster/partition"), None)


def instance(folder) -> str:
    """DAGSTER_HOME for the stack: make run's dagster.yaml, with runs executed in the daemon (see the docstring)."""
    d = dagster_home(folder)
    config = yaml.safe_load((d / "dagster.yaml").read_text())
    config["run_launcher"] = {"module": "dagster._core.launcher.sync_in_memory_run_launcher",
                              "class": "SyncInMemoryRunLauncher"}
    config["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    (d / "dagster.yaml").write_text(yaml.safe_dump(config))
    return str(d)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = open_store(str(home / "data"))
    for name in LANDED:
        store.write_text(landed_file(SPEC, name), "a,b\n1,2\n")
    store.write_text(f"{quarantine_files_dir(SPEC)}/broken.txt", "?")
    store.write_json(f"{quarantine_files_dir(SPEC)}/broken.txt.reason.json",
                     {"file": "broken.txt", "reason": "not a .csv file", "rejected_at": "20260101T000000000000"})
    # DAGSTER_HOME given here wins over the one DagsterStack writes under `home`
    s = DagsterStack(home, {"batches": ROOT / "tests/batch_defs.py"}, env={
        "ML_PLATFORM_DATA": str(home / "data"), "DAGSTER_HOME": instance(tmp_path_factory.mktemp("instance"))})
    try:
        wait_for(s, lambda rs: any(partition(r) == "bad" and r["status"] == "FAILURE" for r in rs), "bad's run")
        # the failing batch once more, as the real sensor's retry would: 2 failed runs (`--max-attempts 2` fails it)
        r = s.graphql(LAUNCH, p={"selector": {"repositoryLocationName": "batches", "repositoryName": "__repository__",
                                              "jobName": "__ASSET_JOB",
                                              "assetSelection": [{"path": ["used_cars", "raw_batches"]}]},
                                 "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "bad"}]}})
        assert r["data"]["launchRun"]["__typename"] == "LaunchRunSuccess", r
        keys = {"good", "copy-of-good", "dirty", "bad", "refuse"}
        wait_for(s, lambda rs: {partition(r) for r in rs if r["status"] in DONE} >= keys and sum(
            partition(r) == "bad" and r["status"] == "FAILURE" for r in rs) == 2, "the batches' runs")
        yield s
    finally:
        s.stop()


SPEC = type("Spec", (), {"name": "used_cars"})


def cli(*args, env=None, timeout=120):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ML_PLATFORM_")} | (env or {})
    return subprocess.run(CLI + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


def clis(*calls: list[str]) -> list[subprocess.CompletedProcess]:
    """Several independent `cli` calls run side by side (each spends seconds importing and waiting on sockets)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: cli(*args), calls))


def test_doctor_reads_stack_json_and_the_scorer_status_without_services(tmp_path):
    from ml_platform.local.doctor import scorer, services

    now = time.time()
    assert [c.level for c in services(tmp_path, now)[0]] == ["WARN"]
    (tmp_path / "stack.json").write_text("{not json")
    assert services(tmp_path, now)[0][0].level == "FAIL"
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "stack.json").write_text(json.dumps({"supervisor_pid": dead.pid, "updated_at": "2026-01-01T00:00:00Z",
                                                     "services": {}}))
    (c,), _ = services(tmp_path, now)
    assert c.level == "FAIL" and f"supervisor pid {dead.pid} is not running" in c.what and "make run" in c.what
    (tmp_path / "stack.json").write_text(json.dumps({"supervisor_pid": os.getpid(), "services": {
        "kafka": {"pid": os.getpid(), "state": "running", "restarts": 2, "last_exit": -9, "log": "k.log"},
        "api": {"pid": dead.pid, "state": "running", "restarts": 0, "log": "a.log"},
        "mlflow": {"pid": None, "state": "restarting", "restarts": 1, "last_exit": 1, "log": "m.log"}}}))
    checks, table = services(tmp_path, now)
    assert [(c.level, c.where) for c in checks] == [("OK", str(tmp_path / "stack.json")), ("FAIL", "a.log"),
                                                     ("WARN", "k.log"), ("WARN", "m.log")]
    assert "restarted 2 time(s), last exit -9" in checks[2].what and set(table) == {"kafka", "api", "mlflow"}
    assert scorer(tmp_path, "used_cars", now)[0].level == "WARN"  # no status file yet
    status = tmp_path / "scorer-used_cars.json"
    status.write_text(json.dumps({"state": "serving", "model_version": "3", "updated_at": "2026-01-01T00:00:00Z"}))
    assert scorer(tmp_path, "used_cars", now)[0].what.startswith("scorer used_cars: status not updated since")
    fresh = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    status.write_text(json.dumps({"state": "serving", "model_version": "3", "updated_at": fresh}))
    (ok,) = scorer(tmp_path, "used_cars", now)
    assert ok.level == "OK" and ok.what == "scorer used_cars serving, model version 3"


def test_batches_lists_every_landed_file_in_one_state(stack):
    r, table = clis(["batches", "used_cars", "--home", str(stack.home), "--dagster-url", stack.url, "--json",
                     "--max-attempts", "2"],
                    ["batches", "used_cars", "--home", str(stack.home), "--dagster-url", stack.url, "--state",
                     "waiting"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by = {b["file"]: b for b in out["batches"]}
    assert {f: b["state"] for f, b in by.items()} == {
        "good.csv": "accepted", "copy-of-good.csv": "superseded", "dirty.csv": "quarantined",
        "bad.csv": "failed", "refuse.csv": "quarantined", ".late.csv.tmp": "waiting", "broken.txt": "quarantined"}
    assert by["bad.csv"]["attempts"] == 2 and "worker lost while ingesting bad" in by["bad.csv"]["reason"]
    assert by["refuse.csv"]["reason"] == "refused by raw_batches: raw_rows: the file has 0 rows"
    assert "quarantine_share" in by["dirty.csv"]["reason"] and by["broken.txt"]["reason"] == "not a .csv file"
    assert by["copy-of-good.csv"]["reason"] == "same content as batch good"
    assert "still being written" in by[".late.csv.tmp"]["reason"]
    s = out["summary"]
    assert s["counts"] == {"waiting": 1, "running": 0, "accepted": 1, "quarantined": 3, "failed": 1, "superseded": 1}
    assert s["queue_depth"] == 0 and s["failed"][0]["key"] == "bad"

    lines = table.stdout.splitlines()
    assert table.returncode == 0 and lines[0].startswith("state") and len(lines) == 4, table.stdout
    # the sensor's default, 4 failed runs: bad.csv waits for its next retry
    bad = next(x for x in lines if "bad.csv" in x)
    assert bad.startswith("waiting") and "retry 2 of 3 due at" in bad and "worker lost" in bad, table.stdout
    assert any(x.startswith("waiting") and ".late.csv.tmp" in x for x in lines[1:3]), table.stdout
    assert lines[3].startswith("used_cars: 7 batch(es)") and "waiting 2" in lines[3] and "failed 0" in lines[3]


def test_doctor_fails_on_a_failed_batch_and_says_where_to_look(stack, tmp_path):
    dead_mlflow = f"http://127.0.0.1:{free_port()}"
    r = cli("doctor", "--home", str(stack.home), "--dagster-url", stack.url, "--tracking-uri", dead_mlflow,
            "--max-attempts", "2")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(x.startswith("WARN") and "no stack.json: not started by make run" in x for x in lines), r.stdout
    assert any(x.startswith("OK") and "daemon(s) healthy" in x for x in lines), r.stdout
    assert any(x.startswith("OK") and "used_cars_new_batch_sensor running" in x for x in lines), r.stdout
    assert any(x.startswith("FAIL") and "1 batch(es) failed for good: bad.csv (2 runs" in x
               and "ml-platform batches used_cars" in x for x in lines), r.stdout
    assert any(x.startswith("WARN") and "scorer used_cars: no status file" in x for x in lines), r.stdout
    assert any(x.startswith("FAIL") and f"MLflow at {dead_mlflow} unreachable" in x for x in lines), r.stdout
    assert lines[-1].startswith("2 FAIL"), r.stdout


def test_doctor_reads_the_stack_the_scorer_and_the_champion(stack):
    from mlflow import MlflowClient

    from ml_platform.local.doctor import champion

    home = stack.home
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (home / "stack.json").write_text(json.dumps({
        "supervisor_pid": os.getpid(), "started_at": now, "updated_at": now, "services": {
            "dagster-webserver": {"pid": stack.web.pid, "state": "running", "restarts": 0, "last_exit": None,
                                  "last_restart_at": None, "url": stack.url, "log": str(stack.log)},
            "mlflow": {"pid": None, "state": "failed", "restarts": 5, "last_exit": 1, "last_restart_at": now,
                       "url": "http://127.0.0.1:1", "log": str(home / "logs/mlflow.log")}}}))
    (home / "scorer-used_cars.json").write_text(json.dumps({
        "state": "failing", "consecutive_failures": 3, "last_error": "KafkaTimeoutError: broker down",
        "updated_at": now}))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("used_cars")
    v = client.create_model_version("used_cars", source=str(home / "model"))
    client.set_model_version_tag("used_cars", v.version, "checks", "passed")
    client.set_registered_model_alias("used_cars", "champion", v.version)

    r = cli("doctor", "--home", str(home), "--dagster-url", stack.url, "--tracking-uri", uri, timeout=180)
    lines = r.stdout.splitlines()
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(x.startswith("OK") and f"supervisor pid {os.getpid()}" in x for x in lines), r.stdout
    assert any(x.startswith("OK") and "service dagster-webserver running" in x for x in lines), r.stdout
    assert any(x.startswith("OK") and f"dagster-webserver: {stack.url} answers HTTP 200" in x for x in lines)
    assert any(x.startswith("FAIL") and "service mlflow is failed (restarts 5, last exit 1" in x
               and "logs/mlflow.log" in x for x in lines), r.stdout
    assert any(x.startswith("FAIL") and "scorer used_cars is failing (3 in a row): KafkaTimeoutError" in x
               for x in lines), r.stdout
    assert any(x.startswith("OK") and f"champion is version {v.version}, checks passed" in x for x in lines)

    client.set_model_version_tag("used_cars", v.version, "checks", "failed")  # a champion that should not serve
    (bad,) = champion(uri, "used_cars")
    assert bad.level == "FAIL" and "has checks failed" in bad.what and "ml-platform rollback used_cars" in bad.what


def test_doctor_notices_landed_files_nobody_picks_up(stack):
    stop_pid(stack.daemon.pid, grace=3)  # the daemon dies: no sensor ticks any more
    store = open_store(str(stack.home / "data"))
    store.write_text(landed_file(SPEC, "late.csv"), "a,b\n")
    time.sleep(5 + 2 * 2 + 1)  # settled, and 2 sensor intervals gone (a file's arrival is its ctime: no utime)
    r = cli("doctor", "--home", str(stack.home), "--dagster-url", stack.url, "--datasets", "used_cars",
            "--tracking-uri", f"http://127.0.0.1:{free_port()}", "--stuck-minutes", "0.1")
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(x.startswith("FAIL") and "1 landed file(s) not picked up after 2 sensor intervals (4s): ['late.csv']"
               in x and "/sensors/used_cars_new_batch_sensor" in x for x in lines), r.stdout
    # the same file in `batches`: waiting for the sensor, and over --stuck-minutes in doctor
    assert any(x.startswith("FAIL") and "batch(es) waiting for over 0.1 min: " in x
               and "late.csv (waiting: landed, not yet picked up by the sensor)" in x for x in lines), r.stdout


def test_a_dagster_that_is_down_is_said_so(stack):
    url = f"http://127.0.0.1:{free_port()}"
    r, d = clis(["batches", "used_cars", "--home", str(stack.home), "--dagster-url", url],
                ["doctor", "--home", str(stack.home), "--dagster-url", url, "--tracking-uri",
                 f"http://127.0.0.1:{free_port()}"])
    assert r.returncode == 1 and f"Dagster webserver at {url} unreachable" in r.stderr, r.stderr
    assert d.returncode == 1
    assert any(x.startswith("FAIL") and f"Dagster webserver at {url} unreachable" in x
               for x in d.stdout.splitlines()), d.stdout
