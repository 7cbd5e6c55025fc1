"""A stand-in for the composition root in tests/test_api_runs.py: every layer of used_cars as a trivial asset,
keyed and wired like the real ones (raw batches, cleaning, the retrain chain), so a retrain runs in seconds and
without Spark. Light on purpose: the webserver, the daemon and each run import it."""

from dagster import AssetKey, Definitions, asset, in_process_executor

from ml_platform.spec import builtin_specs

SPEC = builtin_specs()["used_cars"]
MODELS = [f"model_{a}" for a in SPEC.algorithms]
UPSTREAM = {"raw_batches": [], "cleaned_features": ["raw_batches"], "training_set": ["cleaned_features"],
            "feature_pipeline": ["training_set"], **{m: ["feature_pipeline"] for m in MODELS},
            "stacked_model": MODELS, "serving_deployment": ["stacked_model"]}


def layer(name: str, upstream: list[str]):
    @asset(key=AssetKey([SPEC.name, name]), deps=[AssetKey([SPEC.name, u]) for u in upstream])
    def _layer() -> None:
        return None

    return _layer


defs = Definitions(assets=[layer(n, u) for n, u in UPSTREAM.items()], executor=in_process_executor)
