"""CI smoke: the dagster CLI materializes raw_batches -> cleaned_features for one partition on tiny data.

Runs in a throwaway DAGSTER_HOME and data root; fails loudly if the CLI fails or the outputs are missing.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    from dagster import DagsterInstance

    from ml_platform.local.simulate import SimConfig, write_batch

    with tempfile.TemporaryDirectory(prefix="ml-platform-smoke-") as tmp:
        tmp = Path(tmp)
        env = os.environ | {"DAGSTER_HOME": str(tmp / "dagster_home"), "ML_PLATFORM_DATA": str(tmp / "data"),
                            "ML_PLATFORM_SHUFFLE_PARTITIONS": "2"}
        (tmp / "dagster_home").mkdir()
        path = write_batch(SimConfig("used_cars", rows_per_batch=300, broken_share=0.02), 1,
                           tmp / "data/landing/used_cars", None)
        key = path.stem
        os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
        with DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("used_cars_batches", [key])
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "definitions",
               "--select", "used_cars/raw_batches,used_cars/cleaned_features", "--partition", key]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        log = tmp / "data/silver/used_cars/rows/_delta_log"
        commits = [p for p in sorted(log.glob("*.json")) if key in p.read_text()]
        if not commits:
            print(f"FAIL: no commit of batch {key} in the silver table's log {log}", file=sys.stderr)
            return 1
        print(f"smoke: {key} materialized, committed to the silver Delta table as {commits[0].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
