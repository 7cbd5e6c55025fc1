# The two commands: `make run` (the local stack) and `make test` (what CI runs). Both set up what is missing
# first; a second call skips what is done (stamps depend on uv.lock, pyproject.toml and the poms).
#   make run        needs Python 3.11, Java 17, Maven and Node.js (npm): the venv, Spark's Kafka jars, the broker's
#                   jars, and dynalite (the prediction store's DynamoDB-API server, from npm)
#   make test       also needs Go and root (once): kcat, MinIO, .venv-emr, the aws/hdfs/emr-node jars, PostgreSQL
#                   (Debian), and for the browser tests headless Chromium with chromedriver (Debian) and axe-core (npm)
#   make test-scenarios  the long end-to-end scenarios `make test` leaves out (fault matrix, drift loop, EMR's Spark)
#   make test-fast  the tests that need no service (no Spark, Kafka, MinIO, HDFS), in about 3 minutes
#   make jars-aws   s3a:// for Spark, when ML_PLATFORM_DATA is s3://... (any jar set: make jars-<set>)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JARS := .jars
SPARK_JARS := spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2,delta-spark_4.2_2.13,delta-storage

# uv installs Python packages from uv.lock. It comes from PyPI into its own small venv (only package registries
# are reachable, so no installer script); it must use the machine's Python, never download one.
UV_VERSION := 0.13.9
UV_HOME := .tools/uv
UV := $(UV_HOME)/bin/uv
export UV_PYTHON_DOWNLOADS := never

# The prediction store's DynamoDB-API server for `make run` and the tests: dynalite from npm (Apache-2.0, LevelDB).
# DynamoDB Local is not used: its licence is the vendor's own terms, not an open-source one.
DYNALITE := node/dynalite/node_modules/.installed

# The browser tests' accessibility checker: axe-core from npm, injected into each page by tests/browser.py.
AXE := node/axe/node_modules/.installed

MINIO := .tools/minio
# MinIO is built from source through the Go module proxy (no binary downloads here); pinned to one commit
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c

.PHONY: setup setup-run tools blas browser axe dynalite postgres image-tools image-base image k8s-tools validate-deploy run test test-fast test-scenarios lint pytest validate smoke lock jars jars-run \
        jars-test jars-spark jars-kafka jars-aws jars-hdfs jars-emr-node clean
setup-run: $(VENV)/.installed jars-run $(DYNALITE) blas
setup: setup-run jars-test tools browser postgres

$(UV_HOME)/.uv-$(UV_VERSION):
	@test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install -q "uv==$(UV_VERSION)"
	@rm -f $(UV_HOME)/.uv-* && touch $@

# Exactly what uv.lock says (packages not in it are removed), with the project editable and the dev extra.
# --locked fails when pyproject.toml changed without `make lock`, instead of resolving something CI never ran.
$(VENV)/.installed: pyproject.toml uv.lock $(UV_HOME)/.uv-$(UV_VERSION)
	$(UV) sync --locked --extra dev --python $(PYTHON) --quiet
	@touch $@

# After editing the dependencies in pyproject.toml: re-resolve and commit uv.lock with it.
lock: $(UV_HOME)/.uv-$(UV_VERSION)
	$(UV) lock --python $(PYTHON)

dynalite: $(DYNALITE)
$(DYNALITE): node/dynalite/package.json node/dynalite/package-lock.json
	@command -v npm >/dev/null || { echo "the prediction store needs Node.js and npm (Debian: nodejs npm)"; exit 1; }
	cd node/dynalite && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# kcat: a Kafka client that is not ours, for the wire-format test and for poking at topics by hand (Debian)
tools:
	@command -v kcat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } \
	  || { echo "kcat is missing: install the Debian package kcat (needs root)"; exit 1; }
	@$(MAKE) -s $(MINIO) .venv-emr/.installed

# Native BLAS/LAPACK for Spark ML (OpenBLAS from Debian): without libblas.so.3, Spark ML falls back to Java code
# and logs "dlopen(libblas.so.3) failed" (bench/blas_bench.py measures the difference). Optional: installed when
# root can, else a note, and Spark runs as before.
blas:
	@ldconfig -p | grep -q 'libblas.so.3 ' \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null; } 2>/dev/null \
	  || echo "note: no native BLAS (Debian: libopenblas0-pthread, needs root); Spark ML uses its Java fallback"

# Headless Chromium and its WebDriver for the browser tests (tests/browser.py), both from Debian at the same version:
# Playwright's and selenium-manager's browsers come from a CDN that is not reachable here.
browser: $(AXE)
	@{ command -v chromium && command -v chromedriver; } >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || { echo "the browser tests need the Debian packages chromium and chromium-driver (needs root)"; exit 1; }

# PostgreSQL (Debian's server) for the production-store tests: each test run starts a throwaway cluster of its own on
# a free loopback port (tests/services.py), so the package's default cluster is not used.
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } \
	  || { echo "the production-store tests need the Debian package postgresql (needs root)"; exit 1; }

axe: $(AXE)
$(AXE): node/axe/package.json node/axe/package-lock.json
	@command -v npm >/dev/null || { echo "axe-core (browser tests) needs Node.js and npm (Debian: nodejs npm)"; exit 1; }
	cd node/axe && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The EMR emulation's node runs the Spark of current EMR releases (emr-7.13.0: Spark 3.5.6, Python 3.11) with only
# what a bootstrap would install for the data layers, so a Spark 4-only API in those layers fails a test here.
.venv-emr/.installed: tests/emr-node-requirements.txt $(UV_HOME)/.uv-$(UV_VERSION)
	@test -x .venv-emr/bin/python || $(UV) venv -q --python $(PYTHON) .venv-emr
	$(UV) pip sync -q --python .venv-emr/bin/python $<
	@touch $@

# MinIO: the S3-compatible server the storage tests run against (~3 min to build on 2 cores, once)
$(MINIO):
	@command -v go >/dev/null || { echo "building MinIO needs Go (https://go.dev/dl or the Debian package golang)"; exit 1; }
	mkdir -p .tools && GOBIN=$(abspath .tools) GOFLAGS=-mod=mod go install github.com/minio/minio@$(MINIO_VERSION)

# Jar sets, one folder each under .jars/: what `make run` needs, what only the tests need, and all of them.
jars-run: jars-spark jars-kafka
jars-test: jars-aws jars-hdfs jars-emr-node
jars: jars-run jars-test
jars-spark jars-kafka jars-aws jars-hdfs jars-emr-node: jars-%: $(JARS)/%/.done

# $(call copy-jars,<folder under .jars>,<pom>,<extra mvn flags>): a pom's runtime jars into their own folder
define copy-jars
	rm -rf $(JARS)/$(1) && mkdir -p $(JARS)/$(1)
	mvn -q -B -f $(2) dependency:copy-dependencies -DincludeScope=runtime $(3) -DoutputDirectory=$(abspath $(JARS)/$(1))
	@touch $(JARS)/$(1)/.done
endef

# Spark's Kafka connector and Delta Lake: only the jars pyspark does not ship already (no second Scala or Hadoop).
$(JARS)/spark/.done: jvm/spark-kafka/pom.xml
	$(call copy-jars,spark,$<,-DincludeArtifactIds=$(SPARK_JARS))

# The Kafka broker (KRaft), kept apart from Spark's classpath.
$(JARS)/kafka/.done: jvm/kafka-broker/pom.xml
	$(call copy-jars,kafka,$<)

# s3a:// for Spark: hadoop-aws and the AWS SDK bundle, added to Spark only when the data root is on S3.
$(JARS)/aws/.done: jvm/hadoop-aws/pom.xml
	$(call copy-jars,aws,$<,-DexcludeArtifactIds=wildfly-openssl)

# A real HDFS for tests (MiniDFSCluster: namenode + datanode in one JVM); never on Spark's classpath.
$(JARS)/hdfs/.done: jvm/hdfs-minicluster/pom.xml
	$(call copy-jars,hdfs,$<)

# The EMR emulation's node (tests): hadoop-aws for the Hadoop 3.3.4 inside pyspark 3.5.6.
$(JARS)/emr-node/.done: jvm/emr-node/pom.xml
	$(call copy-jars,emr-node,$<,-DexcludeArtifactIds=wildfly-openssl)

# The container image (deploy/Dockerfile), built without a Docker engine: buildah and podman (Debian), runc, and a
# Debian 12 base made from Debian's archive with debootstrap (no image registry is reachable here; elsewhere
# `docker build -f deploy/Dockerfile .` pulls debian:bookworm-slim instead). The jars are `make jars`' own.
IMAGE ?= localhost/ml-platform:0.1.0
IMAGE_BASE := localhost/ml-platform-base:bookworm
export CONTAINERS_CONF := $(abspath deploy/containers/containers.conf)
image-tools:
	@{ command -v buildah && command -v podman && command -v runc && command -v debootstrap; } >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman runc debootstrap >/dev/null; } \
	  || { echo "the image needs the Debian packages buildah podman runc debootstrap (needs root)"; exit 1; }

image-base: image-tools
	@podman image exists $(IMAGE_BASE) || { \
	  rm -rf .tools/rootfs && mkdir -p .tools && \
	  debootstrap --variant=minbase bookworm .tools/rootfs http://deb.debian.org/debian >.tools/debootstrap.log && \
	  printf 'deb http://deb.debian.org/debian bookworm main\ndeb http://deb.debian.org/debian bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' >.tools/rootfs/etc/apt/sources.list && \
	  rm -rf .tools/rootfs/var/cache/apt/archives/*.deb .tools/rootfs/var/lib/apt/lists/* && \
	  tar --numeric-owner -C .tools/rootfs -c . | podman import --change 'CMD ["/bin/bash"]' - $(IMAGE_BASE) >/dev/null && \
	  rm -rf .tools/rootfs; }

# The build's own downloads (PyPI) trust the machine's CA bundle, handed in as a build secret (not kept in a layer).
image: image-base jars-spark jars-aws
	buildah bud --isolation chroot --format docker --layers --build-arg BASE=$(IMAGE_BASE) \
	  --secret id=cacert,src=$${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt} -f deploy/Dockerfile -t $(IMAGE) .

# Deployment validation tools (make validate-deploy), each built from the Go module proxy or Maven Central into
# .tools/k8s: helm renders the charts; a real kube-apiserver over etcd takes every rendered object as a server-side
# dry run; the compose CLI checks deploy/compose; Strimzi's CRDs come from its crd-generator. kube-apiserver and
# etcd refuse `go install` (replace directives), so deploy/tools/* are wrapper modules whose go.sum pins them.
K8S := .tools/k8s
HELM_VERSION := v3.22.0
COMPOSE_VERSION := v5.6.0
KUBE_MINOR := 37
CRD_JAVA = $(lastword $(sort $(wildcard /usr/lib/jvm/temurin-*/bin/java)))
k8s-tools: $(K8S)/helm $(K8S)/etcd $(K8S)/kube-apiserver $(K8S)/docker-compose $(K8S)/strimzi/.done

$(K8S)/helm:
	GOBIN=$(abspath $(K8S)) CGO_ENABLED=0 go install -trimpath -ldflags "-s -w \
	  -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
	  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(KUBE_MINOR) \
	  -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(KUBE_MINOR)" \
	  helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)

$(K8S)/etcd: deploy/tools/etcd/go.mod deploy/tools/etcd/go.sum
	cd deploy/tools/etcd && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(abspath $@) go.etcd.io/etcd/server/v3

# ~12 minutes and 2.3 GB of memory on 2 cores, once per machine
$(K8S)/kube-apiserver: deploy/tools/kube-apiserver/go.mod deploy/tools/kube-apiserver/go.sum
	cd deploy/tools/kube-apiserver && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w \
	  -X k8s.io/component-base/version.gitVersion=v1.$(KUBE_MINOR).2 -X k8s.io/component-base/version.gitMajor=1 \
	  -X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR)" -o $(abspath $@) k8s.io/kubernetes/cmd/kube-apiserver

# the compose CLI (a docker CLI plugin too: DOCKER_CONFIG=$(K8S)/docker). `go install` refuses it (exclude
# directives), so it is built in a copy of its module; v5.7 needs a module the proxy does not serve.
$(K8S)/docker-compose:
	rm -rf $(K8S)/compose-src && mkdir -p $(K8S)/docker/cli-plugins
	cp -r "$$(go mod download -json github.com/docker/compose/v5@$(COMPOSE_VERSION) | $(PYTHON) -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')" $(K8S)/compose-src
	chmod -R u+w $(K8S)/compose-src && cd $(K8S)/compose-src && CGO_ENABLED=0 go build -trimpath \
	  -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$(COMPOSE_VERSION)" -o $(abspath $@) ./cmd
	rm -rf $(K8S)/compose-src && ln -sf $(abspath $@) $(K8S)/docker/cli-plugins/docker-compose

$(K8S)/strimzi/.done: deploy/tools/strimzi-crds/pom.xml
	@test -n "$(CRD_JAVA)" || { echo "Strimzi's crd-generator needs Java 21 or newer (a Temurin JDK in /usr/lib/jvm)"; exit 1; }
	rm -rf $(K8S)/strimzi && mkdir -p $(K8S)/strimzi
	mvn -q -B -f $< dependency:build-classpath -Dmdep.outputFile=$(abspath $(K8S)/strimzi/classpath.txt)
	$(CRD_JAVA) -cp "$$(cat $(K8S)/strimzi/classpath.txt)" io.strimzi.crdgenerator.CrdGenerator --yaml \
	  --crd-api-version v1 --api-versions v1beta2 --storage-version v1beta2 \
	  io.strimzi.api.kafka.model.kafka.Kafka=$(K8S)/strimzi/kafka.yaml \
	  io.strimzi.api.kafka.model.nodepool.KafkaNodePool=$(K8S)/strimzi/kafkanodepool.yaml \
	  io.strimzi.api.kafka.model.topic.KafkaTopic=$(K8S)/strimzi/kafkatopic.yaml 2>/dev/null
	@touch $@

# cfn-lint and checkov in a venv of their own (checkov pins boto3 and networkx apart from the platform's)
.venv-deploy/.installed: deploy/tools/validate-requirements.txt $(UV_HOME)/.uv-$(UV_VERSION)
	@test -x .venv-deploy/bin/python || $(UV) venv -q --python $(PYTHON) .venv-deploy
	$(UV) pip sync -q --compile-bytecode --python .venv-deploy/bin/python $<
	@touch $@

# Every deployment artifact, as CI can check it here: the image built and its entry points run (podman), the
# charts rendered and dry-run on a real API server, the compose file through the compose CLI, the CloudFormation
# through cfn-lint and checkov (tests/test_deploy.py, tests/test_image.py)
validate-deploy: $(VENV)/.installed image k8s-tools .venv-deploy/.installed
	@$(BIN)/pytest -m deploy; s=$$?; [ $$s -ne 5 ] || echo "pytest ran no test (exit 5): that is a failure"; exit $$s

run: setup-run
	$(BIN)/ml-platform up

test: setup lint pytest validate smoke validate-deploy

# The tests marked `fast` by tests/conftest.py: no service fixture, not marked slow. Needs only the venv.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -m fast -q

lint:
	$(BIN)/ruff check .

# pytest's exit 5 (no test collected or selected) fails like any other non-zero status. CI's run leaves out the
# long scenarios (tests marked `scenario`: the control plane's fault matrix, the drift-and-retrain loop, the data
# layers on EMR's Spark); `make test-scenarios` runs them, about 30 minutes more.
pytest:
	@$(BIN)/pytest -m "not scenario and not deploy"; s=$$?; [ $$s -ne 5 ] || echo "pytest ran no test (exit 5): that is a failure"; exit $$s

test-scenarios: setup
	@$(BIN)/pytest -m scenario; s=$$?; [ $$s -ne 5 ] || echo "pytest ran no test (exit 5): that is a failure"; exit $$s

validate:
	$(BIN)/dagster definitions validate -m definitions

# A real `dagster asset materialize` of raw_batches -> cleaned_features for one partition, throwaway state.
smoke:
	$(BIN)/python tests/cli_smoke.py

clean:
	rm -rf $(JARS) .tools .pytest_cache .ruff_cache
