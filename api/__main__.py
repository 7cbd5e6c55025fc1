"""`python -m api [--host H] [--port P]`: the REST API on uvicorn (make run starts it on 127.0.0.1:8000)."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    import os

    import uvicorn

    # MLflow's client retries a dead server for minutes by default: the model routes should answer 503 sooner
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    from api.app import create_app
    from api.settings import ApiSettings

    ap = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args(argv)
    settings = ApiSettings.from_env()
    if not settings.key_hashes:
        print("api: no API key configured (ML_PLATFORM_API_KEYS or ML_PLATFORM_API_KEY_HASHES): every route but "
              "/health answers 401", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.WARNING)
    # uvicorn's access log prints each request line (never headers, so never a key)
    uvicorn.run(create_app(settings), host=a.host, port=a.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
