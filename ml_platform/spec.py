"""Dataset specs: the one description of a dataset that drives parsing, cleaning, checks and training.

A spec is a YAML file (ml_platform/specs/*.yaml). A new CSV dataset needs a spec, not code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PARSE_RULES = {"string", "category", "number", "unit", "bool", "date", "rating", "drop"}
DERIVE_RULES = {"years_between", "per_year"}
TASKS = {"regression", "classification"}
FEATURE_PARSES = {"number", "unit", "bool", "category", "rating"}


class SpecError(ValueError):
    """A spec that cannot be used; the message names the spec and the field."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    parse: str
    required: bool = False
    unit: str | None = None
    units: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    format: str | None = None
    strip: str | None = None

    def output_names(self) -> list[str]:
        """Columns this source column becomes in the cleaned table."""
        if self.parse == "drop":
            return []
        if self.parse == "rating":
            return [f"{self.name}_{u}" for u in self.units]
        return [self.name]


@dataclass(frozen=True)
class DerivedSpec:
    name: str
    rule: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class TrainingSpec:
    """How a dataset is trained and promoted. Every field has a default, so a spec may leave the block out."""

    window: int | None = None          # the last N accepted batches; None = all of them
    holdout: float = 0.2               # share of rows (by a hash of the key) kept out of training
    folds: int = 3
    seed: int = 7
    log_target: bool = False           # fit on log1p(target); metrics are reported on both scales
    exclude: tuple[str, ...] = ()      # cleaned columns never used as features
    max_categories: int = 32           # levels kept per categorical; the rest become '__other__'
    margin: float = 0.01               # challenger must beat the champion by this (relative RMSE / absolute PR-AUC)
    thresholds: dict[str, float] = field(default_factory=dict)  # min_r2, max_rmse, min_pr_auc, min_roc_auc
    parallelism: int = 2               # base models trained at once, and CV param maps in parallel


@dataclass(frozen=True)
class ServingSpec:
    """How the streaming scorer serves a dataset and judges live quality. Every field has a default."""

    window_seconds: int = 60           # live-metrics tumbling window, on the request's event_time
    actual_within_seconds: int = 120   # an actual counts only if it arrives this soon after its request
    watermark_seconds: int = 30        # lateness tolerated on predictions and actuals
    max_request_bytes: int = 262144    # larger requests go to the DLQ unparsed
    poll_seconds: float = 5.0          # how often the scorer checks where `champion` points
    degrade_metric: str | None = None  # rmse / mae (higher is worse) or precision / recall / pr_auc_approx
    degrade_threshold: float | None = None
    degrade_n: int = 3                 # retrain when N of the last M windows are past the threshold
    degrade_m: int = 5
    min_window_count: int = 20         # windows with fewer joined predictions are not judged


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    target: str
    key: str | None
    label_range: tuple[float, float]
    columns: tuple[ColumnSpec, ...]
    derived: tuple[DerivedSpec, ...] = ()
    max_null_rate: dict[str, float] = field(default_factory=dict)
    max_quarantine_share: float = 0.25
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    serving: ServingSpec = field(default_factory=ServingSpec)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def required_columns(self) -> list[str]:
        """Columns a batch file must have in its header; the others may be absent and become null."""
        req = [self.target] + ([self.key] if self.key else [])
        return req + [c.name for c in self.columns if c.required and c.name not in req]

    @property
    def cleaned_columns(self) -> list[str]:
        out = [n for c in self.columns for n in c.output_names()]
        return out + [d.name for d in self.derived]

    def feature_columns(self) -> tuple[list[str], list[str]]:
        """(numeric, categorical) cleaned columns the models use: every parsed column but the target, the key,
        free strings, dates and what `training.exclude` names. Booleans count as numeric (0/1)."""
        skip = {self.target, self.key, *self.training.exclude}
        numeric, categorical = [], []
        for c in self.columns:
            if c.parse not in FEATURE_PARSES:
                continue
            for name in c.output_names():
                if name not in skip:
                    (categorical if c.parse == "category" else numeric).append(name)
        numeric += [d.name for d in self.derived if d.name not in skip]
        return numeric, categorical


def _fail(src: str, msg: str) -> SpecError:
    return SpecError(f"spec {src}: {msg}")


def _column(src: str, i: int, raw: dict) -> ColumnSpec:
    where = f"columns[{i}]"
    if not isinstance(raw, dict) or "name" not in raw or "parse" not in raw:
        raise _fail(src, f"{where} needs 'name' and 'parse', got {raw!r}")
    parse = raw["parse"]
    if parse not in PARSE_RULES:
        raise _fail(src, f"{where} ({raw['name']}): unknown parse rule {parse!r}; one of {sorted(PARSE_RULES)}")
    if parse == "unit" and not raw.get("unit"):
        raise _fail(src, f"{where} ({raw['name']}): parse 'unit' needs 'unit'")
    if parse == "rating" and len(raw.get("units") or []) != 2:
        raise _fail(src, f"{where} ({raw['name']}): parse 'rating' needs two 'units', e.g. [hp, rpm]")
    rng = raw.get("range")
    return ColumnSpec(
        name=str(raw["name"]),
        parse=parse,
        required=bool(raw.get("required", False)),
        unit=raw.get("unit"),
        units=tuple(raw.get("units") or ()),
        range=(float(rng[0]), float(rng[1])) if rng else None,
        format=raw.get("format"),
        strip=raw.get("strip"),
    )


def parse_spec(data: dict, src: str = "<memory>") -> DatasetSpec:
    """Build and validate a spec from parsed YAML; every error names `src` and the field."""
    if not isinstance(data, dict):
        raise _fail(src, "top level must be a mapping")
    for k in ("name", "task", "target", "columns"):
        if k not in data:
            raise _fail(src, f"missing '{k}'")
    if data["task"] not in TASKS:
        raise _fail(src, f"task must be one of {sorted(TASKS)}, got {data['task']!r}")
    columns = tuple(_column(src, i, c) for i, c in enumerate(data["columns"]))
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(src, f"duplicate columns {dupes}")
    for k in ("target", "key"):
        if data.get(k) is not None and data[k] not in names:
            raise _fail(src, f"{k} {data[k]!r} is not among the columns")
    known = {n for c in columns for n in c.output_names()}
    derived = []
    for i, d in enumerate(data.get("derived") or []):
        if d.get("rule") not in DERIVE_RULES:
            raise _fail(src, f"derived[{i}]: unknown rule {d.get('rule')!r}; one of {sorted(DERIVE_RULES)}")
        missing = [x for x in d.get("from", []) if x not in known]
        if missing or len(d.get("from", [])) != 2:
            raise _fail(src, f"derived[{i}] ({d.get('name')}): needs two known inputs, unknown: {missing}")
        derived.append(DerivedSpec(d["name"], d["rule"], tuple(d["from"])))
        known.add(d["name"])
    checks = data.get("checks") or {}
    bad_null = [c for c in (checks.get("max_null_rate") or {}) if c not in known]
    if bad_null:
        raise _fail(src, f"checks.max_null_rate names unknown columns {bad_null}")
    training = _training(src, data.get("training") or {}, known)
    lr = data.get("label_range") or [float("-inf"), float("inf")]
    return DatasetSpec(
        name=str(data["name"]),
        task=data["task"],
        target=data["target"],
        key=data.get("key"),
        label_range=(float(lr[0]), float(lr[1])),
        columns=columns,
        derived=tuple(derived),
        max_null_rate={k: float(v) for k, v in (checks.get("max_null_rate") or {}).items()},
        max_quarantine_share=float(checks.get("max_quarantine_share", 0.25)),
        algorithms=dict(data.get("algorithms") or {}),
        training=training,
        serving=_serving(src, data.get("serving") or {}),
    )


SERVING_METRICS = {"regression": {"rmse", "mae"}, "classification": {"precision", "recall", "pr_auc_approx"}}


def _serving(src: str, raw: dict) -> ServingSpec:
    if not isinstance(raw, dict):
        raise _fail(src, "serving must be a mapping")
    unknown = sorted(set(raw) - set(ServingSpec.__dataclass_fields__))
    if unknown:
        raise _fail(src, f"serving has unknown fields {unknown}")
    s = ServingSpec(**raw)
    if (s.degrade_metric is None) != (s.degrade_threshold is None):
        raise _fail(src, "serving.degrade_metric and serving.degrade_threshold go together")
    if s.degrade_metric and s.degrade_metric not in set().union(*SERVING_METRICS.values()):
        raise _fail(src, f"serving.degrade_metric {s.degrade_metric!r} is not a live metric")
    if not 1 <= s.degrade_n <= s.degrade_m:
        raise _fail(src, f"serving.degrade_n must be in [1, degrade_m], got {s.degrade_n} of {s.degrade_m}")
    return s


def _training(src: str, raw: dict, known: set[str]) -> TrainingSpec:
    if not isinstance(raw, dict):
        raise _fail(src, "training must be a mapping")
    unknown = sorted(set(raw) - set(TrainingSpec.__dataclass_fields__))
    if unknown:
        raise _fail(src, f"training has unknown fields {unknown}")
    bad = [c for c in raw.get("exclude") or [] if c not in known]
    if bad:
        raise _fail(src, f"training.exclude names unknown columns {bad}")
    t = TrainingSpec(**{k: tuple(v) if k == "exclude" else v for k, v in raw.items()})
    if not 0 < t.holdout < 1:
        raise _fail(src, f"training.holdout must be in (0, 1), got {t.holdout}")
    if t.folds < 2:
        raise _fail(src, f"training.folds must be at least 2, got {t.folds}")
    if t.window is not None and t.window < 1:
        raise _fail(src, f"training.window must be a positive number of batches or absent, got {t.window}")
    return t


def load_spec(path: str | Path) -> DatasetSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"spec {path}: cannot read: {e}") from e
    return parse_spec(data, str(path))


def shipped_spec_dir() -> Path:
    """The example specs shipped with the package (used when no spec directory is configured)."""
    return Path(str(resources.files("ml_platform.specs")))


@dataclass
class SpecSet:
    """The specs of a directory: the good ones by dataset name, and the broken ones by file, each with its error,
    so one broken spec never takes the other datasets down."""

    directory: Path
    specs: dict[str, DatasetSpec] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # file name -> what is wrong (names file and field)


def load_spec_dir(directory: str | Path | None = None) -> SpecSet:
    """Every *.yaml / *.yml spec in `directory` (None: the shipped examples)."""
    d = Path(directory) if directory else shipped_spec_dir()
    out = SpecSet(d)
    if not d.is_dir():
        out.errors[str(d)] = f"spec directory {d} does not exist (ML_PLATFORM_SPECS)"
        return out
    for path in sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()):
        try:
            spec = load_spec(path)
        except SpecError as e:
            out.errors[path.name] = str(e)
            continue
        if spec.name in out.specs:
            out.errors[path.name] = f"spec {path}: name {spec.name!r} is already used by another spec in {d}"
            continue
        out.specs[spec.name] = spec
    return out


def builtin_specs() -> dict[str, DatasetSpec]:
    """The specs shipped in ml_platform/specs, by dataset name."""
    return load_spec_dir(None).specs
