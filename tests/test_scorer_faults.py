"""The scorer as its own process, under faults: kill -9 and restart (twice), a broker restart, the alias moved
mid-stream and then to a version that cannot load. Nothing is lost, duplicates vanish after deduplicating by
request_id, and each partition switches model version exactly once."""

import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT

from ml_platform.local.loadgen import stream_rows
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.serve.kafka_io import ensure_topics, producer, read_topic
from ml_platform.serve.messages import request, topic
from ml_platform.train.registry import CHAMPION, Tracker
from tests.delivery import delivery_report
from tests.test_serving import register, year_model

NAME = "t_faults"  # the used_cars spec under its own name: its own topics and model, which no other test touches


def _spec_dir(tmp_path):
    """A spec directory with the shipped used_cars spec renamed (the scorer process loads specs from it)."""
    d = tmp_path / "specs"
    d.mkdir()
    text = (ROOT / "ml_platform" / "specs" / "used_cars.yaml").read_text()
    assert "\nname: used_cars\n" in text
    (d / f"{NAME}.yaml").write_text(text.replace("\nname: used_cars\n", f"\nname: {NAME}\n"))
    return d


def _start(kafka, uri, state, dataset="used_cars"):
    """The scorer process for `dataset`: a shipped spec, or NAME from the spec dir beside `state`."""
    log = open(state / "scorer.log", "ab")
    specs = ["--specs", str(state.parent / "specs")] if dataset == NAME else []
    return subprocess.Popen([sys.executable, "-m", "spark_streaming.scorer", dataset, "--state", str(state), *specs,
                             "--tracking-uri", uri, "--bootstrap", kafka.bootstrap, "--jars", str(ROOT / ".jars"),
                             "--no-metrics", "--max-per-trigger", "300"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _status(state, dataset="used_cars"):
    try:
        return json.loads((state / f"scorer-{dataset}.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _predicted(kafka):
    return len(read_topic(kafka.bootstrap, topic(NAME, "predictions"), timeout_s=2))


def _ours(kafka, spec, name):
    """This test's messages (its topics are its own; the key prefix is a second guard)."""
    return [m for m in read_topic(kafka.bootstrap, topic(spec, name)) if (m["key"] or "").startswith("sf")]


def test_kill_restart_broker_restart_swap_and_failed_load(spark, specs, kafka, tmp_path):
    # an earlier test's unconsumed used_cars requests would be scored first, past the swap, so the stream here
    # has topics of its own
    spec = dataclasses.replace(specs["used_cars"], name=NAME)
    _spec_dir(tmp_path)
    ensure_topics(kafka.bootstrap, spec.name)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri)
    v1 = register(spark, tracker, spec.name, year_model(1.0))
    write_batch(SimConfig("used_cars", 2000, test_share=0.5, broken_share=0.0, seed=5), 1, tmp_path / "land",
                tmp_path / "test")
    rows = [r for _, r in stream_rows(tmp_path / "test")]
    sent: list[str] = []  # keys with a prefix no other test on the session broker uses
    stop = threading.Event()

    def produce():
        """~50 requests/s until told to stop: the stream spans every fault below however long each one takes
        (a fixed count ended before the swap on a loaded machine, leaving no request for the new version)."""
        p = producer(kafka.bootstrap)
        while not stop.is_set():
            key = f"sf{len(sent)}"
            p.send(topic(spec, "requests"), key=key,
                   value=json.dumps(request(spec, key, rows[len(sent) % len(rows)])).encode())
            sent.append(key)
            time.sleep(0.02)
        p.flush()
        p.close()

    state = tmp_path / "state"
    state.mkdir()
    proc = _start(kafka, uri, state, NAME)
    sender = threading.Thread(target=produce)
    sender.start()
    try:
        for _ in range(2):  # kill -9 mid-stream, restart from the checkpoint
            before = _predicted(kafka)
            _wait(lambda b=before: _predicted(kafka) > b + 100, 180, "predictions before the kill")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = _start(kafka, uri, state, NAME)
        _wait(lambda: _status(state, NAME).get("pid") == proc.pid
              and _status(state, NAME).get("state") == "serving", 180, "the restarted scorer to serve")
        v2 = register(spark, tracker, spec.name, year_model(2.0))  # the alias moves mid-stream
        _wait(lambda: _status(state, NAME).get("model_version") == v2, 60, "the swap to v2")
        at_swap = len(sent)
        kafka.stop()  # the broker restarts under the running query
        time.sleep(3)
        kafka.start()
        broken = tracker.client.create_model_version(spec.name, source=str(tmp_path / "gone"), run_id=None)
        tracker.client.set_registered_model_alias(spec.name, CHAMPION, broken.version)
        _wait(lambda: f"version {broken.version} failed to load" in (_status(state, NAME).get("last_error") or ""), 60,
              "the failed load to be reported")
        _wait(lambda: len(sent) >= at_swap + 300, 60, "300 more requests after the swap")
        stop.set()
        sender.join(60)
        _wait(lambda: set(sent) <= {m["key"] for m in read_topic(kafka.bootstrap, topic(spec, "predictions"), 2)},
              300, "every request to be predicted")
        assert proc.poll() is None  # the broker restart did not take the scorer down
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    report = delivery_report(set(sent), _ours(kafka, spec, "predictions"), _ours(kafka, spec, "dlq"))
    assert report["lost"] == [] and report["unexpected"] == [] and report["predicted"] == len(sent), report
    assert set(report["switches"].values()) == {1}, report["versions"]
    assert all(s == [v1, v2] for s in report["versions"].values())
    final = _status(state, NAME)
    assert final["model_version"] == v2  # the broken version never served
    assert [sw[:2] for sw in final["swaps"]] == [[None, v1], [v1, v2]]  # a hot swap inside the last process
