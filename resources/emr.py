"""Spark on AWS EMR through Dagster Pipes: each layer's job runs as `spark-submit emr_job.py` (ml_platform/emr_job.py,
the same `run_job` the local backends call), on a transient EMR cluster (PipesEMRClient) or an EMR Serverless
application (PipesEMRServerlessClient). Context goes out, and the job's summary comes back, through S3.

No credential passes through here: this process uses its own AWS identity (environment, profile or role), and the
cluster its instance role (or the serverless execution role)."""

from __future__ import annotations

import json
import time

import boto3
from dagster import Failure, MetadataValue
from dagster_aws.pipes import PipesEMRClient, PipesEMRServerlessClient, PipesS3MessageReader

from ml_platform.jobs import JobFailed, from_wire, spec_to_wire
from resources.spark import SparkResource

CLUSTER_LIVE = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING")


class DryRun(Exception):
    def __init__(self, service: str, request: dict):
        super().__init__(f"dry run: the {service} request was printed and nothing was submitted")
        self.service, self.request = service, request


def _print_request(context, call: str, params: dict) -> None:
    text = json.dumps(params, indent=2, sort_keys=True, default=str)
    print(f"--- {call} (dry run: not submitted)\n{text}", flush=True)
    context.log.info(f"[dry run] {call}:\n{text}")


class PlatformEMRClient(PipesEMRClient):
    """PipesEMRClient with two changes. Completion is judged by the steps: dagster-aws 0.29 counts every
    terminated cluster as failed, and a transient cluster always ends TERMINATED, even after its steps
    succeeded. And a dry run prints the exact run_job_flow request (Pipes variables included) instead of sending it."""

    def __init__(self, *args, poll_seconds: float = 15, dry_run: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.poll_seconds, self.dry_run = poll_seconds, dry_run

    def _start(self, context, session, params):
        if self.dry_run:
            _print_request(context, "emr.run_job_flow", params)
            raise DryRun("EMR run_job_flow", params)
        return super()._start(context, session, params)

    def _wait_for_completion(self, context, response):
        cluster_id = response["JobFlowId"]
        while (cluster := self.client.describe_cluster(ClusterId=cluster_id))["Cluster"]["Status"]["State"] \
                in CLUSTER_LIVE:
            time.sleep(self.poll_seconds)
        status = cluster["Cluster"]["Status"]
        steps = self.client.list_steps(ClusterId=cluster_id)["Steps"]
        failed = [s for s in steps if s["Status"]["State"] != "COMPLETED"]
        if failed or status["State"] != "TERMINATED":
            detail = "; ".join(f"step {s['Name']!r} {s['Status']['State']}: " + (
                s["Status"].get("FailureDetails", {}).get("Message")
                or s["Status"].get("StateChangeReason", {}).get("Message") or "no details") for s in failed)
            reason = status.get("StateChangeReason", {}).get("Message", "")
            raise Failure(description=f"EMR cluster {cluster_id} ended {status['State']}: {detail or reason}",
                          metadata={"log_uri": cluster["Cluster"].get("LogUri") or "not set"})
        context.log.info(f"[pipes] EMR cluster {cluster_id}: {len(steps)} step(s) completed")
        return cluster


class PlatformEMRServerlessClient(PipesEMRServerlessClient):
    def __init__(self, *args, dry_run: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.dry_run = dry_run

    def _start(self, context, params):
        if self.dry_run:
            _print_request(context, "emr-serverless.start_job_run", params)
            raise DryRun("EMR Serverless start_job_run", params)
        return super()._start(context, params)


def explain_aws(e: Exception) -> str:
    """The EMR API's failures as one sentence naming the setting (never a secret)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return "no AWS credentials found; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or a role)"
    if isinstance(e, EndpointConnectionError):
        return f"cannot reach the EMR API ({e}); check AWS_REGION and ML_PLATFORM_EMR_ENDPOINT"
    if isinstance(e, ClientError):
        code, msg = e.response.get("Error", {}).get("Code", ""), e.response.get("Error", {}).get("Message", "")
        if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation"):
            return (f"{code}: {msg}; the identity running Dagster needs elasticmapreduce:RunJobFlow, DescribeCluster, "
                    f"ListSteps and iam:PassRole on ML_PLATFORM_EMR_SERVICE_ROLE / ML_PLATFORM_EMR_JOB_FLOW_ROLE")
        if code in ("UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException"):
            return f"{code}: the credentials were refused; fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        return f"{code}: {msg} (check the ML_PLATFORM_EMR_* settings)"
    return str(e)


# Every table is Delta: EMR ships its own Delta Lake (3.x on emr-7) and puts it on Spark's classpath when asked,
# through the delta-defaults classification on EC2 or its jars' paths on Serverless. emr_job.session pins the table
# protocol to what that Delta and ours both support.
DELTA_CONFIGURATION = {"Classification": "delta-defaults", "Properties": {"delta.enabled": "true"}}
SERVERLESS_DELTA_JARS = "/usr/share/aws/delta/lib/delta-spark.jar,/usr/share/aws/delta/lib/delta-storage.jar"


class EmrSparkResource(SparkResource):
    """Runs each layer's Spark job on EMR. The store must be on S3 (S3Storage). `mode` is "cluster" (a transient
    EMR-on-EC2 cluster per job, so nothing idles) or "serverless" (an existing EMR Serverless application)."""

    mode: str = "cluster"
    region: str = "us-east-1"
    endpoint_url: str | None = None  # the EMR API; None = AWS's own (tests point it at an emulation)
    entry_point: str  # s3://…/emr_job.py, a copy of ml_platform/emr_job.py
    # where Pipes messages travel: dagster-aws writes each session under a random 30-letter top-level prefix, so
    # give it a bucket of its own (with a lifecycle rule), not the data bucket
    pipes_bucket: str
    # EMR on EC2
    release_label: str = "emr-7.13.0"  # Spark 3.5.6, Python 3.11
    bootstrap_script: str | None = None  # s3://…/bootstrap.sh, installs this package on every node
    log_uri: str | None = None
    instance_type: str = "m5.xlarge"
    core_instances: int = 2
    service_role: str = "EMR_DefaultRole"
    job_flow_role: str = "EMR_EC2_DefaultRole"
    subnet_id: str | None = None
    # EMR Serverless
    application_id: str | None = None
    execution_role_arn: str | None = None
    python: str = "python3.11"
    spark_scheme: str = "s3"  # EMRFS; "s3a" where hadoop-aws is what reads S3 (tests, other Hadoop clusters)
    spark_submit_conf: dict[str, str] = {}
    dry_run: bool = False
    poll_seconds: float = 15

    def get_session(self):
        raise Failure(description="ML_PLATFORM_ENV=emr runs Spark on EMR, not in the Dagster process: this step "
                                  "asked for a local SparkSession")

    # ---- requests
    def submit_conf(self) -> dict[str, str]:
        return {"spark.pyspark.python": self.python, "spark.yarn.appMasterEnv.PYSPARK_PYTHON": self.python,
                "spark.sql.shuffle.partitions": str(self.shuffle_partitions), **self.spark_submit_conf}


    def job_flow_params(self, job: str, dataset: str) -> dict:
        conf = [a for k, v in self.submit_conf().items() for a in ("--conf", f"{k}={v}")]
        params = {
            "Name": f"ml-platform {dataset} {job}",
            "ReleaseLabel": self.release_label,
            "Applications": [{"Name": "Spark"}],
            "Instances": {
                "InstanceGroups": [
                    {"Name": "primary", "InstanceRole": "MASTER", "InstanceType": self.instance_type,
                     "InstanceCount": 1},
                    {"Name": "core", "InstanceRole": "CORE", "InstanceType": self.instance_type,
                     "InstanceCount": self.core_instances}],
                # transient: the cluster ends when its step ends, so a forgotten job costs nothing
                "KeepJobFlowAliveWhenNoSteps": False,
                **({"Ec2SubnetId": self.subnet_id} if self.subnet_id else {}),
            },
            "Steps": [{"Name": f"{dataset} {job}", "ActionOnFailure": "TERMINATE_CLUSTER",
                       "HadoopJarStep": {"Jar": "command-runner.jar",
                                         "Args": ["spark-submit", "--deploy-mode", "cluster", *conf,
                                                  self.entry_point]}}],
            "Configurations": [DELTA_CONFIGURATION],
            "ServiceRole": self.service_role,
            "JobFlowRole": self.job_flow_role,
            "VisibleToAllUsers": True,
            "Tags": [{"Key": "ml-platform:dataset", "Value": dataset}, {"Key": "ml-platform:job", "Value": job}],
        }
        if self.bootstrap_script:
            params["BootstrapActions"] = [{"Name": "install ml-platform", "ScriptBootstrapAction": {
                "Path": self.bootstrap_script, "Args": []}}]
        if self.log_uri:
            params["LogUri"] = self.log_uri
        return params

    def job_run_params(self, job: str, dataset: str) -> dict:
        if not (self.application_id and self.execution_role_arn):
            raise Failure(description="EMR Serverless needs ML_PLATFORM_EMR_APPLICATION_ID and "
                                      "ML_PLATFORM_EMR_EXECUTION_ROLE_ARN")
        submit = {"spark.jars": SERVERLESS_DELTA_JARS} | self.submit_conf()
        conf = " ".join(f"--conf {k}={v}" for k, v in submit.items())
        return {"applicationId": self.application_id, "executionRoleArn": self.execution_role_arn,
                "name": f"ml-platform {dataset} {job}",
                "jobDriver": {"sparkSubmit": {"entryPoint": self.entry_point, "sparkSubmitParameters": conf}},
                "tags": {"ml-platform:dataset": dataset, "ml-platform:job": job}}

    # ---- running
    def _aws(self, service: str):
        return boto3.session.Session().client(service, region_name=self.region, endpoint_url=self.endpoint_url)

    def _reader(self) -> PipesS3MessageReader:
        # the messages bucket is plain S3 (AWS_ENDPOINT_URL_S3 points boto3 at an S3-compatible server)
        s3 = boto3.session.Session().client("s3", region_name=self.region)
        return PipesS3MessageReader(bucket=self.pipes_bucket, client=s3, interval=min(self.poll_seconds, 5),
                                    include_stdio_in_messages=True)

    def run_job(self, context, name: str, spec, args: dict, registry=None) -> dict:
        from resources.storage import S3Storage

        storage = self.storage
        if not isinstance(storage, S3Storage):
            raise Failure(description="ML_PLATFORM_ENV=emr needs the store on S3: set ML_PLATFORM_DATA to "
                                      "s3://<bucket>/<prefix> (EMR cannot see this machine's folders)")
        extras = {"job": name, "dataset": spec.name, "spec": spec_to_wire(spec), "args": args,
                  "store": storage.describe() | {"spark_scheme": self.spark_scheme},
                  "registry": registry.describe() if registry is not None else None}
        try:
            if self.mode == "serverless":
                client = PlatformEMRServerlessClient(client=self._aws("emr-serverless"), message_reader=self._reader(),
                                                     poll_interval=self.poll_seconds, dry_run=self.dry_run)
                done = client.run(context=context, start_job_run_params=self.job_run_params(name, spec.name),
                                  extras=extras)
            else:
                client = PlatformEMRClient(client=self._aws("emr"), message_reader=self._reader(),
                                           poll_seconds=self.poll_seconds, dry_run=self.dry_run,
                                           wait_for_s3_logs_seconds=0)
                done = client.run(context=context, run_job_flow_params=self.job_flow_params(name, spec.name),
                                  extras=extras)
        except Exception as e:
            if type(e).__module__.startswith("botocore"):
                raise Failure(description=f"EMR {name} for {spec.name}: {explain_aws(e)}") from None
            if not isinstance(e, DryRun):
                raise
            raise Failure(description=str(e), metadata={"request": MetadataValue.json(
                json.loads(json.dumps(e.request, default=str)))}) from None
        for message in done.get_custom_messages():
            if isinstance(message, dict) and "failed" in message:
                raise JobFailed(message["failed"])
            if isinstance(message, dict) and "summary" in message:
                return from_wire(message["summary"])
        raise Failure(description=f"the EMR job {name} for {spec.name} ended without reporting a summary; see its "
                                  f"step logs" + (f" under {self.log_uri}" if self.log_uri else ""))
