# The two commands: `make run` (the local stack) and `make test` (what CI runs). Both set up what is missing
# first; a second call skips what is done (stamps depend on pyproject.toml and the poms).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JARS := .jars
SPARK_KAFKA_JARS := spark-sql-kafka-0-10_2.13,spark-token-provider-kafka-0-10_2.13,kafka-clients,commons-pool2

.PHONY: setup tools run test lint pytest validate smoke jars clean
setup: $(VENV)/.installed $(JARS)/spark/.done $(JARS)/kafka/.done tools

# kcat: a Kafka client that is not ours, for the wire-format test and for poking at topics by hand (Debian)
tools:
	@command -v kcat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } \
	  || { echo "kcat is missing: install the Debian package kcat (needs root)"; exit 1; }

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

jars: $(JARS)/spark/.done $(JARS)/kafka/.done

# Spark's Kafka connector: only the jars pyspark does not ship already (no second Scala or Hadoop).
$(JARS)/spark/.done: jvm/spark-kafka/pom.xml
	rm -rf $(JARS)/spark && mkdir -p $(JARS)/spark
	mvn -q -B -f jvm/spark-kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -DincludeArtifactIds=$(SPARK_KAFKA_JARS) -DoutputDirectory=$(abspath $(JARS)/spark)
	@touch $@

# The Kafka broker (KRaft), kept apart from Spark's classpath.
$(JARS)/kafka/.done: jvm/kafka-broker/pom.xml
	rm -rf $(JARS)/kafka && mkdir -p $(JARS)/kafka
	mvn -q -B -f jvm/kafka-broker/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
	  -DoutputDirectory=$(abspath $(JARS)/kafka)
	@touch $@

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
	rm -rf $(JARS) .pytest_cache .ruff_cache
