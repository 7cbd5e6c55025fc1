"""Where Dagster and MLflow keep their own records: SQLite files and a folder under the stack's home by default
(`make run`), PostgreSQL and S3 when configured (compose, Kubernetes, or a shared server beside `make run`).

Chosen only through the environment, because the URLs carry passwords:

  ML_PLATFORM_DAGSTER_POSTGRES_URL  postgresql://user:password@host:5432/dagster   runs, event log, schedules
  ML_PLATFORM_MLFLOW_BACKEND_URI    postgresql://user:password@host:5432/mlflow    tracking and model registry
  ML_PLATFORM_MLFLOW_ARTIFACTS_DESTINATION  s3://bucket/prefix: the server keeps artifacts there and proxies them
                                    (its AWS_* credentials; MinIO: MLFLOW_S3_ENDPOINT_URL)

Neither URL is written down anywhere: dagster.yaml names the variable, which Dagster reads when it starts, and the
MLflow server gets its store through MLFLOW_BACKEND_STORE_URI rather than its command line, so `ps` does not show
it. What is printed about a store is `describe()`: scheme, host, port and database, never the user or password."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

DAGSTER_POSTGRES = "ML_PLATFORM_DAGSTER_POSTGRES_URL"
MLFLOW_BACKEND = "ML_PLATFORM_MLFLOW_BACKEND_URI"
MLFLOW_ARTIFACTS = "ML_PLATFORM_MLFLOW_ARTIFACTS_DESTINATION"
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")


class StoreConfigError(ValueError):
    """A store variable that is set but unusable; the message names the variable and never repeats its value."""


def postgres_url(var: str, env: Mapping[str, str] = os.environ) -> str | None:
    """The PostgreSQL URL in `var`, None when unset (the SQLite default); a clear error when it is not one."""
    url = env.get(var, "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    problem = ("it is not a postgresql:// URL" if parts.scheme not in POSTGRES_SCHEMES else
               "it names no host" if not parts.hostname else
               "it names no database (postgresql://user:password@host:5432/DATABASE)" if parts.path in ("", "/")
               else None)
    if problem:
        raise StoreConfigError(f"{var}: {problem} (scheme {parts.scheme or 'missing'!r}; the value is not shown "
                               "because it may hold a password)")
    return url


def describe(url: str) -> str:
    """A store URL fit to print: no user, no password."""
    parts = urlsplit(url)
    if parts.scheme in POSTGRES_SCHEMES:
        return f"PostgreSQL at {parts.hostname}:{parts.port or 5432}{parts.path}"
    return url


def dagster_storage_yaml(env: Mapping[str, str] = os.environ) -> str:
    """The `storage:` block of dagster.yaml: PostgreSQL by reference to the variable, or nothing (SQLite files in
    DAGSTER_HOME, Dagster's default)."""
    if postgres_url(DAGSTER_POSTGRES, env) is None:
        return ""
    return f"storage:\n  postgres:\n    postgres_url:\n      env: {DAGSTER_POSTGRES}\n"


def mlflow_server_store(home: Path, env: Mapping[str, str] = os.environ) -> tuple[list[str], dict[str, str], str]:
    """The MLflow server's stores: arguments for `mlflow server`, the environment that carries the backend URL,
    and a line to print. Default: SQLite and a folder under <home>/mlflow."""
    backend = postgres_url(MLFLOW_BACKEND, env) or f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    artifacts = env.get(MLFLOW_ARTIFACTS, "").strip() or str(home / "mlflow" / "artifacts")
    scheme = urlsplit(artifacts).scheme
    if scheme not in ("", "file", "s3"):
        raise StoreConfigError(f"{MLFLOW_ARTIFACTS}: artifacts go to a folder or s3://bucket/prefix, not {scheme}://")
    if scheme == "s3" and not urlsplit(artifacts).netloc:
        raise StoreConfigError(f"{MLFLOW_ARTIFACTS}: {artifacts!r} names no bucket (s3://bucket/prefix)")
    return (["--artifacts-destination", artifacts], {"MLFLOW_BACKEND_STORE_URI": backend},
            f"{describe(backend)}, artifacts in {artifacts}")
