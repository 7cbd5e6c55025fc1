"""EMR, emulated for tests: moto's server is the EMR API (cluster lifecycle, steps), and this thread plays the
cluster's nodes. For each cluster created through the API it runs the steps' spark-submit for real, under the
Spark of current EMR releases (pyspark 3.5.6 in .venv-emr, as in emr-7.13.0), with the environment EMR would give
the driver (the "spark-env" export configuration, where Dagster Pipes puts its variables), writes each step's
stdout/stderr to the cluster's LogUri on S3, and ends steps and cluster the way EMR does: COMPLETED and
TERMINATED, or FAILED and TERMINATED_WITH_ERRORS.

EMR Serverless the same way: a job run created through moto's API waits (SUBMITTED) until this thread has run its
entry point with the job driver's spark-submit parameters (`spark.emr-serverless.driverEnv.*` become the driver's
environment, as on EMR Serverless), then ends SUCCESS or FAILED.

What cannot be emulated: YARN (the step runs with --master local[1]), EMRFS (the job reads S3 through s3a, so it
is told spark_scheme=s3a), IAM and bootstrap actions (the package comes from PYTHONPATH)."""

from __future__ import annotations

import gzip
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from conftest import ROOT
from moto.core.utils import utcnow

ACCOUNT = "123456789012"  # moto's default account


def _export_env(configurations: list[dict]) -> dict[str, str]:
    env = {}
    for c in configurations:
        if (c.get("Classification") or c.get("classification")) == "spark-env":
            for inner in c.get("Configurations") or c.get("configurations") or []:
                if (inner.get("Classification") or inner.get("classification")) == "export":
                    env.update(inner.get("Properties") or inner.get("properties") or {})
    return env


EMR_DELTA_LIB = "/usr/share/aws/delta/lib/"


def _delta_enabled(configurations: list[dict]) -> bool:
    return any((c.get("Classification") or c.get("classification")) == "delta-defaults"
               and (c.get("Properties") or c.get("properties") or {}).get("delta.enabled") == "true"
               for c in configurations)


class EmrNodes(threading.Thread):
    def __init__(self, s3_client, s3_endpoint: str, region: str = "us-east-1", extra_env: dict | None = None):
        super().__init__(daemon=True, name="emr-nodes")
        self.s3, self.s3_endpoint, self.region = s3_client, s3_endpoint, region
        self.extra_env = extra_env or {}
        self.spark_submit = ROOT / ".venv-emr" / "bin" / "spark-submit"
        if not self.spark_submit.exists():
            raise RuntimeError(f"{self.spark_submit} is missing: run `make tools` (the EMR node's pyspark 3.5.6)")
        jars = sorted((ROOT / ".jars" / "emr-node").glob("*.jar"))
        # EMR's Delta is on a node's classpath only when the request enables it (delta-defaults on EC2, spark.jars
        # naming /usr/share/aws/delta/lib on Serverless): without it, a Delta table fails to load, as on EMR
        self.jars = [str(p) for p in jars if not p.name.startswith("delta-")]
        self.delta_jars = [str(p) for p in jars if p.name.startswith("delta-")]
        self.stop_event = threading.Event()
        self.handled: set[str] = set()
        self.ran: list[dict] = []  # what each step ran, for the tests

    def backend(self):
        from moto.emr.models import emr_backends

        return emr_backends[ACCOUNT][self.region]

    def serverless(self):
        import moto.emrserverless.models as m

        m.JOB_STATUS = "SUBMITTED"  # moto would report SUCCESS at once; here the run ends when its job has run
        return m.emrserverless_backends[ACCOUNT][self.region]

    def run(self) -> None:
        serverless = self.serverless()
        while not self.stop_event.is_set():
            for cluster in list(self.backend().clusters.values()):
                if cluster.id not in self.handled and cluster.state in ("STARTING", "BOOTSTRAPPING", "RUNNING",
                                                                        "WAITING"):
                    self.handled.add(cluster.id)
                    self.run_cluster(cluster)
            for runs in list(serverless.job_runs.values()):
                for job in list(runs):
                    if job.id not in self.handled and job.state == "SUBMITTED":
                        self.handled.add(job.id)
                        self.run_serverless(job)
            time.sleep(0.3)

    def run_serverless(self, job) -> None:
        submit = job.job_driver["sparkSubmit"]
        tokens, conf, env, delta = (submit.get("sparkSubmitParameters") or "").split(), [], {}, False
        for i, t in enumerate(tokens):
            if t == "--conf" and i + 1 < len(tokens):
                k, _, v = tokens[i + 1].partition("=")
                if k.startswith("spark.emr-serverless.driverEnv."):
                    env[k.removeprefix("spark.emr-serverless.driverEnv.")] = v
                elif k == "spark.jars" and all(j.startswith(EMR_DELTA_LIB) for j in v.split(",")):
                    delta = True
                else:
                    conf += ["--conf", f"{k}={v}"]
        rc, out, err = self.run_step(["spark-submit", *conf, submit["entryPoint"]], self.node_env(env), delta)
        self.ran.append({"job_run": job.id, "args": [*conf, submit["entryPoint"]], "rc": rc})
        job.state = "SUCCESS" if rc == 0 else "FAILED"
        job.state_details = "" if rc == 0 else err.decode(errors="replace")[-500:]

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    def node_env(self, driver_env: dict[str, str]) -> dict[str, str]:
        """What a node's driver sees: the service's variables for it (Pipes among them), and this machine's
        stand-ins for what EMR installs (the package on PYTHONPATH, pyspark 3.5.6's Python, S3 at MinIO)."""
        python = str(ROOT / ".venv-emr" / "bin" / "python")
        env = os.environ | driver_env | self.extra_env | {
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
        env.pop("SPARK_HOME", None)
        return env

    def run_cluster(self, cluster) -> None:
        env = self.node_env(_export_env(cluster.configurations))
        delta = _delta_enabled(cluster.configurations)
        failed = None
        for step in cluster.steps:
            if failed:
                step.state = "CANCELLED"
                continue
            step.state, step.start_date_time = "RUNNING", utcnow()
            rc, out, err = self.run_step(step.args, env, delta)
            self.ran.append({"cluster": cluster.id, "step": step.id, "args": list(step.args), "rc": rc})
            self.write_logs(cluster, step.id, out, err)
            step.end_date_time = utcnow()
            if rc == 0:
                step.state = "COMPLETED"
            else:
                step.state, failed = "FAILED", f"step {step.name!r} exited {rc}"
                step.last_state_change_reason = failed
        cluster.terminate()
        if failed:
            cluster.state, cluster.last_state_change_reason = "TERMINATED_WITH_ERRORS", failed
        else:
            cluster.last_state_change_reason = "Steps completed"

    def run_step(self, args: list[str], env: dict, delta: bool = False) -> tuple[int, bytes, bytes]:
        """command-runner.jar's `spark-submit --deploy-mode cluster … s3://…/entry.py` on this machine."""
        if not args or args[0] != "spark-submit":
            return 1, b"", f"the emulation runs spark-submit steps only, not {args[:1]}".encode()
        rest, i, conf = args[1:], 0, []
        while i < len(rest) - 1:
            if rest[i] == "--deploy-mode":
                i += 2  # YARN cluster mode: here the driver runs in this process tree
            else:
                conf.append(rest[i])
                i += 1
        entry = rest[-1]
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / Path(entry).name
            bucket, _, key = entry.removeprefix("s3://").partition("/")
            self.s3.download_file(bucket, key, str(local))
            cmd = [str(self.spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                   "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
                   "--conf", "spark.sql.shuffle.partitions=2",
                   "--jars", ",".join(self.jars + (self.delta_jars if delta else [])), *conf, str(local)]
            p = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
        return p.returncode, p.stdout, p.stderr

    def write_logs(self, cluster, step_id: str, out: bytes, err: bytes) -> None:
        if not cluster.log_uri:
            return
        bucket, _, prefix = cluster.log_uri.removeprefix("s3://").partition("/")
        for name, data in (("stdout", out), ("stderr", err)):
            key = f"{prefix.rstrip('/')}/{cluster.id}/steps/{step_id}/{name}.gz".lstrip("/")
            self.s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(data))
