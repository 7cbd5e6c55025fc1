"""The deployment artifacts under deploy/, validated as far as this machine allows (`make validate-deploy`):

- the ml-platform chart: `helm lint --strict`, then every rendered object created as a server-side dry run on a
  real kube-apiserver (etcd behind it; Strimzi's CRDs applied for real), with strict field validation;
- values for Dagster's official chart: checked for what the platform needs (that chart is not reachable here);
- the compose stack: `docker compose config` (the compose CLI, no engine needed);
- the CloudFormation template: cfn-lint and checkov (offline), every skipped check with its reason.
Each also shows its bad input failing with a message that names what is wrong."""

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from k8s import TOOLS, ApiServer, tool

pytestmark = pytest.mark.deploy

CHART = ROOT / "deploy" / "helm" / "ml-platform"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
TEMPLATE = ROOT / "deploy" / "aws" / "platform.yaml"
DEPLOY_VENV = ROOT / ".venv-deploy" / "bin"
VALUES = {"image": {"repository": "registry.example.com/ml-platform"},
          "secrets": {"existingSecret": "ml-platform-secrets"},
          "config": {"dataRoot": "s3://bucket/data", "mlflowArtifacts": "s3://bucket/mlflow"},
          "datasets": ["used_cars", "churn"]}
COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "pg-Secret-1", "MINIO_ROOT_USER": "minio-user-4",
                   "MINIO_ROOT_PASSWORD": "minio-Secret-2", "ML_PLATFORM_API_KEYS": "api-Secret-3"}


def run(cmd: list, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                          env=os.environ | (env or {}))


def render(tmp_path: Path, values: dict) -> subprocess.CompletedProcess:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    return run([tool("helm"), "template", "mlp", CHART, "-f", f])


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("kube"))
    server.apply_crds(sorted((TOOLS / "strimzi").glob("*.yaml")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    r = render(tmp_path_factory.mktemp("values"), VALUES)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_the_chart_lints_and_every_object_passes_a_server_side_dry_run(apiserver, rendered, tmp_path):
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(VALUES))
    lint = run([tool("helm"), "lint", "--strict", CHART, "-f", f])
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds.count("KafkaTopic") == 12 and kinds.count("Deployment") == 4, kinds  # api, mlflow, 2 scorers
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Kafka", "KafkaNodePool", "ServiceAccount",
            "PersistentVolumeClaim", "Service"} <= set(kinds)
    assert apiserver.version() == "v1.37.2"
    for doc in rendered:
        r = apiserver.submit(doc)
        assert r.status_code in (200, 201), f"{doc['kind']} {doc['metadata']['name']}: {r.text}"
        assert r.json()["metadata"].get("uid") or r.json()["kind"] == doc["kind"]


def test_the_api_rolls_and_each_scorer_stays_a_single_writer(rendered):
    deployments = {d["metadata"]["name"]: d for d in by_kind(rendered, "Deployment")}
    api = deployments["mlp-api"]["spec"]
    assert api["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    container = api["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready" and container["args"] == ["api"]
    for ds in ("used-cars", "churn"):
        scorer = deployments[f"mlp-scorer-{ds}"]["spec"]
        assert scorer["replicas"] == 1 and scorer["strategy"] == {"type": "Recreate"}
        assert scorer["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"mlp-scorer-{ds}"
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")[0]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mlp-api" and hpa["minReplicas"] >= 2
    topics = {t["spec"]["topicName"]: t for t in by_kind(rendered, "KafkaTopic")}
    assert "used_cars.requests" in topics and topics["used_cars.requests"]["metadata"]["name"] == "used-cars.requests"
    # secrets reach the pods only by reference; no value that looks like one is inline
    for d in by_kind(rendered, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["envFrom"] == [{"secretRef": {"name": "ml-platform-secrets"}}]
            assert not [e["name"] for e in c["env"] if any(w in e["name"] for w in ("KEY", "PASSWORD", "SECRET"))]
            assert c["securityContext"]["runAsNonRoot"] is True


def test_the_api_server_refuses_an_unknown_field(apiserver, rendered):
    api = copy.deepcopy(next(d for d in by_kind(rendered, "Deployment") if d["metadata"]["name"] == "mlp-api"))
    api["spec"]["replica"] = 2
    r = apiserver.submit(api)
    assert r.status_code == 400 and 'unknown field "spec.replica"' in r.json()["message"], r.text
    topic = copy.deepcopy(by_kind(rendered, "KafkaTopic")[0])
    topic["spec"]["partition"] = 3
    r = apiserver.submit(topic)
    assert r.status_code == 400 and 'unknown field "spec.partition"' in r.json()["message"], r.text


@pytest.mark.parametrize("drop, says", [
    (("secrets", "existingSecret"), "/secrets/existingSecret"),
    (("image", "repository"), "/image/repository"),
    (("config", "dataRoot"), "/config/dataRoot"),
])
def test_values_missing_a_required_setting_fail_naming_it(tmp_path, drop, says):
    values = copy.deepcopy(VALUES)
    values[drop[0]][drop[1]] = ""
    r = render(tmp_path, values)
    assert r.returncode != 0 and says in r.stderr, r.stderr


def test_dagster_values_give_the_official_chart_what_the_platform_needs():
    """Dagster's chart is not reachable from here (its chart repository is not a package registry), so these
    values are checked against what the platform relies on, not rendered."""
    v = yaml.safe_load((ROOT / "deploy" / "helm" / "dagster-values.yaml").read_text())
    assert v["runLauncher"]["type"] == "K8sRunLauncher"
    assert v["postgresql"]["enabled"] is False and v["generatePostgresqlPasswordSecret"] is False
    assert v["global"]["postgresqlSecretName"]
    code = v["dagster-user-deployments"]["deployments"][0]
    assert code["dagsterApiGrpcArgs"] == ["-m", "definitions"] and code["includeConfigInLaunchedRuns"]["enabled"]
    assert code["envSecrets"] == [{"name": "ml-platform-secrets"}]
    documented = (ROOT / "definitions.py").read_text()
    assert all(e["name"] in documented for e in code["env"]), "an env var the platform does not read"
    assert v["dagsterDaemon"]["runRetries"]["retryOnAssetOrOpFailure"] is False


def compose(*args, env: dict) -> subprocess.CompletedProcess:
    """`docker compose` with the compose CLI built by `make k8s-tools` as the docker client's plugin (the
    standalone binary where there is no docker client): it validates without an engine. Only `env`'s secrets are
    set, and no .env file is read."""
    full = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS} | env | {
        "DOCKER_HOST": "unix:///nonexistent/docker.sock", "DOCKER_CONFIG": str(TOOLS / "docker")}
    cmd = ["docker", "compose"] if shutil.which("docker") else [str(tool("docker-compose"))]
    return subprocess.run(cmd + ["--env-file", os.devnull, "-f", str(COMPOSE), *args], capture_output=True,
                          text=True, timeout=120, env=full, cwd=COMPOSE.parent)


def test_compose_config_is_valid_with_health_checks_and_pinned_images():
    r = compose("config", "--format", "json", env=COMPOSE_SECRETS)
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    assert set(services) == {"kafka", "postgres", "minio", "minio-buckets", "mlflow", "dagster-code",
                             "dagster-webserver", "dagster-daemon", "scorer-used-cars", "api"}
    for name, s in services.items():
        assert ":" in s["image"] and not s["image"].endswith(":latest"), (name, s["image"])
        assert name == "minio-buckets" or s.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dep, cond in s.get("depends_on", {}).items():
            assert cond["condition"] in ("service_healthy", "service_completed_successfully"), (name, dep)
        for p in s.get("ports", []):
            assert p["host_ip"] == "127.0.0.1", (name, p)
    assert services["dagster-webserver"]["depends_on"]["dagster-code"]["condition"] == "service_healthy"
    assert services["api"]["command"] == ["api"] and services["scorer-used-cars"]["command"] == ["scorer", "used_cars"]
    text = COMPOSE.read_text()
    assert not any(v in text for v in COMPOSE_SECRETS.values())


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "ML_PLATFORM_API_KEYS"])
def test_compose_without_a_secret_fails_naming_it(missing):
    env = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
    r = compose("config", "-q", env=env)
    assert r.returncode != 0 and f"{missing} must be set" in r.stderr, r.stderr


def test_cloudformation_passes_cfn_lint_and_checkov(tmp_path):
    lint = run([DEPLOY_VENV / "cfn-lint", TEMPLATE])
    assert lint.returncode == 0, lint.stdout + lint.stderr
    env = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE", "XDG_CACHE_HOME": str(tmp_path)}
    r = run([DEPLOY_VENV / "checkov", "-f", TEMPLATE, "--framework", "cloudformation", "--skip-download",
             "--output", "json"], env=env)
    report = json.loads(r.stdout)
    summary = report["summary"]
    assert r.returncode == 0 and summary["failed"] == 0 and summary["passed"] >= 60, summary
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason"
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEMPLATE.read_text().replace("VersioningConfiguration:", "VersioningConfig:", 1))
    r = run([DEPLOY_VENV / "cfn-lint", bad])
    assert r.returncode == 2 and "E3002" in r.stdout and "VersioningConfig" in r.stdout, r.stdout


def test_scorers_on_spark_s_kubernetes_scheduler_render_and_pass_the_dry_run(apiserver, tmp_path):
    values = copy.deepcopy(VALUES) | {"scorer": {"sparkMaster": "k8s"}}
    r = render(tmp_path, values)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for doc in docs:
        r = apiserver.submit(doc)
        assert r.status_code in (200, 201), f"{doc['kind']} {doc['metadata']['name']}: {r.text}"
    role = by_kind(docs, "Role")[0]
    assert {"pods", "services", "configmaps"} <= set(role["rules"][0]["resources"])
    pod = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "mlp-scorer-used-cars")
    spec = pod["spec"]["template"]["spec"]
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert spec["automountServiceAccountToken"] is True and env["SPARK_MASTER_URL"]["value"].startswith("k8s://")
    conf = dict(line.split("=", 1) for line in env["ML_PLATFORM_SPARK_CONF"]["value"].splitlines())
    assert conf["spark.kubernetes.container.image"] == "registry.example.com/ml-platform:0.1.0"
    assert conf["spark.kubernetes.driver.pod.name"] == "$(POD_NAME)" and "POD_NAME" in env
    assert env["ML_PLATFORM_SPARK_DRIVER_HOST"]["value"] == "$(POD_IP)"


def test_spark_submit_in_cluster_mode_creates_a_driver_pod_of_the_platform_image(apiserver, tmp_path):
    """`spark-submit --deploy-mode cluster` against the real API server: Spark's Kubernetes client creates the
    driver pod (this server has no nodes, so it is never scheduled) running the image's `driver` role on the
    scorer, with its settings in a ConfigMap and no submission credential in either."""
    import pyspark

    image = "localhost/ml-platform:0.1.0"
    script = "local:///opt/venv/lib/python3.11/site-packages/spark_streaming/scorer.py"
    cert = apiserver.home / "certs" / "apiserver.crt"
    # the driver's account (the chart's); this server has no controller to make the namespace's `default` one
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "spark-driver"}}
    assert apiserver.submit(account, dry_run=False).status_code in (201, 409)
    r = run([Path(pyspark.__file__).parent / "bin" / "spark-submit", "--master", f"k8s://{apiserver.url}",
             "--deploy-mode", "cluster", "--name", "scorer-used-cars",
             "--conf", f"spark.kubernetes.container.image={image}",
             "--conf", "spark.kubernetes.namespace=default",
             "--conf", f"spark.kubernetes.authenticate.submission.oauthToken={apiserver.token}",
             "--conf", f"spark.kubernetes.authenticate.submission.caCertFile={cert}",
             "--conf", "spark.kubernetes.submission.waitAppCompletion=false",
             "--conf", "spark.kubernetes.authenticate.driver.serviceAccountName=spark-driver",
             "--conf", "spark.kubernetes.driverEnv.ML_PLATFORM_CHECKPOINTS=s3a://bucket/checkpoints",
             script, "used_cars"], env={"SPARK_LOCAL_IP": "127.0.0.1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    pods = apiserver.session.get(f"{apiserver.url}/api/v1/namespaces/default/pods", timeout=10).json()["items"]
    driver = next(p for p in pods if p["metadata"]["labels"].get("spark-role") == "driver")
    container = driver["spec"]["containers"][0]
    assert container["image"] == image and container["args"][0] == "driver"
    assert script in container["args"] and container["args"][-1] == "used_cars"
    env = {e["name"]: e for e in container["env"]}
    assert env["ML_PLATFORM_CHECKPOINTS"]["value"] == "s3a://bucket/checkpoints"
    assert "SPARK_DRIVER_BIND_ADDRESS" in env  # what the image's driver role binds to
    assert driver["spec"]["serviceAccountName"] == "spark-driver"
    maps = apiserver.session.get(f"{apiserver.url}/api/v1/namespaces/default/configmaps", timeout=10).json()
    assert apiserver.token not in json.dumps(driver) + json.dumps(maps)
