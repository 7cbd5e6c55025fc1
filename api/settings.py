"""What the API is pointed at. `from_env` is the API's only reader of the environment (its composition root, as
definitions.py is Dagster's); tests build ApiSettings directly, pointed at their own services."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ApiSettings:
    data_root: str
    home: Path                                   # batch job files and the API's own state
    tracking_uri: str = "http://127.0.0.1:5000"
    bootstrap: str = "127.0.0.1:9092"
    dagster_url: str = "http://127.0.0.1:3000"
    specs_dir: str | None = None
    datasets: tuple[str, ...] = ()               # empty: every loaded spec
    key_hashes: frozenset[str] = frozenset()     # SHA-256 of each accepted API key; empty: no key works
    store_endpoint: str | None = None            # the prediction store: None is AWS's own DynamoDB endpoint
    store_table: str = "ml_platform_predictions"
    region: str = "us-east-1"
    s3_endpoint: str | None = None
    master: str = "local[1]"
    jars_dir: str | None = None
    max_body_bytes: int = 1_048_576              # JSON bodies (413 above)
    max_rows: int = 1000                         # rows per predict call (413 above)
    max_upload_bytes: int = 512 * 1_048_576      # CSV uploads and batch files (413 above)
    batch_direct_rows: int = 1000                # a CSV up to this many rows is answered at once; larger is a job
    rate_per_minute: int = 1200                  # per API key (429 above)
    wait_seconds: float = 120.0                  # a predict call waiting longer for Spark gets 503
    publish: bool = True                         # predictions to <ds>.predictions (the log the store follows)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiSettings:
        """ML_PLATFORM_API_KEY_HASHES (comma-separated SHA-256 hex) and/or ML_PLATFORM_API_KEYS (comma-separated
        keys, hashed here and never kept) name the accepted keys."""
        e = os.environ if env is None else env
        home = Path(e.get("ML_PLATFORM_HOME", ".local")).resolve()
        hashes = {h.strip().lower() for h in e.get("ML_PLATFORM_API_KEY_HASHES", "").split(",") if h.strip()}
        hashes |= {key_hash(k.strip()) for k in e.get("ML_PLATFORM_API_KEYS", "").split(",") if k.strip()}
        return cls(
            data_root=e.get("ML_PLATFORM_DATA", str(home / "data")), home=home,
            tracking_uri=e.get("MLFLOW_TRACKING_URI", cls.tracking_uri),
            bootstrap=e.get("KAFKA_BOOTSTRAP_SERVERS", cls.bootstrap),
            dagster_url=e.get("ML_PLATFORM_DAGSTER_URL", cls.dagster_url),
            specs_dir=e.get("ML_PLATFORM_SPECS") or None,
            datasets=tuple(d for d in e.get("ML_PLATFORM_DATASETS", "").split(",") if d),
            key_hashes=frozenset(hashes),
            store_endpoint=e.get("ML_PLATFORM_STORE_ENDPOINT") or None,
            store_table=e.get("ML_PLATFORM_STORE_TABLE", cls.store_table),
            region=e.get("AWS_REGION", e.get("AWS_DEFAULT_REGION", cls.region)),
            s3_endpoint=e.get("ML_PLATFORM_S3_ENDPOINT") or None,
            jars_dir=e.get("ML_PLATFORM_JARS") or None,
            rate_per_minute=int(e.get("ML_PLATFORM_API_RATE_PER_MINUTE", cls.rate_per_minute)),
            max_upload_bytes=int(float(e.get("ML_PLATFORM_MAX_UPLOAD_MB", cls.max_upload_bytes / 1_048_576))
                                 * 1_048_576),
        )
