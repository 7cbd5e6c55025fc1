"""Dataset specs: the one description of a dataset that drives parsing, cleaning, checks and training.

A spec is a YAML file in a spec directory (the shipped examples are in ml_platform/specs). A new CSV dataset needs
a spec, not code: `ml-platform spec infer data.csv --target COLUMN` writes a starter one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PARSE_RULES = {"string", "category", "number", "unit", "bool", "date", "rating", "drop"}
DERIVE_RULES = {"years_between", "per_year"}
TASKS = {"regression", "classification", "multiclass", "clustering", "recommendation"}
# the algorithm names each task accepts; train/algorithms.REGISTRY implements exactly these (a test holds them equal)
ALGORITHMS = {
    "regression": ("gbt", "random_forest", "linear", "glm", "xgboost", "weighted_average"),
    "classification": ("logistic", "linear_svc", "random_forest", "gbt", "xgboost", "naive_bayes"),
    # gbt and linear_svc are binary in Spark: a one-vs-rest wrapper trains one per class
    "multiclass": ("logistic", "random_forest", "naive_bayes", "xgboost", "gbt", "linear_svc"),
    "clustering": ("kmeans", "bisecting_kmeans", "gmm"),
    "recommendation": ("als",),
}
SUPERVISED = {"regression", "classification", "multiclass"}
FEATURE_PARSES = {"number", "unit", "bool", "category", "rating"}
# source text meaning "unknown", as null: shared by cleaning (Spark), spec inference and label_value (plain Python)
MISSING_TOKENS = ("", "--", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")
# which parse rules a target may have: numeric labels are parsed, text labels are mapped by positive/classes
TARGET_PARSES = {"regression": {"number", "unit"}, "classification": {"number", "bool"},
                 "recommendation": {"number"}, "labels": {"string", "category"}}
TOP_FIELDS = ("name", "task", "target", "key", "newest_by", "label_range", "positive", "classes", "unlabelled",
              "columns", "derived", "checks", "algorithms", "training", "serving", "recommend")
COLUMN_FIELDS = ("name", "parse", "position", "required", "unit", "units", "range", "format", "strip")
DERIVED_FIELDS = ("name", "rule", "from")
CHECK_FIELDS = ("max_null_rate", "max_quarantine_share")
RECOMMEND_FIELDS = ("user", "item", "implicit", "top_n", "eval_k")
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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
    position: int | None = None  # a column whose header is empty, found by its place (0 = first) in the header

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
    extend_grid: bool = False          # a best setting at a numeric grid's edge: also try one step beyond it


CHALLENGER_MODES = ("off", "shadow", "split")
CHALLENGER_FIELDS = ("mode", "share", "gate_windows")


@dataclass(frozen=True)
class ChallengerSpec:
    """How a version under the `challenger` alias (not yet promoted) serves. shadow: it also scores every request,
    its predictions go to `<ds>.shadow` and the live metrics, never to the caller; split: the requests whose
    request_id hashes under `share` are answered by it (serve/routing.py). gate_windows N > 0: a released model
    becomes challenger and is promoted once its live metrics are no worse than the champion's over N windows."""

    mode: str = "off"
    share: float = 0.1
    gate_windows: int = 0


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
    # the feedback loop (serve/feedback.py): actuals joined to their requests land as a labelled batch
    feedback_cron: str | None = "0 0 * * *"  # when <ds>/feedback collects on its own (None: only on degradation)
    feedback_min_rows: int = 20        # fewer new labelled rows wait for the next collection
    challenger: ChallengerSpec = field(default_factory=ChallengerSpec)


@dataclass(frozen=True)
class RecommendSpec:
    """A recommendation dataset's columns: who (user), what (item); the spec's target is the rating, or with
    `implicit` a count of interactions (views, plays, purchases). Top-N lists hold `top_n` items; precision@k and
    NDCG@k are measured at k = `eval_k`."""

    user: str
    item: str
    implicit: bool = False
    top_n: int = 10
    eval_k: int = 10


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    target: str | None                 # None only for clustering, which has no label
    key: str | None
    label_range: tuple[float, float]
    columns: tuple[ColumnSpec, ...]
    derived: tuple[DerivedSpec, ...] = ()
    max_null_rate: dict[str, float] = field(default_factory=dict)
    max_quarantine_share: float = 0.25
    algorithms: dict[str, dict[str, Any]] = field(default_factory=dict)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    serving: ServingSpec = field(default_factory=ServingSpec)
    positive: str | None = None        # text labels: this one is class 1, every other label class 0
    classes: tuple[str, ...] = ()      # text labels: listed as [class 0, class 1]; others are quarantined
    unlabelled: tuple[Any, ...] = ()   # target values meaning "no label": floats (numeric) or texts (labels)
    # which row of a key silver keeps when batches disagree: the greater value of this column (say, the newest
    # listed_date), ties and nulls going to the later batch; None: the later batch always wins
    newest_by: str | None = None
    recommend: RecommendSpec | None = None  # recommendation: the user and item columns

    @property
    def supervised(self) -> bool:
        """Regression and (binary or multi-class) classification: a label, a stack, live quality from actuals."""
        return self.task in SUPERVISED

    @property
    def text_labels(self) -> bool:
        """The target is text mapped to 0/1 by `positive` or `classes`, or to 0..K-1 by `classes` (multiclass)."""
        return bool(self.positive is not None or self.classes)

    def label_value(self, text: Any) -> float | None:
        """The label cleaning gives a raw target value (0.0/1.0 for classification, the class's index for
        multiclass), in plain Python for producers of actuals; None where cleaning would keep no label (missing,
        unlabelled, unknown or out of range, or a clustering spec, which has none)."""
        if self.target is None:
            return None
        t = str(text if text is not None else "").strip().translate({ord(c): None for c in self.column(
            self.target).strip or ""})
        if t in MISSING_TOKENS:
            return None
        if self.text_labels:
            if t in self.unlabelled:
                return None
            if self.classes:
                return float(self.classes.index(t)) if t in self.classes else None
            return 1.0 if t == self.positive else 0.0
        try:
            v = float(t.replace(",", ""))
        except ValueError:
            return None
        lo, hi = self.label_range
        return None if v in self.unlabelled or not lo <= v <= hi else v

    def raw_label(self, value: float) -> str:
        """The target as a batch file spells it, for a label as actuals carry it (label_value's inverse): a class
        index becomes its text, a number stays a number. ValueError when cleaning would not read it back."""
        if self.target is None:
            raise ValueError(f"{self.name} has no target: a clustering spec takes no labels")
        v = float(value)
        if self.classes:
            if v != int(v) or not 0 <= v < len(self.classes):
                raise ValueError(f"actual {value!r} is not a class index 0..{len(self.classes) - 1}")
            text = self.classes[int(v)]
        elif self.positive is not None:
            if v not in (0.0, 1.0):
                raise ValueError(f"actual {value!r} is not 0 or 1")
            text = self.positive if v == 1.0 else next(t for t in ("0", "no", "negative", f"not {self.positive}")
                                                        if t != self.positive and t not in self.unlabelled)
        elif self.task == "classification" and v not in (0.0, 1.0):
            raise ValueError(f"actual {value!r} is not 0 or 1")
        else:
            text = repr(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)
        if self.label_value(text) != (1.0 if self.positive is not None and v == 1.0 else
                                      0.0 if self.positive is not None else v):
            raise ValueError(f"actual {value!r} is not a label {self.name} keeps (outside label_range "
                             f"{list(self.label_range)}, or one of unlabelled)")
        return text

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
        req = ([self.target] if self.target else []) + ([self.key] if self.key else [])
        return req + [c.name for c in self.columns if c.required and c.name not in req]

    @property
    def cleaned_columns(self) -> list[str]:
        out = [n for c in self.columns for n in c.output_names()]
        return out + [d.name for d in self.derived]

    def feature_columns(self) -> tuple[list[str], list[str]]:
        """(numeric, categorical) cleaned columns the models use: every parsed column but the target, the key,
        free strings, dates and what `training.exclude` names. Booleans count as numeric (0/1)."""
        skip = {self.target, self.key, *self.training.exclude}
        if self.recommend:  # the user and item are ALS's own inputs, not features
            skip |= {self.recommend.user, self.recommend.item}
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


def _only(src: str, where: str, raw: dict, allowed: tuple[str, ...]) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        what = "field" if len(unknown) == 1 else "fields"
        raise _fail(src, f"{where} has unknown {what} {', '.join(repr(str(k)) for k in unknown)}; "
                         f"allowed: {', '.join(allowed)}")


def _column(src: str, i: int, raw: dict) -> ColumnSpec:
    where = f"columns[{i}]"
    if not isinstance(raw, dict) or "name" not in raw or "parse" not in raw:
        raise _fail(src, f"{where} needs 'name' and 'parse', got {raw!r}")
    _only(src, where, raw, COLUMN_FIELDS)
    name, parse, pos = raw["name"], raw["parse"], raw.get("position")
    if not isinstance(name, str) or not name.strip():
        raise _fail(src, f"{where}: name must be a non-empty text, got {name!r}; a column whose header is empty is "
                         "declared by position, e.g. {position: 0, name: row_index, parse: drop}")
    if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int) or pos < 0):
        raise _fail(src, f"{where} ({name}): position must be a column number (0 = first), got {pos!r}")
    if parse not in PARSE_RULES:
        raise _fail(src, f"{where} ({name}): unknown parse rule {parse!r}; one of {sorted(PARSE_RULES)}")
    if parse == "unit" and not raw.get("unit"):
        raise _fail(src, f"{where} ({name}): parse 'unit' needs 'unit'")
    if parse == "rating" and len(raw.get("units") or []) != 2:
        raise _fail(src, f"{where} ({name}): parse 'rating' needs two 'units', e.g. [hp, rpm]")
    rng = raw.get("range")
    if rng is not None and (not isinstance(rng, list) or len(rng) != 2):
        raise _fail(src, f"{where} ({name}): range must be [low, high], got {rng!r}")
    return ColumnSpec(
        name=name,
        parse=parse,
        required=bool(raw.get("required", False)),
        unit=raw.get("unit"),
        units=tuple(raw.get("units") or ()),
        range=(float(rng[0]), float(rng[1])) if rng else None,
        format=raw.get("format"),
        strip=raw.get("strip"),
        position=pos,
    )


def _columns(src: str, raw) -> tuple[ColumnSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(src, "columns must be a non-empty list of {name, parse} entries")
    columns = tuple(_column(src, i, c) for i, c in enumerate(raw))
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(src, f"duplicate columns {dupes}")
    positions = [c.position for c in columns if c.position is not None]
    if len(set(positions)) != len(positions):
        raise _fail(src, f"two columns declare the same position: {sorted(positions)}")
    return columns


def _label(src: str, where: str, v) -> str:
    """A class label as the text it has in the file. YAML reads Yes/No/true as booleans, which would not match."""
    if isinstance(v, bool) or v is None or not isinstance(v, str | int | float):
        raise _fail(src, f"{where}: {v!r} is not a label; quote labels as they appear in the file, e.g. 'Yes'")
    return str(v)


def _labels(src: str, data: dict, target: ColumnSpec) -> tuple[str | None, tuple[str, ...]]:
    """(positive, classes) of a classification target; numeric 0/1 targets have neither. A multiclass target
    lists its classes (index 0..K-1, in that order)."""
    task = data["task"]
    positive, classes = data.get("positive"), data.get("classes")
    if task == "multiclass":
        if positive is not None:
            raise _fail(src, "positive is for binary classification; a multiclass spec lists classes: [a, b, c, ...]")
        if target.parse not in TARGET_PARSES["labels"]:
            raise _fail(src, f"target {target.name!r} of a multiclass spec needs parse string or category (class "
                             f"codes such as 1, 2, 3 too), got {target.parse!r}")
    if positive is None and classes is None:
        if task == "multiclass":
            raise _fail(src, "a multiclass spec lists its classes: classes: [a, b, c, ...] as they appear in the file")
        if target.parse not in TARGET_PARSES[task]:
            hint = " or give 'positive: <label>' / 'classes: [negative, positive]'" if task == "classification" else ""
            raise _fail(src, f"target {target.name!r} has parse {target.parse!r}; a {task} target needs parse "
                             f"{' or '.join(sorted(TARGET_PARSES[task]))}{hint}")
        return None, ()
    if task not in ("classification", "multiclass"):
        raise _fail(src, f"positive / classes are for classification targets; this spec's task is {task}")
    if positive is not None and classes is not None:
        raise _fail(src, "give either positive (binary: every other label is the negative class) or classes "
                         "([negative, positive]), not both")
    if target.parse not in TARGET_PARSES["labels"]:
        raise _fail(src, f"target {target.name!r} with positive/classes needs parse string or category, "
                         f"got {target.parse!r}")
    if "label_range" in data:
        raise _fail(src, "label_range is for numeric labels; with positive/classes the labels map to class indices")
    if positive is not None:
        return _label(src, "positive", positive), ()
    if not isinstance(classes, list):
        raise _fail(src, f"classes must be a list of labels, got {classes!r}")
    labels = tuple(_label(src, f"classes[{i}]", c) for i, c in enumerate(classes))
    if len(set(labels)) != len(labels):
        raise _fail(src, f"classes lists a label twice: {list(labels)}")
    if task == "multiclass" and len(labels) < 3:
        raise _fail(src, f"a multiclass spec needs three or more classes, got {list(labels)}; two classes are "
                         "task: classification with classes: [negative, positive]")
    if task == "classification" and len(labels) != 2:
        raise _fail(src, f"classes lists {len(labels)} labels {list(labels)}: binary classification takes "
                         "[negative, positive]; for more classes use task: multiclass")
    return None, labels


def _recommend(src: str, data: dict, columns: tuple[ColumnSpec, ...]) -> RecommendSpec | None:
    raw = data.get("recommend")
    if data["task"] != "recommendation":
        if raw is not None:
            raise _fail(src, f"recommend is for task recommendation; this spec's task is {data['task']}")
        return None
    if not isinstance(raw, dict) or "user" not in raw or "item" not in raw:
        raise _fail(src, "a recommendation spec needs recommend: {user: <column>, item: <column>} (the target is "
                         "the rating, or with implicit: true a count of interactions)")
    _only(src, "recommend", raw, RECOMMEND_FIELDS)
    for f in ("user", "item"):
        c = _column_ref(src, raw, f, columns)
        if c.name in (data.get("target"), data.get("key")):
            raise _fail(src, f"recommend.{f} {c.name!r} is also the target or the key")
    if raw["user"] == raw["item"]:
        raise _fail(src, f"recommend.user and recommend.item are the same column {raw['user']!r}")
    r = RecommendSpec(**raw)
    for f in ("top_n", "eval_k"):
        v = getattr(r, f)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
            raise _fail(src, f"recommend.{f} must be a whole number in [1, 1000], got {v!r}")
    if not isinstance(r.implicit, bool):
        raise _fail(src, f"recommend.implicit must be true or false, got {r.implicit!r}")
    return r


def _unlabelled(src: str, raw, text_labels: bool) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(src, f"unlabelled must be a list of target values that mean 'no label', got {raw!r}")
    if text_labels:
        return tuple(_label(src, f"unlabelled[{i}]", v) for i, v in enumerate(raw))
    out = []
    for i, v in enumerate(raw):
        try:
            out.append(float(str(v).replace(",", "")) if not isinstance(v, bool) else None)
        except ValueError:
            out.append(None)
        if out[-1] is None:
            raise _fail(src, f"unlabelled[{i}]: {v!r} is not a number; the target is numeric")
    return tuple(out)


def _column_ref(src: str, data: dict, field_name: str, columns: tuple[ColumnSpec, ...]) -> ColumnSpec | None:
    v = data.get(field_name)
    if v is None:
        return None
    names = [c.name for c in columns]
    if v == "":
        raise _fail(src, f"{field_name} is empty; name the column as declared under columns (a column whose header "
                         f"is empty is declared with position: and a name, and named by that name here)"
                         + ("; for no key write key: null" if field_name == "key" else ""))
    if not isinstance(v, str) or v not in names:
        raise _fail(src, f"{field_name} {v!r} is not among the columns; declared: {names}")
    c = columns[names.index(v)]
    if c.parse == "drop":
        raise _fail(src, f"{field_name} {v!r} has parse 'drop'; the {field_name} must be kept")
    return c


def parse_spec(data: dict, src: str = "<memory>") -> DatasetSpec:
    """Build and validate a spec from parsed YAML; every error names `src`, the field and what is allowed."""
    if not isinstance(data, dict):
        raise _fail(src, "top level must be a mapping")
    _only(src, "the top level", data, TOP_FIELDS)
    for k in ("name", "task", "columns"):
        if k not in data:
            raise _fail(src, f"missing '{k}'")
    if not isinstance(data["name"], str) or not NAME.fullmatch(data["name"]):
        raise _fail(src, f"name must be letters, digits and _ starting with a letter (it prefixes asset keys and "
                         f"topics), got {data['name']!r}")
    if data["task"] not in TASKS:
        raise _fail(src, f"task must be one of {sorted(TASKS)}, got {data['task']!r}")
    columns = _columns(src, data["columns"])
    if data["task"] == "clustering":
        if data.get("target") is not None:
            raise _fail(src, f"a clustering spec has no target (clusters are found, not learned from a label); "
                             f"remove target: {data['target']!r}, or list it under training.exclude as a column")
        for k in ("positive", "classes", "label_range", "unlabelled"):
            if k in data:
                raise _fail(src, f"{k} is about a target; a clustering spec has none")
        target = None
    else:
        target = _column_ref(src, data, "target", columns)
        if target is None:
            raise _fail(src, f"missing 'target': a {data['task']} spec learns it; name a column")
    _column_ref(src, data, "key", columns)
    if target is not None and data.get("key") == target.name:
        raise _fail(src, f"key and target are the same column {target.name!r}")
    positive, classes = _labels(src, data, target) if target is not None else (None, ())
    recommend = _recommend(src, data, columns)
    known = {n for c in columns for n in c.output_names()}
    derived = []
    for i, d in enumerate(data.get("derived") or []):
        if not isinstance(d, dict):
            raise _fail(src, f"derived[{i}] must be a mapping with {', '.join(DERIVED_FIELDS)}")
        _only(src, f"derived[{i}]", d, DERIVED_FIELDS)
        if d.get("rule") not in DERIVE_RULES:
            raise _fail(src, f"derived[{i}]: unknown rule {d.get('rule')!r}; one of {sorted(DERIVE_RULES)}")
        missing = [x for x in d.get("from", []) if x not in known]
        if missing or len(d.get("from", [])) != 2:
            raise _fail(src, f"derived[{i}] ({d.get('name')}): needs two known inputs, unknown: {missing}")
        if not d.get("name") or d["name"] in known:
            raise _fail(src, f"derived[{i}]: name {d.get('name')!r} is missing or already a column")
        derived.append(DerivedSpec(d["name"], d["rule"], tuple(d["from"])))
        known.add(d["name"])
    newest_by = data.get("newest_by")
    if newest_by is not None and (not data.get("key") or newest_by not in known):
        raise _fail(src, f"newest_by {newest_by!r} must be a cleaned column of a spec with a key (it picks which "
                         f"row of a key is current); cleaned columns: {sorted(known)}")
    checks = data.get("checks") or {}
    if not isinstance(checks, dict):
        raise _fail(src, f"checks must be a mapping with {', '.join(CHECK_FIELDS)}")
    _only(src, "checks", checks, CHECK_FIELDS)
    bad_null = [c for c in (checks.get("max_null_rate") or {}) if c not in known]
    if bad_null:
        raise _fail(src, f"checks.max_null_rate names unknown columns {bad_null}; cleaned columns: {sorted(known)}")
    share = float(checks.get("max_quarantine_share", 0.25))
    if not 0 <= share <= 1:
        raise _fail(src, f"checks.max_quarantine_share must be in [0, 1], got {share}")
    training = _training(src, data.get("training") or {}, known)
    _algorithms_fit(src, data["task"], data.get("algorithms") or {})
    lr = data.get("label_range") or ([0, max(1, len(classes) - 1)] if positive is not None or classes
                                     else [float("-inf"), float("inf")])
    spec = DatasetSpec(
        name=str(data["name"]),
        task=data["task"],
        target=target.name if target is not None else None,
        key=data.get("key"),
        newest_by=newest_by,
        label_range=(float(lr[0]), float(lr[1])),
        columns=columns,
        derived=tuple(derived),
        max_null_rate={k: float(v) for k, v in (checks.get("max_null_rate") or {}).items()},
        max_quarantine_share=share,
        algorithms=dict(data.get("algorithms") or {}),
        training=training,
        serving=_serving(src, data.get("serving") or {}),
        positive=positive,
        classes=classes,
        unlabelled=_unlabelled(src, data.get("unlabelled"), positive is not None or bool(classes)),
        recommend=recommend,
    )
    if spec.task == "clustering" and not spec.feature_columns()[0]:
        raise _fail(src, "clustering needs numeric features (distances are measured on them); this spec has "
                         f"none: categorical {spec.feature_columns()[1]}, excluded {list(spec.training.exclude)}")
    return spec


def _algorithms_fit(src: str, task: str, algorithms: Any) -> None:
    if not isinstance(algorithms, dict):
        raise _fail(src, "algorithms must be a mapping of algorithm name to its search space")
    for name in algorithms:
        if name in ALGORITHMS.get(task, ()):
            continue
        other = [t for t, names in ALGORITHMS.items() if name in names]
        fits = f"; {name!r} is a {' and '.join(other)} algorithm" if other else ""
        raise _fail(src, f"algorithms.{name} does not fit task {task!r}{fits}; a {task} spec may use "
                         f"{', '.join(ALGORITHMS.get(task, ()))}")


SERVING_METRICS = {"regression": {"rmse", "mae"}, "classification": {"precision", "recall", "pr_auc_approx"},
                   "multiclass": {"accuracy"}, "recommendation": {"rmse", "mae"}, "clustering": set()}


def _serving(src: str, raw: dict) -> ServingSpec:
    if not isinstance(raw, dict):
        raise _fail(src, "serving must be a mapping")
    _only(src, "serving", raw, tuple(ServingSpec.__dataclass_fields__))
    s = ServingSpec(**{k: v for k, v in raw.items() if k != "challenger"},
                    challenger=_challenger(src, raw.get("challenger") or {}))
    if (s.degrade_metric is None) != (s.degrade_threshold is None):
        raise _fail(src, "serving.degrade_metric and serving.degrade_threshold go together")
    if s.degrade_metric and s.degrade_metric not in set().union(*SERVING_METRICS.values()):
        raise _fail(src, f"serving.degrade_metric {s.degrade_metric!r} is not a live metric")
    if not 1 <= s.degrade_n <= s.degrade_m:
        raise _fail(src, f"serving.degrade_n must be in [1, degrade_m], got {s.degrade_n} of {s.degrade_m}")
    if s.feedback_cron is not None and not (isinstance(s.feedback_cron, str) and len(s.feedback_cron.split()) == 5):
        raise _fail(src, f"serving.feedback_cron must be a cron string of 5 fields (e.g. '0 0 * * *') or null, got "
                         f"{s.feedback_cron!r}")
    if isinstance(s.feedback_min_rows, bool) or not isinstance(s.feedback_min_rows, int) or s.feedback_min_rows < 1:
        raise _fail(src, f"serving.feedback_min_rows must be a whole number >= 1, got {s.feedback_min_rows!r}")
    return s


def _challenger(src: str, raw) -> ChallengerSpec:
    if not isinstance(raw, dict):
        raise _fail(src, f"serving.challenger must be a mapping with {', '.join(CHALLENGER_FIELDS)}, got {raw!r}")
    _only(src, "serving.challenger", raw, CHALLENGER_FIELDS)
    c = ChallengerSpec(**raw)
    if c.mode not in CHALLENGER_MODES:
        raise _fail(src, f"serving.challenger.mode must be one of {', '.join(CHALLENGER_MODES)}, got {c.mode!r}")
    if isinstance(c.share, bool) or not isinstance(c.share, int | float) or not 0 < c.share < 1:
        raise _fail(src, f"serving.challenger.share must be a number in (0, 1) (the split's share of traffic), got "
                         f"{c.share!r}")
    if isinstance(c.gate_windows, bool) or not isinstance(c.gate_windows, int) or c.gate_windows < 0:
        raise _fail(src, f"serving.challenger.gate_windows must be a whole number of windows >= 0 (0: no live gate), "
                         f"got {c.gate_windows!r}")
    if c.gate_windows and c.mode == "off":
        raise _fail(src, "serving.challenger.gate_windows needs mode shadow or split: a challenger that does not "
                         "serve has no live metrics to be judged on")
    return dataclasses.replace(c, share=float(c.share))


def _training(src: str, raw: dict, known: set[str]) -> TrainingSpec:
    if not isinstance(raw, dict):
        raise _fail(src, "training must be a mapping")
    _only(src, "training", raw, tuple(TrainingSpec.__dataclass_fields__))
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
    if not isinstance(t.extend_grid, bool):
        raise _fail(src, f"training.extend_grid must be true or false, got {t.extend_grid!r}")
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
