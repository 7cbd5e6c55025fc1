"""`ml-platform spec infer`: a starter spec from a sample of a CSV file, each guess with a comment saying why.

Plain Python over the first rows (the csv module, no Spark), so it answers in a second. The guesses use the same
vocabulary as cleaning (missing tokens, boolean tokens, number syntax), and the written text is validated with
`parse_spec` before it is returned, so a user only edits it.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from ml_platform.spec import MISSING_TOKENS, SpecError, parse_spec

MISSING = set(MISSING_TOKENS)
TRUE, FALSE = {"TRUE", "T", "YES", "Y"}, {"FALSE", "F", "NO", "N"}  # cleaning's tokens, less 1/0 (see FLAG_NAME)
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
UNIT = re.compile(r"([+-]?[\d,]*\.?\d+)\s*([A-Za-z][A-Za-z./]*)")
CURRENCY = "$€£%"
# 0/1 columns are booleans only when named like a flag; otherwise they may be counts that happen to be small
FLAG_NAME = re.compile(r"(^(is|has|was|can|should|did|flag)_?)|(_?(flag|ind|yn)$)", re.I)
ID_NAME = re.compile(r"(?i:(^|_)(id|key|uuid|ref)$)|[a-z](Id|ID|Ref)$")
INDEX_NAME = re.compile(r"^(|index|unnamed: ?\d+|row_?(id|index|number)?)$", re.I)
# labels that usually mean "the event happened": the class a model is asked to find
POSITIVE_WORDS = {"1", "yes", "y", "true", "t", "bad", "positive", "pos", "fraud", "fraudulent", "spam", "churn",
                  "churned", "default", "defaulted", "fail", "failed", "failure", "malignant", "abnormal", "anomaly",
                  "attack", "sick", "late", "left", "risk", "high"}
DATE_FORMATS = [("%Y-%m-%d", "yyyy-MM-dd"), ("%Y/%m/%d", "yyyy/MM/dd"), ("%m/%d/%Y", "M/d/yyyy"),
                ("%d/%m/%Y", "d/M/yyyy"), ("%d.%m.%Y", "d.M.yyyy"), ("%Y-%m-%d %H:%M:%S", "yyyy-MM-dd HH:mm:ss"),
                ("%Y-%m-%dT%H:%M:%S", "yyyy-MM-dd'T'HH:mm:ss")]
SHARE = 0.95          # a type is guessed when this share of the non-missing sampled values fits it
MAX_CATEGORIES = 50   # more distinct values than this (and over half of them distinct) is not a category
FREE_TEXT_CHARS = 30  # high-cardinality values this long on average are free text (dropped)
ALGORITHMS = {
    "regression": "  gbt:\n    grid: {maxDepth: [5], maxIter: [30]}\n  random_forest:\n    grid: {numTrees: [30], "
                  "maxDepth: [8]}\n  linear:\n    grid: {regParam: [0.01, 0.1], elasticNetParam: [0.0]}\n",
    "classification": "  logistic:\n    grid: {regParam: [0.001, 0.01], elasticNetParam: [0.0]}\n  random_forest:\n"
                      "    grid: {numTrees: [30], maxDepth: [8]}\n  gbt:\n    grid: {maxDepth: [4], maxIter: [30]}\n",
}


class InferError(ValueError):
    """The file cannot be sampled (empty, binary, no rows, no such target); the message is one line."""


@dataclass
class Guess:
    name: str
    entry: dict           # the column's spec entry, in output order
    why: str
    position: int | None = None


def _yaml(v) -> str:
    """A YAML scalar that reads back as the same text: plain where safe, else double-quoted (JSON-style)."""
    if isinstance(v, bool | int | float):
        return str(v).lower() if isinstance(v, bool) else repr(v)
    s = str(v)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", s) and yaml.safe_load(s) == s:
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flow(entry: dict) -> str:
    return "{" + ", ".join(f"{k}: {_yaml(v) if not isinstance(v, list) else '[' + ', '.join(map(_yaml, v)) + ']'}"
                           for k, v in entry.items()) + "}"


def read_sample(path: Path, rows: int) -> tuple[list[str], list[list[str]]]:
    try:
        head = path.open("rb").read(8192)
    except OSError as e:
        raise InferError(f"{path}: cannot read: {e.strerror or e}") from None
    if not head.strip():
        raise InferError(f"{path}: empty file")
    if b"\x00" in head:
        raise InferError(f"{path}: binary content (NUL bytes), not a text CSV file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            sample = [r for _, r in zip(range(rows), reader, strict=False) if any(v.strip() for v in r)]
    except UnicodeDecodeError as e:
        raise InferError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    except csv.Error as e:
        raise InferError(f"{path}: not a readable CSV file: {e}") from None
    header = [h.strip() for h in header]
    if len(header) < 2:
        raise InferError(f"{path}: the header has {len(header)} column(s); a spec needs a target and features "
                         f"(is the file comma-separated?)")
    if not sample:
        raise InferError(f"{path}: header only, no data rows to sample")
    return header, [r + [""] * (len(header) - len(r)) for r in sample]


def _number_text(v: str, strip: str) -> str | None:
    t = v.replace(",", "").translate({ord(c): None for c in strip}).strip()
    return t if NUMBER.fullmatch(t) else None


def _is_index(values: list[str], name: str) -> bool:
    """0,1,2,... or 1,2,3,... in row order: a row number written by pandas or a spreadsheet, not data."""
    if not INDEX_NAME.fullmatch(name) or not all(v.isdigit() for v in values) or len(values) < 2:
        return False
    nums = [int(v) for v in values]
    return nums[0] in (0, 1) and all(b - a == 1 for a, b in zip(nums, nums[1:], strict=False))


def guess_column(name: str, raw: list[str]) -> tuple[dict, str]:
    """(spec entry without name/position, why) for one column's sampled values."""
    values = [v.strip() for v in raw if v.strip() not in MISSING]
    n = len(values)
    if not n:
        return {"parse": "drop"}, f"no value in {len(raw)} sampled rows"
    of = f"of {n} sampled values"
    upper = Counter(v.upper() for v in values)
    if set(upper) <= TRUE | FALSE:
        return {"parse": "bool"}, f"all {n} sampled values are true/false words ({', '.join(sorted(upper)[:4])})"
    if set(upper) <= {"0", "1"} and FLAG_NAME.search(name):
        return {"parse": "bool"}, f"only 0/1 in {n} sampled values and the name reads as a flag"
    strip = "".join(c for c in CURRENCY if any(c in v for v in values))
    numbers = sum(_number_text(v, strip) is not None for v in values)
    if numbers >= SHARE * n:
        why = f"{numbers / n:.0%} {of} parse as numbers"
        if strip:
            return {"parse": "number", "strip": strip}, why + f" once {strip!r} is stripped"
        return {"parse": "number"}, why + (" ('12,345' style thousands separators)" if any("," in v for v in values)
                                           else "")
    units = Counter(m.group(2) for v in values if (m := UNIT.fullmatch(v)))
    if units and units.most_common(1)[0][1] >= SHARE * n:
        unit, hits = units.most_common(1)[0]
        return {"parse": "unit", "unit": unit}, f"{hits / n:.0%} {of} are numbers in {unit!r}"
    for py, spark in DATE_FORMATS:
        ok = 0
        for v in values:
            try:
                datetime.strptime(v, py)
                ok += 1
            except ValueError:
                pass
        if ok >= SHARE * n:
            return {"parse": "date", "format": spark}, f"{ok / n:.0%} {of} are dates like {values[0]!r}"
    distinct = len(set(values))
    if distinct <= MAX_CATEGORIES or distinct <= 0.5 * n:
        return {"parse": "category"}, f"{distinct} distinct {of}"
    avg = sum(map(len, values)) / n
    if avg >= FREE_TEXT_CHARS:
        return {"parse": "drop"}, (f"free text: {distinct} distinct {of}, {avg:.0f} characters on average; "
                                   f"dropped (change to string to keep it)")
    return {"parse": "string"}, f"{distinct} distinct short values {of}: kept as text, not a feature"


def guess_target(name: str, raw: list[str]) -> tuple[dict, list[str]]:
    """(spec top-level fields for the target, comment lines): task, the column's parse, labels."""
    values = [v.strip() for v in raw if v.strip() not in MISSING]
    counts = Counter(values)
    if not values:
        raise InferError(f"target {name!r} has no value in the {len(raw)} sampled rows")
    strip = "".join(c for c in CURRENCY if any(c in v for v in values))
    nums = {v: _number_text(v, strip) for v in counts}
    numeric = all(t is not None for t in nums.values())
    seen = ", ".join(f"{v!r} x{c}" for v, c in counts.most_common(6)) + (", ..." if len(counts) > 6 else "")
    if numeric and len(counts) > 2:
        return ({"task": "regression", "parse": {"parse": "number"} | ({"strip": strip} if strip else {})},
                [f"regression: {name} is numeric with {len(counts)} distinct values in {len(values)} sampled rows",
                 "label_range: [low, high] would quarantine implausible values; unlabelled: [..] lists "
                 "'no label' sentinels"])
    if numeric and {float(t) for t in nums.values()} <= {0.0, 1.0}:
        return ({"task": "classification", "parse": {"parse": "number"}, "label_range": [0, 1]},
                [f"classification: {name} holds 0/1 ({seen}); 1 is the positive class"])
    lines = [f"classification: {name} has {len(counts)} distinct labels in {len(values)} sampled rows ({seen})"]
    if len(counts) == 1:
        (only,) = counts
        return ({"task": "classification", "parse": {"parse": "category"}, "positive": only},
                lines + [f"only {only!r} was seen: check the sample; every other label will be the negative class"])
    minority = min(counts, key=lambda v: (counts[v], v))
    if len(counts) > 2:
        return ({"task": "classification", "parse": {"parse": "category"}, "positive": minority},
                lines + [f"multi-class arrives with issue 14: this trains {minority!r} (the rarest) against the rest"])
    worded = [v for v in counts if v.lower() in POSITIVE_WORDS]
    pos = worded[0] if len(worded) == 1 else minority
    why = "its name reads as the event to detect" if len(worded) == 1 else "it is the minority class"
    neg = next(v for v in counts if v != pos)
    return ({"task": "classification", "parse": {"parse": "category"}, "classes": [neg, pos]},
            lines + [f"classes: [negative, positive]; {pos!r} is positive because {why}; "
                     "another label is quarantined"])


def infer_spec(path: str | Path, target: str, name: str | None = None, sample_rows: int = 1000) -> str:
    """The text of a starter spec for the CSV at `path`; raises InferError (one line) on unusable input."""
    path = Path(path)
    header, rows = read_sample(path, sample_rows)
    if not target or target not in header:
        raise InferError(f"target {target!r} is not a column of {path.name}; columns: {header}")
    name = name or (re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "dataset")
    if not name[0].isalpha():
        name = f"d_{name}"
    guesses, key, candidates = [], None, []
    for i, h in enumerate(header):
        col = [r[i] for r in rows]
        col_name = h or ("row_index" if _is_index(col, h) else f"column_{i}")
        if h == target:
            spec_fields, target_lines = guess_target(h, col)
            guesses.append(Guess(h, spec_fields["parse"], "the target (see above)"))
            continue
        if _is_index(col, h):
            guesses.append(Guess(col_name, {"parse": "drop"}, "row numbers 0, 1, 2... (an index, not data)",
                                 None if h else i))
            continue
        entry, why = guess_column(col_name, col)
        present = [v.strip() for v in col if v.strip() not in MISSING]
        if len(present) == len(rows) and len(set(present)) == len(rows) and entry["parse"] in ("string", "number") \
                and (entry["parse"] == "string" or all(v.isdigit() for v in present)):
            candidates.append(col_name)
            if key is None and ID_NAME.search(col_name):
                key, entry, why = col_name, {"parse": "string"}, f"unique and never empty in {len(rows)} sampled " \
                                                                 "rows, named like an id: the key (kept as text)"
        guesses.append(Guess(col_name, entry, why, None if h else i))
    if len(set(g.name for g in guesses)) != len(guesses):
        raise InferError(f"{path.name}: duplicate column names in the header {header}")
    return _render(path, target, name, len(rows), spec_fields, target_lines, guesses, key, candidates)


def _render(path, target, name, n, fields, target_lines, guesses, key, candidates) -> str:
    task = fields["task"]
    out = [f"# Starter spec inferred from the first {n} rows of {path.name} by `ml-platform spec infer`.",
           "# Every guess says why; edit what is wrong, then drop batches into the landing zone.",
           f"name: {_yaml(name)}", *[f"# {line}" for line in target_lines], f"task: {task}",
           f"target: {_yaml(target)}"]
    if key:
        out.append(f"key: {_yaml(key)}   # unique and never empty in the sample; rows repeating a key are merged")
    else:
        hint = f"; unique in the sample but not named like an id: {candidates}" if candidates else ""
        out.append(f"key: null   # no id-like column (unique, never empty, named like *_id){hint}")
    for k in ("label_range", "positive", "classes"):
        if k in fields:
            v = fields[k]
            out.append(f"{k}: " + ("[" + ", ".join(map(_yaml, v)) + "]" if isinstance(v, list) else _yaml(v)))
    out.append("columns:")
    for g in guesses:
        entry = ({"position": g.position} if g.position is not None else {}) | {"name": g.name} | g.entry
        out.append(f"  - {_flow(entry)}   # {g.why}")
    out += ["checks:", "  max_quarantine_share: 0.25   # more quarantined rows than this block a batch",
            "algorithms:", ALGORITHMS[task].rstrip("\n"),
            "training:", "  holdout: 0.2", "  folds: 3"]
    text = "\n".join(out) + "\n"
    try:
        parse_spec(yaml.safe_load(text), f"{name} (inferred)")
    except (SpecError, yaml.YAMLError) as e:  # a bug here, not the user's: say so rather than write a broken spec
        raise InferError(f"the inferred spec does not validate ({e}); please report this with the file's "
                         "header") from None
    return text
