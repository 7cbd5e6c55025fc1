"""The cleaning and training graph with everything on S3: MinIO on loopback holds the landing zone, bronze,
silver, the training-set export, the feature pipeline and models (Spark through s3a), and MLflow's artifacts
(boto3). Data arrives the way a data owner sends it: through a presigned upload."""

import uuid

from dagster import AssetKey, DagsterInstance, materialize
from services import post_form

from assets import build_dataset_assets
from ml_platform import lake
from ml_platform.data.landing import partition_key
from ml_platform.layout import holdout_dir, stacked_model_dir
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.train.algorithms import ROW_ID
from resources import LocalSparkResource, MlflowRegistry, S3Storage
from tests.training_data import small, unused_serving_resources

CHAIN = ["training_set", "feature_pipeline", "model_linear", "model_random_forest", "stacked_model",
         "serving_deployment"]


def _meta(result, key):
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in mats[-1].materialization.metadata.items()}


def test_graph_runs_on_s3(minio, specs, tmp_path, s3_spark):
    spec = small(specs["used_cars"], algorithms={"linear": {"grid": {"regParam": [0.01, 0.3]}},
                                                 "random_forest": {"grid": {"numTrees": [5], "maxDepth": [3]}}})
    run_id = uuid.uuid4().hex[:8]
    storage = S3Storage(root=f"s3://platform/graph-{run_id}", endpoint_url=minio.endpoint)
    store = storage.store()
    store.check()
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                              artifact_root=f"s3://platform/mlflow-{run_id}")
    resources = {"spark": LocalSparkResource(storage=storage, threads="2", shuffle_partitions=2), "storage": storage,
                 "registry": registry, **unused_serving_resources()}
    assets = build_dataset_assets(spec)
    with DagsterInstance.ephemeral() as instance:
        for b in (1, 2):
            csv = write_batch(SimConfig(spec.name, rows_per_batch=250, seed=5), b, tmp_path / "outbox", None)
            grant = store.presigned_upload(f"landing/{spec.name}/{csv.name}", max_bytes=5_000_000,
                                           expires_seconds=300)
            assert post_form(grant.url, grant.fields, csv.read_bytes()) == 204
            key = partition_key(csv.name)
            instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
            assert materialize(assets[:2], partition_key=key, instance=instance, resources=resources).success
        cleaned = instance.get_latest_materialization_event(AssetKey([spec.name, "cleaned_features"]))
        assert cleaned.asset_materialization.metadata["cleaned_rows"].value > 200
        run = materialize(assets, selection=[AssetKey([spec.name, c]) for c in CHAIN], instance=instance,
                          resources=resources)
        assert run.success
    every = str([m.materialization.metadata for m in run.get_asset_materialization_events()])
    assert minio.secret_key not in every and minio.access_key not in every, "a credential in asset metadata"
    serving = _meta(run, AssetKey([spec.name, "serving_deployment"]))
    assert serving["promoted"] is True and serving["champion_after"] == "1"
    fp = _meta(run, AssetKey([spec.name, "feature_pipeline"]))
    assert fp["path"].startswith(f"s3a://platform/graph-{run_id}/gold/{spec.name}/")

    s3 = minio.client()
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="platform", Prefix=f"graph-{run_id}/")
            for o in p.get("Contents", [])]
    for layer in ("landing/", "bronze/", "silver/", "gold/"):
        assert any(k.startswith(f"graph-{run_id}/{layer}") for k in keys), f"nothing under {layer} on S3"
    assert any("/feature_pipeline/" in k for k in keys) and any("/train/" in k for k in keys)
    artifacts = s3.list_objects_v2(Bucket="platform", Prefix=f"mlflow-{run_id}/{spec.name}/")
    assert artifacts.get("KeyCount", 0) > 0, "no MLflow artifacts on S3"

    # the registered champion loads back from S3 and scores the holdout exactly as the stack the job fitted
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    spark = s3_spark
    stacked = _meta(run, AssetKey([spec.name, "stacked_model"]))
    holdout = lake.read(spark, store.uri(holdout_dir(spec, stacked["version"])))
    champion = registry.tracker().load(spec.name, serving["champion_after"])
    batch = PipelineModel.load(store.uri(stacked_model_dir(spec, stacked["version"])))
    served = champion.transform(holdout).select(ROW_ID, F.col("prediction").alias("served"))
    fitted = batch.transform(holdout).select(ROW_ID, F.col("prediction").alias("fitted"))
    both = served.join(fitted, ROW_ID).agg(
        F.count(F.lit(1)).alias("n"), F.max(F.abs(F.col("served") - F.col("fitted"))).alias("diff"),
        F.sum(F.when(F.isnan("served") | F.col("served").isNull(), 1).otherwise(0)).alias("bad")).first()
    assert both["n"] == holdout.count() > 50 and both["bad"] == 0
    assert both["diff"] < 1e-6, f"the reloaded champion scores differently: max diff {both['diff']}"
    assert "prediction" in champion.transform(holdout.limit(1)).columns
