"""The domain core stays free of Dagster; the composition root resolves every job."""

import subprocess
import sys

from conftest import ROOT


def _ml_platform_modules() -> list[str]:
    """Every module under ml_platform/, found on disk (not by importing), so a new one is never missed."""
    pkg = ROOT / "ml_platform"
    out = []
    for p in sorted(pkg.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_ml_platform_module_imports_without_dagster():
    mods = _ml_platform_modules()
    assert len(mods) > 40 and "ml_platform.serve.messages" in mods and "ml_platform.layout" in mods
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.'))\n"
            "assert not bad, bad\nprint('clean', sum(m in sys.modules for m in " + repr(mods) + "))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"clean {len(mods)}" in r.stdout, r.stdout


def test_messages_and_layout_load_no_spark():
    """Naming a topic, checking a message or building a path must not start pulling in pyspark."""
    code = ("import sys, ml_platform.serve.messages as m, ml_platform.layout, ml_platform.stores\n"
            "m.validate('actuals', m.actual('r-1', 3.0))\n"
            "assert not [x for x in sys.modules if x.startswith('pyspark')], 'pyspark loaded'\nprint('light')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "light" in r.stdout, r.stderr[-3000:]


def test_no_import_cycles_between_ml_platform_modules():
    """Every import, lazy ones included, between ml_platform modules forms no circle."""
    import ast

    mods = set(_ml_platform_modules())
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        path = ROOT / (m.replace(".", "/") + ("/__init__.py" if (ROOT / m.replace(".", "/")).is_dir() else ".py"))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                while n and n not in mods:
                    n = n.rpartition(".")[0]
                if n and n != m and not m.startswith(n + "."):  # a package's own __init__ is not a cycle
                    edges[m].add(n)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(v: str, path: list[str]) -> bool:
        state[v] = 1
        for w in sorted(edges[v]):
            if state.get(w) == 1:
                cycle.extend(path[path.index(w):] + [v, w] if w in path else [v, w])
                return True
            if w not in state and visit(w, path + [v]):
                return True
        state[v] = 2
        return False

    for v in sorted(mods):
        if v not in state and visit(v, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


def test_mlflow_spark_works_where_main_has_no_file():
    """Dagster's run workers start with a __main__ that has no __file__; pyspark.ml.connect (imported by
    mlflow.spark.save_model) then exits the process unless its gRPC extras are installed."""
    code = ("import sys\n"
            "import pyspark.ml.connect, mlflow.spark\nprint('imported')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr[-2000:]


def test_definitions_load_and_resolve():
    from dagster import AssetKey, DefaultSensorStatus

    import definitions

    defs = definitions.defs
    repo = defs.get_repository_def()
    jobs = {job.name for job in repo.get_all_jobs()}
    assert "__ASSET_JOB" in jobs or any(j.startswith("__ASSET_JOB") for j in jobs), jobs
    for name in jobs:  # every job resolves to an executable plan
        assert repo.get_job(name).execute_in_process is not None
    keys = {k for a in repo.assets_defs_by_key.values() for k in a.keys}
    for ds in ("used_cars", "fraud"):
        assert AssetKey([ds, "raw_batches"]) in keys
        assert AssetKey([ds, "cleaned_features"]) in keys
        sensor = repo.get_sensor_def(f"{ds}_new_batch_sensor")
        assert sensor.default_status == DefaultSensorStatus.RUNNING
    auto = repo.get_sensor_def("automation_sensor")
    assert auto.default_status == DefaultSensorStatus.RUNNING
    cleaned = repo.assets_defs_by_key[AssetKey(["used_cars", "cleaned_features"])]
    # the new-batch sensor requests cleaning (with ingest, or alone when a batch was ingested alone); an automation
    # condition as well would race Dagster's retry of a killed run over the same partition
    assert cleaned.automation_conditions_by_key.get(AssetKey(["used_cars", "cleaned_features"])) is None


def test_unknown_environment_is_a_clear_error():
    import pytest

    from resources import Settings, resources_for

    with pytest.raises(ValueError, match="ML_PLATFORM_ENV='emr2'"):
        resources_for("emr2", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="SPARK_MASTER_URL"):
        resources_for("cluster", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="ML_PLATFORM_ENV=emr needs ML_PLATFORM_DATA=s3://"):
        resources_for("emr", Settings(data_root="/tmp/x"))
    with pytest.raises(ValueError, match="ML_PLATFORM_EMR_ENTRY_POINT and ML_PLATFORM_EMR_PIPES_BUCKET"):
        resources_for("emr", Settings(data_root="s3://bucket/platform"))
    with pytest.raises(ValueError, match="ML_PLATFORM_DATA='gs://b/x'"):
        resources_for("local", Settings(data_root="gs://b/x"))


def test_the_store_follows_the_data_root_and_spark_gets_what_it_needs():
    from resources import EmrSparkResource, HdfsStorage, S3Storage, Settings, resources_for

    r = resources_for("local", Settings(data_root="s3://bucket/platform", s3_endpoint="http://127.0.0.1:9000"))
    assert isinstance(r["storage"], S3Storage) and r["spark"].storage == r["storage"]
    assert r["storage"].jar_groups() == ["aws"], "s3a needs hadoop-aws on Spark's classpath"
    conf = r["spark"].spark_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert not any("secret" in k.lower() or "access.key" in k.lower() for k in conf), "credentials in Spark conf"
    r = resources_for("cluster", Settings(data_root="hdfs://nn:8020/platform", spark_master_url="spark://m:7077"))
    assert isinstance(r["storage"], HdfsStorage) and r["storage"].jar_groups() == []
    r = resources_for("emr", Settings(data_root="s3://b/p", emr={"entry_point": "s3://b/code/emr_job.py",
                                                                  "pipes_bucket": "b", "core_instances": 3}))
    assert isinstance(r["spark"], EmrSparkResource)
    assert r["spark"].job_flow_params("clean", "used_cars")["Instances"]["InstanceGroups"][1]["InstanceCount"] == 3
