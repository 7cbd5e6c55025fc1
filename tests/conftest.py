"""Shared fixtures: one Spark session for the whole run, tiny simulated data, a throwaway store."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def spark():
    from ml_platform.spark import local_session

    session = local_session("ml-platform-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def specs():
    from ml_platform.spec import builtin_specs

    return builtin_specs()


@pytest.fixture
def store(tmp_path):
    from ml_platform.storage import LocalStore

    return LocalStore(tmp_path / "data")


@pytest.fixture
def landing(store):
    """Write a file into the used_cars landing zone."""

    def put(name: str, content: bytes | str) -> Path:
        d = store.path("landing/used_cars")
        d.mkdir(parents=True, exist_ok=True)
        p = d / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    return put


@pytest.fixture(scope="session")
def used_cars_csv(tmp_path_factory) -> str:
    """A tiny simulated used_cars batch, with broken rows, as text."""
    from ml_platform.simulate import SimConfig, write_batch

    d = tmp_path_factory.mktemp("sim")
    path = write_batch(SimConfig("used_cars", rows_per_batch=400, broken_share=0.02), 1, d, None)
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session", autouse=True)
def _quiet_dagster_home(tmp_path_factory):
    os.environ.setdefault("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster_home")))
