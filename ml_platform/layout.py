"""Every path inside a store, for every layer: the only place that builds one. Paths are relative to the store's
root ('/'-separated); `store.uri(path)` turns one into what Spark reads and writes.

    landing/<dataset>/                          batch files as they arrive
    quarantine/<dataset>/files/                 rejected batch files, each beside <name>.reason.json
    quarantine/<dataset>/rows/                  Delta: rows that failed parsing or cleaning, with the reason, by _batch
    bronze/<dataset>/rows/                      Delta: parsed rows of accepted files (every value a string), by _batch
    bronze/<dataset>/_batches/<key>.json        what ingestion recorded about a batch
    bronze/<dataset>/_hashes/<sha256>           which batch first brought this content
    silver/<dataset>/rows/                      Delta: cleaned, typed rows, the current row per key (MERGE), with a
                                                change data feed of what each batch replaced
    silver/<dataset>/_accepted/<key>.json       the cleaning commit of an accepted batch, for readers without Spark
    silver/<dataset>/_rejected/<key>.json       a batch not accepted: {"partition", "why": [...]}
    feedback/<dataset>/cursor.json              the next offset per <dataset>.actuals partition the feedback loop reads
    staging/<upload id>-<file>                  a new dataset's first file while its spec is edited (web app)
    gold/<dataset>/<version>/                   one retrain: train/ and holdout/ (Delta), training_set.json,
                                                feature_pipeline/, models/<algorithm>/{model,oof (Delta),result.json},
                                                stacked_model/, *.json
"""

from __future__ import annotations

from typing import Protocol


class _Named(Protocol):
    name: str


def landing_dir(spec: _Named) -> str:
    return f"landing/{spec.name}"


def landed_file(spec: _Named, name: str) -> str:
    return f"{landing_dir(spec)}/{name}"


STAGING_DIR = "staging"


def staged_file(upload_id: str, name: str) -> str:
    return f"{STAGING_DIR}/{upload_id}-{name}"


FEEDBACK_PREFIX = "feedback-"  # landing files of labelled served requests (serve/feedback.py), and their batches


def feedback_cursor(spec: _Named) -> str:
    return f"feedback/{spec.name}/cursor.json"


def quarantine_files_dir(spec: _Named) -> str:
    return f"quarantine/{spec.name}/files"


def quarantine_table(spec: _Named) -> str:
    return f"quarantine/{spec.name}/rows"


def bronze_table(spec: _Named) -> str:
    return f"bronze/{spec.name}/rows"


def batch_records_dir(spec: _Named) -> str:
    return f"bronze/{spec.name}/_batches"


def batch_record_path(spec: _Named, key: str) -> str:
    return f"{batch_records_dir(spec)}/{key}.json"


def content_hash_marker(spec: _Named, digest: str) -> str:
    return f"bronze/{spec.name}/_hashes/{digest}"


def silver_root(spec: _Named) -> str:
    return f"silver/{spec.name}"


def silver_table(spec: _Named) -> str:
    return f"{silver_root(spec)}/rows"


def accepted_dir(spec: _Named) -> str:
    return f"{silver_root(spec)}/_accepted"


def accepted_marker(spec: _Named, key: str) -> str:
    return f"{accepted_dir(spec)}/{key}.json"


def rejected_dir(spec: _Named) -> str:
    return f"{silver_root(spec)}/_rejected"


def rejected_marker(spec: _Named, key: str) -> str:
    return f"{rejected_dir(spec)}/{key}.json"


def version_dir(spec: _Named, version: str) -> str:
    return f"gold/{spec.name}/{version}"


def train_dir(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/train"


def holdout_dir(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/holdout"


def training_set_record(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/training_set.json"


def feature_pipeline_dir(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/feature_pipeline"


def model_dir(spec: _Named, version: str, algorithm: str) -> str:
    return f"{version_dir(spec, version)}/models/{algorithm}"


def model_artifact(spec: _Named, version: str, algorithm: str) -> str:
    return f"{model_dir(spec, version, algorithm)}/model"


def oof_dir(spec: _Named, version: str, algorithm: str) -> str:
    return f"{model_dir(spec, version, algorithm)}/oof"


def model_result(spec: _Named, version: str, algorithm: str) -> str:
    return f"{model_dir(spec, version, algorithm)}/result.json"


def stacked_model_dir(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/stacked_model"


def stacked_model_record(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/stacked_model.json"


def recommendations_dir(spec: _Named, version: str) -> str:
    return f"{version_dir(spec, version)}/recommendations"
