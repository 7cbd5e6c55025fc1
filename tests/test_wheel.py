"""What a user installs is what the tree is: every third-party import is declared, and the wheel alone (no source
tree on the path) holds every module, spec, contract and the simulator, and its console script runs."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["ml_platform", "api", "assets", "resources", "sensors", "spark_streaming"]
PRODUCT = [*PACKAGES, "definitions.py"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _product_files() -> list[Path]:
    return [p for top in PRODUCT for p in ([ROOT / top] if top.endswith(".py") else sorted((ROOT / top).rglob("*.py")))]


def test_every_third_party_import_is_declared():
    """A library the product code imports must be a direct dependency in pyproject.toml (not the dev extra, not
    something another package happens to bring), or a fresh install can lack it."""
    declared = {_norm(re.match(r"[A-Za-z0-9._-]+", r).group())
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    ours = {Path(t).stem for t in PRODUCT}
    users: dict[str, list[str]] = {}
    for path in _product_files():
        for name in _imports(path) - ours - set(sys.stdlib_module_names):
            users.setdefault(name, []).append(str(path.relative_to(ROOT)))
    dists = metadata.packages_distributions()
    assert {"pyspark", "dagster", "mlflow"} <= set(users), "the import scan found no product imports"
    problems = []
    for name, files in sorted(users.items()):
        if name not in dists:
            problems.append(f"{name} (imported in {files[0]}) is not installed, so its distribution is unknown")
        elif not declared.intersection(_norm(d) for d in dists[name]):
            problems.append(f"{name} (imported in {files[0]}) comes from {dists[name]}, which pyproject.toml's "
                            "[project] dependencies do not declare")
    assert not problems, "\n".join(problems)


def _uv() -> str:
    uv = ROOT / ".tools" / "uv" / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    assert found, "uv is missing: `make setup-run` installs it into .tools/uv"
    return found


def _run(cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env | {"UV_PYTHON_DOWNLOADS": "never"},
                       **kw)
    assert r.returncode == 0 or not check, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


# Runs inside the wheel's venv, from a folder outside the tree: imports every module the wheel has and reports what
# it found, so the test can compare it with the source tree.
PROBE = """
import importlib, json, pkgutil, sys, tempfile
from importlib import resources
from pathlib import Path
tops = json.loads(sys.argv[1])
names, outside, data = [], [], []
for top in tops:
    pkg = importlib.import_module(top)
    names.append(top)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, top + ".")]
for name in names + ["definitions"]:
    mod = importlib.import_module(name)
    if not str(mod.__file__).startswith(sys.prefix):
        outside.append(f"{name}: {mod.__file__}")
root = resources.files("ml_platform")
data = sorted(str(Path(p).relative_to(str(root))) for p in Path(str(root)).rglob("*")
              if p.suffix in (".json", ".yaml", ".yml"))
web_root = Path(str(resources.files("api.web")))
web = sorted(str(p.relative_to(web_root)) for p in web_root.rglob("*") if p.suffix in (".html", ".js", ".css"))
from ml_platform.spec import load_spec_dir
specs = load_spec_dir()
from ml_platform.local.simulate import SimConfig, write_batch
batch = write_batch(SimConfig("used_cars", rows_per_batch=20), 1, Path(tempfile.mkdtemp()), None)
print(json.dumps({"modules": sorted(names), "outside": outside, "data": data, "web": web, "specs": sorted(specs.specs),
                  "spec_errors": specs.errors, "batch_lines": len(batch.read_text().splitlines())}))
"""


@pytest.mark.slow
def test_wheel_installs_alone_and_has_every_module_spec_and_contract(tmp_path):
    uv = _uv()
    # build from a copy of what the wheel is made of: setuptools' build/ left in the tree could carry stale modules
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "definitions.py"):
        shutil.copy(ROOT / name, src / name)
    _run([uv, "build", "--wheel", "--offline", "--quiet", "--out-dir", str(tmp_path / "dist"), str(src)])
    wheel = next((tmp_path / "dist").glob("ml_platform-*.whl"))

    # only the wheel's own requirements, at the versions uv.lock pins, from uv's cache (no network)
    pins = tmp_path / "pins.txt"
    _run([uv, "export", "--frozen", "--no-emit-project", "--no-hashes", "--no-header", "-o", str(pins)], cwd=ROOT)
    venv = tmp_path / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    py = str(venv / "bin" / "python")
    install = [uv, "pip", "install", "--quiet", "--python", py, "-c", str(pins), str(wheel)]
    if _run([*install, "--offline"], check=False).returncode != 0:
        # a venv that pip filled before uv (no wheels in uv's cache yet): fetch them once from the registry
        _run(install)

    help_text = _run([str(venv / "bin" / "ml-platform"), "--help"], cwd=tmp_path).stdout
    assert help_text.startswith("usage: ml-platform") and "simulate" in help_text

    got = json.loads(_run([py, "-c", PROBE, json.dumps(PACKAGES)], cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert got["outside"] == [], f"imported from outside the wheel's venv: {got['outside']}"
    tree_modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for top in PACKAGES for p in (ROOT / top).rglob("*.py"))
    assert got["modules"] == tree_modules, f"wheel and tree differ: {set(tree_modules) ^ set(got['modules'])}"
    tree_data = sorted(str(p.relative_to(ROOT / "ml_platform")) for p in (ROOT / "ml_platform").rglob("*")
                       if p.suffix in (".json", ".yaml", ".yml"))
    assert got["data"] == tree_data and any(d.startswith("serve/contracts/") for d in got["data"])
    tree_web = sorted(str(p.relative_to(ROOT / "api" / "web")) for p in (ROOT / "api" / "web").rglob("*")
                      if p.suffix in (".html", ".js", ".css"))
    assert got["web"] == tree_web and "templates/dataset.html" in got["web"]  # the web app's pages ship too

    from ml_platform.spec import load_spec_dir

    assert got["specs"] == sorted(load_spec_dir().specs) and got["specs"] and got["spec_errors"] == {}
    assert got["batch_lines"] > 20  # a header and 20 rows (broken rows may add lines)
