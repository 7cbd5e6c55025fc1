"""The automatic flow on tiny data, with the daemon's own logic: new batches -> automation conditions -> one
retrain from training_set to serving_deployment, a champion in MLflow; promotion and rollback."""

import threading

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, evaluate_automation_conditions, materialize
from pyspark.ml import PipelineModel
from pyspark.ml.feature import SQLTransformer

from assets import build_dataset_assets
from ml_platform import lake
from ml_platform.cli import main as cli
from ml_platform.data.landing import partition_key
from ml_platform.layout import holdout_dir, landing_dir
from ml_platform.local.simulate import SimConfig, write_batch
from ml_platform.stores import LocalStore
from ml_platform.train.registry import CHALLENGER, CHAMPION, PREVIOUS
from ml_platform.train.release import promotion_gate
from ml_platform.train.training_set import training_version
from resources import LocalSparkResource, LocalStorage, MlflowRegistry
from tests.training_data import small, unused_serving_resources

CHAIN = ["training_set", "feature_pipeline", "model_linear", "model_random_forest", "stacked_model",
         "serving_deployment"]


@pytest.fixture(scope="module")
def platform(spark, specs, tmp_path_factory):
    spec = small(specs["used_cars"], algorithms={"linear": {"grid": {"regParam": [0.01, 0.3]}},
                                                 "random_forest": {"grid": {"numTrees": [5], "maxDepth": [3]}}})
    root = tmp_path_factory.mktemp("platform")
    store = LocalStore(root / "data")
    registry = MlflowRegistry(tracking_uri=f"sqlite:///{root}/mlflow.db", ui_url="http://127.0.0.1:5000")
    storage = LocalStorage(root=str(store.root))
    resources = {"spark": LocalSparkResource(storage=storage, threads="2", shuffle_partitions=2), "storage": storage,
                 "registry": registry, **unused_serving_resources()}
    instance = DagsterInstance.ephemeral()
    yield spec, store, build_dataset_assets(spec), resources, instance, registry.tracker()
    instance.dispose()


def _land(spec, store, instance, assets, resources, batches):
    land = store.path(landing_dir(spec))
    land.mkdir(parents=True, exist_ok=True)
    for b in batches:
        key = partition_key(write_batch(SimConfig(spec.name, rows_per_batch=250, seed=5), b, land, None).name)
        instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
        assert materialize(assets[:2], partition_key=key, instance=instance, resources=resources).success


def _defs(assets, resources):
    return Definitions(assets=assets, resources=resources)


def _requested(result, spec):
    return {k.path[-1]: result.get_num_requested(k) for k in (AssetKey([spec.name, c]) for c in CHAIN)}


def _run_requested(result, spec, assets, resources, instance):
    keys = [AssetKey([spec.name, c]) for c, n in _requested(result, spec).items() if n]
    return materialize(assets, selection=keys, instance=instance, resources=resources)


def _meta(result, key):
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {k: v.value for k, v in mats[-1].materialization.metadata.items()}


def test_new_batches_retrain_once_and_promote_a_champion(platform):
    spec, store, assets, resources, instance, tracker = platform
    tick = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance)
    # the chain only: <ds>/feedback runs on its own cron (midnight), which a run that spans 00:00 reaches (seen)
    assert not any(_requested(tick, spec).values())  # nothing landed yet
    _land(spec, store, instance, assets, resources, [1, 2])
    tick = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=tick.cursor)
    # the whole chain in one tick (each layer will be requested with the one before), training_set once
    assert _requested(tick, spec) == {c: 1 for c in CHAIN}
    run = _run_requested(tick, spec, assets, resources, instance)
    assert run.success
    serving = _meta(run, AssetKey([spec.name, "serving_deployment"]))
    assert serving["promoted"] is True and serving["champion_after"] == "1" and serving["champion_before"] == "none"
    stacked = _meta(run, AssetKey([spec.name, "stacked_model"]))
    assert "| stacked" in stacked["leaderboard"] and "data:image/png;base64" in stacked["predicted_vs_actual"]
    # what is served, and why, is in the metadata: the stack, or its best member when the stack does not win
    assert f"Served: {stacked['served']}" in stacked["leaderboard"] and stacked["served"] in {
        "stacked", "linear", "random_forest"}
    assert tracker.version_for(spec.name, CHAMPION) == tracker.version_for(spec.name, CHALLENGER) == "1"
    tags = tracker.version_tags(spec.name, "1")
    assert tags["dagster_run_id"] == run.run_id and tags["batches"] == "batch-00001,batch-00002"
    assert tags["checks"] == "passed" and len(tags["data_hash"]) == 16
    mv = tracker.client.get_model_version(spec.name, "1")
    nested = tracker.client.search_runs([tracker.experiment_id(spec.name)],
                                        f"tags.mlflow.parentRunId = '{mv.run_id}'")
    assert sorted(r.data.tags["algorithm"] for r in nested) == ["linear", "random_forest"]
    assert all("holdout_rmse" in r.data.metrics and "best.regParam" in r.data.params or
               r.data.tags["algorithm"] != "linear" for r in nested)
    # the jobs found the version's parent run by its tags: one parent, and no run id left in a file
    parent = tracker.client.get_run(mv.run_id)
    assert parent.data.tags["training_version"] == run.run_id and parent.data.tags["role"] == "parent"
    assert parent.data.params["data.batches"] == "batch-00001,batch-00002"
    assert not list(store.root.glob("gold/**/mlflow.json"))
    linear = _meta(run, AssetKey([spec.name, "model_linear"]))
    linear_run = [r for r in nested if r.data.tags["algorithm"] == "linear"][0].info.run_id
    assert linear["mlflow_run"].endswith(f"/runs/{linear_run}")
    assert linear["cv rmse (log1p price) mean"] < 1 < linear["holdout rmse (price)"]
    # the model step said which model it was on, while it trained
    logs = [e.user_message for e in instance.all_logs(run.run_id)]
    for n in ("linear", "random_forest"):
        assert any(m.startswith(f"used_cars/model_{n}: CV done in ") for m in logs), n
        assert any(m.startswith(f"used_cars/model_{n}: finished in ") for m in logs), n
    # MLflow's registry page, not its GenAI landing view
    assert serving["registry_page"] == "http://127.0.0.1:5000/#/models/used_cars"
    assert stacked["registry_page"] == "http://127.0.0.1:5000/#/models/used_cars/versions/1"
    assert "| rmse (price) |" in stacked["leaderboard"] and "| cv rmse (log1p price) |" in stacked["leaderboard"]

    tick = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=tick.cursor)
    assert not any(_requested(tick, spec).values())  # handled: no second retrain for the same batches

    _land(spec, store, instance, assets, resources, [3, 4])  # a burst of two batches
    tick = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=tick.cursor)
    assert _requested(tick, spec) == {c: 1 for c in CHAIN}  # two batches, one retrain
    run = _run_requested(tick, spec, assets, resources, instance)
    assert run.success
    assert training_version(store, spec, run.run_id)["batches"] == [f"batch-0000{i}" for i in range(1, 5)]
    serving = _meta(run, AssetKey([spec.name, "serving_deployment"]))
    assert serving["challenger"] == "2" and serving["champion_before"] == "1"
    assert serving["champion_after"] == ("2" if serving["promoted"] else "1")
    assert isinstance(serving["challenger_score"], float) and isinstance(serving["champion_score"], float)


def test_a_retrain_waits_for_the_running_one_and_each_run_keeps_its_own_version(platform, monkeypatch):
    """Run A is held inside model training (after its training_set executed). A new batch must not start a second
    retrain meanwhile; and even a training_set forced by hand in between cannot switch run A to its data."""
    spec, store, assets, resources, instance, tracker = platform
    import ml_platform.train.models as models_module  # the models job imports train_models from here when it runs

    entered, release = threading.Event(), threading.Event()
    real = models_module.train_models

    def held(*args, **kwargs):
        entered.set()
        assert release.wait(300)
        return real(*args, **kwargs)

    monkeypatch.setattr(models_module, "train_models", held)
    cursor = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance).cursor
    _land(spec, store, instance, assets, resources, [5])
    tick = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=cursor)
    assert _requested(tick, spec) == {c: 1 for c in CHAIN}
    outcome = {}
    run_a = threading.Thread(target=lambda: outcome.update(
        result=_run_requested(tick, spec, assets, resources, instance)))
    run_a.start()
    try:
        assert entered.wait(300)
        _land(spec, store, instance, assets, resources, [6])
        busy = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=tick.cursor)
        assert _requested(busy, spec)["training_set"] == 0  # run A is still training: the retrain waits
        key = AssetKey([spec.name, "training_set"])
        intruder = materialize(assets, selection=[key], instance=instance, resources=resources)
        assert "batch-00006" in training_version(store, spec, intruder.run_id)["batches"]
    finally:
        release.set()
        run_a.join(600)
    result = outcome["result"]
    assert result.success
    stacked = _meta(result, AssetKey([spec.name, "stacked_model"]))
    assert stacked["version"] == result.run_id  # its own training set, not the intruder's newer one
    tags = tracker.version_tags(spec.name, stacked["model_version"])
    assert tags["training_version"] == result.run_id and "batch-00006" not in tags["batches"]
    serving = _meta(result, AssetKey([spec.name, "serving_deployment"]))
    assert serving["challenger"] == stacked["model_version"]
    after = evaluate_automation_conditions(defs=_defs(assets, resources), instance=instance, cursor=busy.cursor)
    # the hand-made training_set already took batch 6 in: handled, so no retrain for it, and the rest follows it
    assert _requested(after, spec)["training_set"] == 0


def _register(spark, tracker, spec, store, model, checks="passed"):
    champion = tracker.version_for(spec.name, CHAMPION)
    cur = training_version(store, spec, tracker.version_tags(spec.name, champion)["training_version"])
    parent = tracker.parent_run(spec.name, cur, {})
    rows = lake.read(spark, store.uri(holdout_dir(spec, cur['version']))).limit(3)
    example = rows.select("year", "mileage").toPandas()
    pred = model.transform(rows).select("prediction").toPandas()
    return tracker.register_stack(parent, spec.name, model, example, pred, {"rmse": 1.0},
                                  {"checks": checks, "training_version": cur["version"]})


def test_promotion_needs_a_better_model_with_passed_checks_and_rollback_moves_the_alias(spark, platform):
    spec, store, assets, resources, instance, tracker = platform
    champion = tracker.version_for(spec.name, CHAMPION)
    good = tracker.load(spec.name, champion)
    constant = PipelineModel(stages=[SQLTransformer(statement="SELECT *, 20000.0D AS prediction FROM __THIS__")])

    bad = _register(spark, tracker, spec, store, constant)
    gate = promotion_gate(spark, store, tracker, spec)
    assert gate["challenger"] == bad and not gate["promoted"] and gate["champion_after"] == champion
    assert gate["challenger_score"] > gate["champion_score"]  # RMSE: the constant is worse

    same = _register(spark, tracker, spec, store, good)  # as good as the champion, not better by the margin
    gate = promotion_gate(spark, store, tracker, spec)
    assert not gate["promoted"] and "not better" in gate["decision"]

    failed = _register(spark, tracker, spec, store, good, checks="failed")
    gate = promotion_gate(spark, store, tracker, spec)
    assert gate["challenger"] == failed and not gate["promoted"] and "failed its checks" in gate["decision"]
    assert tracker.version_for(spec.name, CHAMPION) == champion

    # an earlier bad promotion, rolled back from the command line, and rolled forward again
    tracker.promote(spec.name, bad)
    assert tracker.version_for(spec.name, PREVIOUS) == champion
    uri = resources["registry"].tracking_uri
    assert cli(["rollback", spec.name, "--tracking-uri", uri]) == 0
    assert tracker.version_for(spec.name, CHAMPION) == champion and tracker.version_for(spec.name, PREVIOUS) == bad
    assert cli(["rollback", spec.name, "--tracking-uri", uri]) == 0
    assert tracker.version_for(spec.name, CHAMPION) == bad

    # and a challenger that is clearly better than that champion is promoted, keeping the old one for rollback
    better = _register(spark, tracker, spec, store, good)
    gate = promotion_gate(spark, store, tracker, spec)
    assert gate["promoted"] and tracker.version_for(spec.name, CHAMPION) == better
    assert tracker.version_for(spec.name, PREVIOUS) == bad
    del same


def test_only_checked_versions_become_champion_and_orphaned_runs_are_ended(tmp_path):
    """A version registered without a `checks: passed` tag (a run killed before recording them, or a hand-made
    registration) is refused by promote and by rollback; MLflow runs left RUNNING by a Dagster run that is over are
    ended as FAILED, the others are left alone."""
    from ml_platform.train.registry import Tracker, Unchecked

    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    c = tracker.client
    c.create_registered_model("ds")
    checked = c.create_model_version("ds", source=str(tmp_path / "a"), tags={"checks": "passed"}).version
    unchecked = c.create_model_version("ds", source=str(tmp_path / "b")).version
    failed = c.create_model_version("ds", source=str(tmp_path / "c"), tags={"checks": "failed"}).version
    tracker.promote("ds", checked)
    for v in (unchecked, failed):
        with pytest.raises(Unchecked, match=f"version {v} cannot become champion"):
            tracker.promote("ds", v)
    assert tracker.version_for("ds", CHAMPION) == str(checked)
    c.set_registered_model_alias("ds", PREVIOUS, unchecked)  # set by hand: rollback still refuses it
    with pytest.raises(Unchecked, match=f"version {unchecked} cannot"):
        tracker.rollback("ds")
    assert tracker.version_for("ds", CHAMPION) == str(checked)

    exp = tracker.experiment_id("ds")
    dead = c.create_run(exp, tags={"dagster_run_id": "dead-run"}).info.run_id
    live = c.create_run(exp, tags={"dagster_run_id": "live-run"}).info.run_id
    notebook = c.create_run(exp).info.run_id
    assert tracker.end_orphaned_runs("ds", lambda rid: rid == "live-run") == [dead]
    assert c.get_run(dead).info.status == "FAILED" and "dead-run" in c.get_run(dead).data.tags["ended_by"]
    assert c.get_run(live).info.status == "RUNNING" and c.get_run(notebook).info.status == "RUNNING"
    assert tracker.end_orphaned_runs("ds", lambda rid: False) == [live]  # once its run is over too
