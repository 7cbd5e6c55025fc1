"""Tiny training data for the training tests: a spec with small search spaces, and a store holding accepted
cleaned batches of it."""

import dataclasses

from ml_platform.data.landing import partition_key
from ml_platform.data.layers import clean_stored_batch, ingest_batch
from ml_platform.layout import landing_dir
from ml_platform.local.simulate import SimConfig, write_batch

SMALL = {
    "gbt": {"grid": {"maxDepth": [3], "maxIter": [4]}},
    "random_forest": {"grid": {"numTrees": [8], "maxDepth": [4]}},
    "linear": {"grid": {"regParam": [0.01, 0.1]}},
    "weighted_average": {"grid": {"regParam": [0.1]}, "random": {"n": 1, "interactions": {"choice": [True]}}},
    "logistic": {"grid": {"regParam": [0.01]}},
    "linear_svc": {"grid": {"regParam": [0.01]}},
    "xgboost": {"grid": {"max_depth": [3], "n_estimators": [20]}},
    "naive_bayes": {"grid": {"smoothing": [1.0]}},
}


def small(spec, algorithms=None, **training):
    algs = algorithms or {k: SMALL[k] for k in spec.algorithms if k in SMALL}
    return dataclasses.replace(spec, algorithms=algs,
                               training=dataclasses.replace(spec.training, parallelism=2, **training))


def land_batches(spark, store, spec, batches, rows=250, seed=11):
    """Simulate, ingest, clean and accept `batches`; returns their partition keys."""
    land = store.path(landing_dir(spec))
    land.mkdir(parents=True, exist_ok=True)
    keys = []
    for b in batches:
        p = write_batch(SimConfig(spec.name, rows_per_batch=rows, broken_share=0.01, seed=seed), b, land, None)
        k = partition_key(p.name)
        ingest_batch(spark, store, spec, k)
        clean_stored_batch(spark, store, spec, k)  # no judge: every batch is accepted
        keys.append(k)
    return keys


def unused_serving_resources() -> dict:
    """Resources of <dataset>/feedback for asset tests that never select it (Dagster wants every asset's resources):
    loopback addresses nothing listens on, so a run that did reach them would fail, not touch a real service."""
    from resources import PredictionStoreResource
    from resources.kafka import KafkaResource

    return {"kafka": KafkaResource(bootstrap_servers="127.0.0.1:9"),
            "predictions": PredictionStoreResource(endpoint_url="http://127.0.0.1:9")}
