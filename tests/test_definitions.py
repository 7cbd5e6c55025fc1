"""The composition root over a directory of specs: a broken spec shows as its own failing asset and the others
load; ML_PLATFORM_DATASETS decides which datasets appear. Pure Dagster, no Spark."""

import shutil

import pytest
from dagster import AssetKey, materialize

from definitions import build_defs
from ml_platform.jobs import spec_from_wire, spec_to_wire
from ml_platform.spec import builtin_specs, load_spec_dir, shipped_spec_dir
from resources import Settings, resources_for


@pytest.fixture
def spec_dir(tmp_path):
    shutil.copy(shipped_spec_dir() / "used_cars.yaml", tmp_path / "used_cars.yaml")
    (tmp_path / "churn-v2.yaml").write_text("name: churn\ntask: regresion\ntarget: y\ncolumns: []\n")
    return tmp_path


def _defs(spec_dir, datasets=None):
    return build_defs(load_spec_dir(spec_dir), datasets, resources_for("local", Settings(data_root="/tmp/x")))


def _keys(defs):
    return {k for a in defs.get_repository_def().assets_defs_by_key.values() for k in a.keys}


def test_a_broken_spec_shows_its_error_and_the_others_load(spec_dir):
    defs = _defs(spec_dir)
    keys = _keys(defs)
    assert AssetKey(["used_cars", "stacked_model"]) in keys and AssetKey(["churn_v2", "spec"]) in keys
    repo = defs.get_repository_def()
    broken = repo.assets_defs_by_key[AssetKey(["churn_v2", "spec"])]
    description = broken.descriptions_by_key[AssetKey(["churn_v2", "spec"])]
    assert "churn-v2.yaml" in description and "task must be one of" in description and "regresion" in description
    assert repo.get_sensor_def("used_cars_new_batch_sensor") is not None
    assert not any(s.name.startswith("churn") for s in repo.sensor_defs)
    run = materialize([broken], raise_on_error=False)
    assert not run.success
    failure = [e for e in run.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "task must be one of" in str(failure.event_specific_data)


def test_datasets_setting_decides_which_datasets_appear():
    defs = build_defs(load_spec_dir(None), "used_cars,nope", resources_for("local", Settings(data_root="/tmp/x")))
    keys = _keys(defs)
    assert AssetKey(["used_cars", "raw_batches"]) in keys
    assert not any(k.path[0] == "fraud" for k in keys), "a dataset that does not run is listed"
    nope = defs.get_repository_def().assets_defs_by_key[AssetKey(["nope", "spec"])]
    assert "ML_PLATFORM_DATASETS names 'nope'" in nope.descriptions_by_key[AssetKey(["nope", "spec"])]
    every = _keys(build_defs(load_spec_dir(None), None, resources_for("local", Settings(data_root="/tmp/x"))))
    assert {k.path[0] for k in every} == set(load_spec_dir(None).specs) >= {"used_cars", "fraud", "tickets"}


def test_live_metrics_says_who_feeds_it():
    defs = build_defs(load_spec_dir(None), "used_cars", resources_for("local", Settings(data_root="/tmp/x")))
    spec = defs.get_repository_def().asset_graph.get(AssetKey(["used_cars", "live_metrics"]))
    assert "used_cars_live_metrics_sensor" in spec.description and "observation" in spec.description
    assert spec.metadata["fed_by"] == "used_cars_live_metrics_sensor"


def test_a_spec_travels_to_a_remote_job_whole():
    import json

    for spec in builtin_specs().values():
        assert spec_from_wire(json.loads(json.dumps(spec_to_wire(spec)))) == spec
