"""Asset factories, one module per layer, each built from a dataset spec."""

from __future__ import annotations

from dagster import AssetsDefinition

from assets.cleaning import build_cleaned_features
from assets.raw import build_raw_batches
from ml_platform.spec import DatasetSpec


def build_dataset_assets(spec: DatasetSpec) -> list[AssetsDefinition]:
    return [build_raw_batches(spec), build_cleaned_features(spec)]
