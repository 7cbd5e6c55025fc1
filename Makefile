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
SPARK_KAFKA_JARS := spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2

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

.PHONY: setup setup-run tools blas browser axe dynalite postgres run test test-fast test-scenarios lint pytest validate smoke lock jars jars-run \
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

# Spark's Kafka connector: only the jars pyspark does not ship already (no second Scala or Hadoop).
$(JARS)/spark/.done: jvm/spark-kafka/pom.xml
	$(call copy-jars,spark,$<,-DincludeArtifactIds=$(SPARK_KAFKA_JARS))

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

run: setup-run
	$(BIN)/ml-platform up

test: setup lint pytest validate smoke

# The tests marked `fast` by tests/conftest.py: no service fixture, not marked slow. Needs only the venv.
test-fast: $(VENV)/.installed
	$(BIN)/pytest -m fast -q

lint:
	$(BIN)/ruff check .

# pytest's exit 5 (no test collected or selected) fails like any other non-zero status. CI's run leaves out the
# long scenarios (tests marked `scenario`: the control plane's fault matrix, the drift-and-retrain loop, the data
# layers on EMR's Spark); `make test-scenarios` runs them, about 30 minutes more.
pytest:
	@$(BIN)/pytest -m "not scenario"; s=$$?; [ $$s -ne 5 ] || echo "pytest ran no test (exit 5): that is a failure"; exit $$s

test-scenarios: setup
	@$(BIN)/pytest -m scenario; s=$$?; [ $$s -ne 5 ] || echo "pytest ran no test (exit 5): that is a failure"; exit $$s

validate:
	$(BIN)/dagster definitions validate -m definitions

# A real `dagster asset materialize` of raw_batches -> cleaned_features for one partition, throwaway state.
smoke:
	$(BIN)/python tests/cli_smoke.py

clean:
	rm -rf $(JARS) .tools .pytest_cache .ruff_cache
