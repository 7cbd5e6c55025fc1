"""Asset factories, one module per layer, each built from a dataset spec."""

from __future__ import annotations

from dagster import AssetChecksDefinition, AssetsDefinition, AssetSpec

from assets.accounting import build_batches_check
from assets.cleaning import build_cleaned_features
from assets.maintenance import build_lake_maintenance
from assets.models import build_models
from assets.raw import build_raw_batches
from assets.serving import build_feedback, build_live_metrics, build_recommendations, build_serving_deployment
from assets.stacking import build_stacked_model
from assets.training import build_feature_pipeline_asset, build_training_set_asset
from ml_platform.spec import DatasetSpec


def build_dataset_assets(spec: DatasetSpec) -> list[AssetsDefinition | AssetSpec | AssetChecksDefinition]:
    return [build_raw_batches(spec), build_cleaned_features(spec), build_training_set_asset(spec),
            build_feature_pipeline_asset(spec), build_models(spec), build_stacked_model(spec),
            build_serving_deployment(spec), build_live_metrics(spec), build_batches_check(spec),
            build_lake_maintenance(spec),
            *([build_recommendations(spec)] if spec.task == "recommendation" else []),
            *([build_feedback(spec)] if spec.target else [])]
