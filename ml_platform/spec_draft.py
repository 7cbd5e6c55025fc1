"""A spec as an editable draft, for the web app's "new dataset" page: what spec inference guessed per column (parse
rule, why, sample values, null share), the task a chosen target implies, the algorithms that task takes with a
default search space each, and `compose` turning the user's choices into spec text that `parse_spec` accepts.

The guesses are spec_infer's own (one vocabulary with `ml-platform spec infer`); only the shape differs: a table to
edit instead of commented YAML. Plain Python over the file's first rows; the target is checked over the whole file
(`target_counts`), streamed, since one class or no label anywhere makes a dataset nothing can train on.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from ml_platform.spec import ALGORITHMS, FEATURE_PARSES, MISSING_TOKENS, NAME, SpecError, parse_spec
from ml_platform.spec_infer import CURRENCY, ID_NAME, InferError, _is_index, _number_text, guess_column, read_sample

MISSING = set(MISSING_TOKENS)
SUPERVISED_TASKS = ("regression", "classification", "multiclass")
# A small default search space per algorithm: a first model in minutes on two cores; the editor lets a user widen it
DEFAULT_GRIDS: dict[str, dict[str, dict[str, list]]] = {
    "regression": {"linear": {"regParam": [0.01, 0.1], "elasticNetParam": [0.0]},
                   "random_forest": {"numTrees": [30], "maxDepth": [8]},
                   "gbt": {"maxDepth": [4], "maxIter": [30]},
                   "glm": {"family": ["gaussian"], "link": ["identity"], "regParam": [0.01]},
                   "xgboost": {"max_depth": [4], "n_estimators": [60]},
                   "weighted_average": {"regParam": [0.0, 0.1]}},
    "classification": {"logistic": {"regParam": [0.001, 0.01], "elasticNetParam": [0.0]},
                       "random_forest": {"numTrees": [30], "maxDepth": [8]},
                       "gbt": {"maxDepth": [4], "maxIter": [30]},
                       "linear_svc": {"regParam": [0.01, 0.1]},
                       "xgboost": {"max_depth": [4], "n_estimators": [60]},
                       "naive_bayes": {"smoothing": [1.0]}},
    "multiclass": {"logistic": {"regParam": [0.001, 0.01]},
                   "random_forest": {"numTrees": [30], "maxDepth": [6]},
                   "naive_bayes": {"smoothing": [1.0]},
                   "xgboost": {"max_depth": [3], "n_estimators": [60]},
                   "gbt": {"maxDepth": [3], "maxIter": [20]},
                   "linear_svc": {"regParam": [0.01]}},
}
# what a new dataset trains unless the user picks otherwise: fast, and one linear plus one tree model
DEFAULT_PICKS = {"regression": ("linear", "random_forest"), "classification": ("logistic", "random_forest"),
                 "multiclass": ("logistic", "random_forest")}
EDITABLE_PARSES = ("number", "unit", "bool", "category", "string", "date", "drop")  # rating needs units: YAML only
SAMPLES = 5


class DraftError(ValueError):
    """A choice that cannot become a spec: the message names the field and what is allowed."""


@dataclass
class ColumnDraft:
    name: str
    parse: str
    why: str
    samples: list[str]
    null_share: float
    feature: bool
    unit: str | None = None       # parse unit
    format: str | None = None     # parse date (Spark's pattern)
    strip: str | None = None      # parse number: characters removed first (currency, %)
    position: int | None = None   # a header cell that was empty: the column is named by position


@dataclass
class Draft:
    file: str
    rows_sampled: int
    columns: list[ColumnDraft] = field(default_factory=list)
    key: str | None = None

    def as_json(self) -> dict:
        return asdict(self)


def draft(path: str | Path, sample_rows: int = 1000) -> Draft:
    """The inferred column table of the CSV at `path`; InferError (one line) on a file that is not one."""
    path = Path(path)
    header, rows = read_sample(path, sample_rows)
    named = [h or f"column_{i}" for i, h in enumerate(header)]
    dupes = sorted(n for n, c in Counter(named).items() if c > 1)
    if dupes:
        raise InferError(f"duplicate column names in the header: {dupes}; every column needs its own name")
    out = Draft(path.name, len(rows))
    for i, name in enumerate(named):
        raw = [r[i] for r in rows]
        present = [v.strip() for v in raw if v.strip() not in MISSING]
        if _is_index(raw, header[i]):
            entry, why = {"parse": "drop"}, "row numbers 0, 1, 2... (an index, not data)"
        else:
            entry, why = guess_column(name, raw)
        unique = len(present) == len(rows) and len(set(present)) == len(rows)
        if out.key is None and unique and ID_NAME.search(name) and entry["parse"] in ("string", "number", "category"):
            out.key, entry, why = name, {"parse": "string"}, "unique and never empty, named like an id: the key"
        out.columns.append(ColumnDraft(
            name=name, parse=entry["parse"], why=why, samples=list(dict.fromkeys(present))[:SAMPLES],
            null_share=round(1 - len(present) / len(rows), 4), feature=entry["parse"] in FEATURE_PARSES,
            unit=entry.get("unit"), format=entry.get("format"), strip=entry.get("strip"),
            position=None if header[i] else i))
    return out


def target_counts(text: TextIO, target: str, limit: int = 1000) -> tuple[Counter, int, int]:
    """(label counts, up to `limit` distinct, rows, rows without a label) of `target` over a whole CSV, read as a
    stream (`text`: the file opened as text with newline='')."""
    counts: Counter = Counter()
    rows = missing = 0
    reader = csv.reader(text)
    header = [h.strip() for h in next(reader, [])]
    if target not in header:
        raise DraftError(f"target {target!r} is not a column; columns: {header}")
    i = header.index(target)
    try:
        for r in reader:
            if not any(v.strip() for v in r):
                continue
            rows += 1
            v = r[i].strip() if i < len(r) else ""
            if v in MISSING:
                missing += 1
            elif v in counts or len(counts) < limit:
                counts[v] += 1
    except (csv.Error, UnicodeDecodeError) as e:
        raise DraftError(f"the file stops being readable CSV after row {rows + 1}: {e}") from None
    return counts, rows, missing


def implied_task(target: str, counts: Counter, rows: int, missing: int) -> dict:
    """The spec fields a target implies: task, its parse, and classes for labels; DraftError when nothing can
    learn from it (no label at all, or a single class)."""
    if not counts:
        raise DraftError(f"target {target!r} has no value in any of the {rows} rows: there is nothing to learn")
    strip = "".join(c for c in CURRENCY if any(c in v for v in counts))
    numbers = {v: _number_text(v, strip) for v in counts}
    numeric = all(t is not None for t in numbers.values())
    if len(counts) == 1:
        (only,) = counts
        raise DraftError(f"target {target!r} has a single value ({only!r}) in all {rows - missing} labelled rows: a "
                         f"model needs at least two classes or a range of numbers")
    shown = ", ".join(f"{v!r} ×{c}" for v, c in counts.most_common(4)) + (", …" if len(counts) > 4 else "")
    if numeric and {float(t) for t in numbers.values()} <= {0.0, 1.0}:
        return {"task": "classification", "parse": "number", "label_range": [0, 1],
                "why": f"0/1 labels ({shown}): binary classification, 1 is the positive class"}
    if numeric and len(counts) > 2:
        return {"task": "regression", "parse": "number", "strip": strip or None,
                "why": f"numbers with {len(counts)}{'+' if len(counts) >= 1000 else ''} distinct values: regression"}
    labels = sorted(counts, key=lambda v: (-counts[v], v))
    if len(counts) == 2:
        neg, pos = labels  # the rarer label is the class to detect
        return {"task": "classification", "parse": "category", "classes": [neg, pos],
                "why": f"two labels ({shown}): binary classification, {pos!r} (the rarer) is the positive class"}
    return {"task": "multiclass", "parse": "category", "classes": sorted(counts),
            "why": f"{len(counts)} labels ({shown}): multi-class classification"}


def algorithms_for(task: str) -> dict[str, dict]:
    """Every algorithm the task takes, with its default search space (the spec vocabulary's order)."""
    return {a: DEFAULT_GRIDS[task].get(a, {}) for a in ALGORITHMS[task]}


def compose(name: str, columns: list[ColumnDraft], target: str, implied: dict, algorithms: dict[str, dict],
            key: str | None = None) -> str:
    """The spec text for these choices, validated by `parse_spec`; DraftError says which choice is wrong."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > 64:
        raise DraftError(f"dataset name {str(name)[:80]!r}: use letters, digits and _ (at most 64), starting with a "
                         f"letter; it names files, asset keys and Kafka topics")
    task = implied["task"]
    if not algorithms:
        raise DraftError(f"pick at least one algorithm; {task} takes {', '.join(ALGORITHMS[task])}")
    bad = sorted(set(algorithms) - set(ALGORITHMS[task]))
    if bad:
        raise DraftError(f"algorithms {bad} do not train a {task} model; choose from {', '.join(ALGORITHMS[task])}")
    entries, exclude = [], []
    for c in columns:
        if c.parse not in EDITABLE_PARSES:
            raise DraftError(f"column {c.name!r}: type {c.parse!r} is not one of {', '.join(EDITABLE_PARSES)}")
        e: dict = {"position": c.position} if c.position is not None else {}
        e["name"] = c.name
        if c.name == target:
            e["parse"] = implied["parse"]
            if implied.get("strip"):
                e["strip"] = implied["strip"]
            entries.append(e)
            continue
        e["parse"] = "string" if c.name == key and c.parse == "drop" else c.parse
        if c.name == key:
            e["required"] = True  # a row (or a request) without its key is refused, with the reason
        if c.parse == "unit":
            if not c.unit:
                raise DraftError(f"column {c.name!r}: type unit needs the unit its values carry, e.g. km")
            e["unit"] = c.unit
        if c.parse == "date":
            e["format"] = c.format or "yyyy-MM-dd"
        if c.parse == "number" and c.strip:
            e["strip"] = c.strip
        entries.append(e)
        if c.parse in FEATURE_PARSES and not c.feature:
            exclude.append(c.name)
    if not any(c.parse in FEATURE_PARSES and c.feature and c.name != target for c in columns):
        raise DraftError("no feature left: mark at least one column of type number, unit, bool or category as a "
                         "feature")
    spec: dict = {"name": name, "task": task, "target": target}
    if key and key != target:
        spec["key"] = key
    for k in ("label_range", "classes"):
        if implied.get(k) is not None:
            spec[k] = implied[k]
    spec["columns"] = entries
    spec["checks"] = {"max_quarantine_share": 0.25}
    spec["algorithms"] = {a: {"grid": _grid(a, g)} for a, g in algorithms.items()}
    spec["training"] = {"holdout": 0.2, "folds": 3} | ({"exclude": exclude} if exclude else {})
    text = ("# Written by the web app's new-dataset page; edit it like any spec (README: Datasets)\n"
            + yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=120))
    try:
        parse_spec(yaml.safe_load(text), f"{name} (new dataset)")
    except SpecError as e:
        raise DraftError(str(e).split(": ", 1)[-1]) from None
    return text


def _grid(algorithm: str, grid) -> dict:
    if not isinstance(grid, dict) or not grid:
        raise DraftError(f"{algorithm}: the search space must be a mapping of parameter to a list of values, e.g. "
                         f"{DEFAULT_GRIDS['regression'].get(algorithm) or {'regParam': [0.01]}}")
    out = {}
    for k, v in grid.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise DraftError(f"{algorithm}: {str(k)[:40]!r} is not a parameter name")
        values = v if isinstance(v, list) else [v]
        if not values or not all(isinstance(x, str | int | float | bool) for x in values):
            raise DraftError(f"{algorithm}.{k}: give a list of numbers, words or true/false, got {v!r}")
        out[k] = values
    return out
