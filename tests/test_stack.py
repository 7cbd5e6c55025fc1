"""The `make run` supervisor's own logic: taken ports are reported clearly; stopping leaves no orphans."""

import socket
import subprocess
import time

import pytest

from ml_platform.local.supervisor import StackError, _alive, check_ports, descendants, kafka_properties, stop_pid


def test_taken_port_gives_a_clear_message(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StackError) as e:
            check_ports({"Kafka broker": port}, tmp_path / "pids")
    assert f"port {port} (Kafka broker) is already in use on 127.0.0.1" in str(e.value)
    assert "choose other ports" in str(e.value)


def test_leftover_stack_is_named_in_the_message(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    sleeper = subprocess.Popen(["sleep", "30"])
    (pids / "mlflow.pid").write_text(str(sleeper.pid))
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            with pytest.raises(StackError, match=r"earlier `make run` still has \['mlflow'\].*ml-platform down"):
                check_ports({"MLflow": s.getsockname()[1]}, pids)
    finally:
        stop_pid(sleeper.pid, grace=1)


def test_stop_pid_takes_the_whole_tree_even_new_sessions():
    # a parent that starts a grandchild in its own session, as run workers and JVMs may
    parent = subprocess.Popen(["bash", "-c", "setsid sleep 60 & sleep 60 & wait"], start_new_session=True)
    deadline = time.monotonic() + 5
    while len(descendants(parent.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [parent.pid] + descendants(parent.pid)
    assert len(tree) >= 3
    stop_pid(parent.pid, grace=2)
    parent.wait(timeout=5)
    time.sleep(0.2)
    assert not any(_alive(p) for p in tree)


def test_kafka_is_kraft_on_loopback(tmp_path):
    props = kafka_properties(tmp_path, 9092, 9093)
    assert "process.roles=broker,controller" in props
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in props
    assert "0.0.0.0" not in props
