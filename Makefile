# The two commands: `make run` (the local stack) and `make test` (what CI runs). Both set up what is missing
# first; a second call skips what is done (stamps depend on pyproject.toml and the poms).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JARS := .jars
SPARK_KAFKA_JARS := spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2

MINIO := .tools/minio
# MinIO is built from source through the Go module proxy (no binary downloads here); pinned to one commit
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c

.PHONY: setup tools run test lint pytest validate smoke jars clean
setup: $(VENV)/.installed jars tools

# kcat: a Kafka client that is not ours, for the wire-format test and for poking at topics by hand (Debian)
tools:
	@command -v kcat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } \
	  || { echo "kcat is missing: install the Debian package kcat (needs root)"; exit 1; }
	@$(MAKE) -s $(MINIO) .venv-emr/.installed

# The EMR emulation's node runs the Spark of current EMR releases (emr-7.13.0: Spark 3.5.6, Python 3.11) with only
# what a bootstrap would install for the data layers, so a Spark 4-only API in those layers fails a test here.
.venv-emr/.installed: Makefile
	@test -x .venv-emr/bin/python || $(PYTHON) -m venv .venv-emr
	.venv-emr/bin/pip install -q "pyspark==3.5.6" "dagster-pipes==1.13.27" "boto3==1.44.5" "pandas>=2.2,<3" \
	  "pyarrow>=15" "numpy>=1.26,<3" "pyyaml>=6"
	@touch $@

# MinIO: the S3-compatible server the storage tests run against (~3 min to build on 2 cores, once)
$(MINIO):
	@command -v go >/dev/null || { echo "building MinIO needs Go (https://go.dev/dl or the Debian package golang)"; exit 1; }
	mkdir -p .tools && GOBIN=$(abspath .tools) GOFLAGS=-mod=mod go install github.com/minio/minio@$(MINIO_VERSION)

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

jars: $(JARS)/spark/.done $(JARS)/kafka/.done $(JARS)/aws/.done $(JARS)/hdfs/.done $(JARS)/emr-node/.done

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

run: setup
	$(BIN)/ml-platform up

test: setup lint pytest validate smoke

lint:
	$(BIN)/ruff check .

pytest:
	$(BIN)/pytest

validate:
	$(BIN)/dagster definitions validate -m definitions

# A real `dagster asset materialize` of raw_batches -> cleaned_features for one partition, throwaway state.
smoke:
	$(BIN)/python tests/cli_smoke.py

clean:
	rm -rf $(JARS) .tools .pytest_cache .ruff_cache
