"""Cleaning: raw string columns -> typed features, driven by the spec. One function for batch and serving.

`classify(df, spec)` adds typed columns and a `_reject_reason`; rows with a reason are quarantined, the rest
are cleaned. Everything is a Spark column expression (no Python UDF), so the streaming scorer applies exactly
this code to each request with no training/serving skew.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import NamedTuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from ml_platform.data.ingest import CORRUPT
from ml_platform.spec import MISSING_TOKENS, ColumnSpec, DatasetSpec

REASON = "_reject_reason"
UNLABELLED = "__unlabelled"  # the row's label is one of the spec's "no label" values: kept, not trained on
TRUE_TOKENS = ["TRUE", "T", "YES", "Y", "1"]
FALSE_TOKENS = ["FALSE", "F", "NO", "N", "0"]


def _text(name: str) -> Column:
    """Trimmed source text, with the source's 'unknown' tokens as null."""
    v = F.trim(F.col(f"`{name}`"))
    return F.when(v.isin(list(MISSING_TOKENS)), F.lit(None)).otherwise(v)


def _t(name: str) -> Column:
    return F.col(f"`__t_{name}`")


def _v(name: str) -> Column:
    return F.col(f"`__v_{name}`")


def _number(text: Column) -> Column:
    """Signed number from text like '-1,234.5' (may be NaN or infinite: see _finite). String functions, not
    regular expressions: a regex costs a UTF-16 copy and a matcher per value, several times the whole parse."""
    return try_double(F.translate(text, ",", ""))


def try_double(text: Column) -> Column:
    """Null where the text is not a number. Column.try_cast is Spark 4; on Spark 3.5 (EMR 7.x) a plain cast does
    the same when ANSI mode is off, its default there (the EMR job also sets it off explicitly). Every text ->
    number conversion in cleaning goes through here: a plain cast under ANSI mode aborts the whole job
    (CAST_INVALID_INPUT) on the first bad value, naming neither the column nor the spec."""
    return text.try_cast("double") if hasattr(Column, "try_cast") else text.cast("double")


def _before_suffix(text: Column, suffix: str) -> Column:
    """'35.1 in' -> '35.1' when the text ends with the unit (any case); null otherwise."""
    n = len(suffix)
    return F.when(F.lower(text).endswith(suffix.lower()), F.rtrim(F.left(text, F.length(text) - n)))


def _rating_part(text: Column, part: int) -> Column:
    """'177 hp @ 5,750 RPM' -> '177' (part 1) or '5,750' (part 2); null unless it has '@' and ends in RPM."""
    piece = F.substring_index(F.trim(F.split_part(text, F.lit("@"), F.lit(part))), " ", 1)
    return F.when(text.contains("@") & F.upper(text).endswith("RPM"), piece)


def parse_column(c: ColumnSpec) -> list[tuple[str, Column]]:
    """(output name, expression over the trimmed text column __t_<name>) for one source column."""
    raw = _t(c.name)
    if c.strip:
        raw = F.translate(raw, c.strip, "")
    if c.parse == "drop":
        return []
    if c.parse in ("string", "category"):
        return [(c.name, raw)]
    if c.parse == "number":
        return [(c.name, _number(raw))]
    if c.parse == "unit":  # '35.1 in', '12.7 gal', '5 seats'
        return [(c.name, _number(_before_suffix(raw, c.unit)))]
    if c.parse == "rating":  # '177 hp @ 5,750 RPM', '200 lb-ft @ 1,750 RPM'
        return [(f"{c.name}_{u}", _number(_rating_part(raw, i + 1))) for i, u in enumerate(c.units)]
    if c.parse == "bool":
        up = F.upper(raw)
        return [(c.name, F.when(up.isin(TRUE_TOKENS), True).when(up.isin(FALSE_TOKENS), False))]
    if c.parse == "date":
        # try_to_timestamp is in Spark 3.5 and 4 alike (try_to_date is 4 only)
        return [(c.name, F.to_date(F.try_to_timestamp(raw, F.lit(c.format or "yyyy-MM-dd"))))]
    raise ValueError(f"column {c.name}: unknown parse rule {c.parse!r}")


def _finite(name: str, rng: tuple[float, float] | None) -> Column:
    """A parsed number, or null when it is NaN, infinite or outside the spec's range."""
    v = _v(name)
    ok = ~F.isnan(v) & (F.abs(v) != float("inf"))
    if rng is not None:
        ok = ok & v.between(rng[0], rng[1])
    return F.when(ok, v)


def _derive(rule: str, a: Column, b: Column) -> Column:
    if rule == "years_between":  # age in years: year(listed_date) - model year, never negative
        return F.greatest(F.year(b) - a, F.lit(0)).cast("double")
    if rule == "per_year":  # e.g. miles per year, with age 0 counted as one year
        return a / F.greatest(b, F.lit(1.0))
    raise ValueError(f"unknown derive rule {rule!r}")


def _label(spec: DatasetSpec) -> Column:
    """The target as 0.0/1.0 (null: not a known label). Text labels map by `positive` or `classes`; numeric
    labels are already doubles (parse number) or booleans (parse bool), whose cast to double cannot fail."""
    t = F.col(spec.target)
    if spec.classes:  # [negative, positive], or a multiclass spec's classes: their index
        label = F.when(t == spec.classes[0], 0.0)
        for i, c in enumerate(spec.classes[1:], 1):
            label = label.when(t == c, float(i))
        return label
    if spec.positive is not None:
        return F.when(t == spec.positive, 1.0).when(t.isNotNull(), 0.0)
    return t.cast("double")


def _unlabelled(spec: DatasetSpec) -> Column:
    """True where the target holds one of the spec's "no label" values (compared as parsed numbers, or as the
    label text), so '99,999,999' matches 99999999."""
    if not spec.unlabelled or spec.target is None:
        return F.lit(False)
    return F.coalesce(F.col(spec.target).isin(list(spec.unlabelled)), F.lit(False))


def _target_reasons(spec: DatasetSpec) -> list[Column]:
    t, raw_t = F.col(spec.target), F.coalesce(_t(spec.target), F.lit(""))
    if spec.text_labels:
        allowed = list(spec.classes) or [f"{spec.positive} (positive) or any other label"]
        return [F.when(_t(spec.target).isNull(), F.lit(f"{spec.target}: missing label")),
                F.when(t.isNull() & _t(spec.target).isNotNull(),
                       F.concat(F.lit(f"{spec.target}: label '"), raw_t, F.lit(f"' is not one of {allowed}")))]
    lo, hi = spec.label_range
    out = [F.when(t.isNull(), F.concat(F.lit(f"{spec.target}: missing or not a number '"), raw_t, F.lit("'"))),
           F.when(~t.between(lo, hi), F.concat(F.lit(f"{spec.target}: "), raw_t, F.lit(f" outside [{lo:g}, {hi:g}]")))]
    if spec.task == "classification":
        out.append(F.when(t != F.floor(t), F.concat(F.lit(f"{spec.target}: not a class label "), raw_t)))
    return out


def _value_reasons(spec: DatasetSpec, serving: bool) -> list[Column]:
    out = []
    for c in spec.columns:
        if c.required and c.name != spec.target:
            out.append(F.when(F.col(c.name).isNull(),
                              F.concat(F.lit(f"{c.name}: missing or invalid value '"),
                                       F.coalesce(_t(c.name), F.lit("")), F.lit("'"))))
    if serving or spec.target is None:  # a prediction request has no label yet; a clustering row never has one
        return out
    # an unlabelled row is not a bad row: its label is simply unknown
    return out + [F.when(~F.col(UNLABELLED), r) for r in _target_reasons(spec)]


def classify(df: DataFrame, spec: DatasetSpec, serving: bool = False) -> DataFrame:
    """Typed cleaned columns plus `_reject_reason` (null for good rows), and the source columns as `__src_*`.
    `serving`: the rows are prediction requests, so the target is not checked (nor expected). A classification
    target becomes 0.0/1.0; a row whose target is an `unlabelled` value keeps a null target and no reason.

    Built as stacked projections (text -> parsed -> checked) so that each value is trimmed and parsed once: a
    single projection repeating those expressions generates more than the JVM's 64 KB per method and Spark
    falls back to interpreted evaluation, ten times slower. Callers select what they need and Spark prunes
    the rest: the quarantine pass only evaluates the checked columns.

    The expressions come from `_plan`, built once per (spec, serving, input columns): see there.
    """
    plan = _plan(spec, serving, tuple(df.columns))
    for cols in plan.projections:
        df = df.select(*cols)
    return df.withColumn(REASON, plan.reason)


class _Plan(NamedTuple):
    projections: tuple[tuple[Column, ...], ...]
    reason: Column


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    size: int
    maxsize: int


def spec_cached(maxsize: int = 32):
    """Memoizes `build(spec, *args)` (args hashable) per spec object, least recently used out past `maxsize`.

    For column expressions built from a spec: they are unresolved and name-based, so one set serves every
    DataFrame with the same columns, while building them costs a Py4J call per function call (used_cars'
    cleaning: ~20k calls, ~4 s), which a scorer would pay per micro-batch and a REST API per request. Keyed by
    id(spec) because a spec holds dicts and is not hashable; each entry holds its spec, so that id is not reused
    by another spec while the entry lives. `cached.cache_info()` counts hits and misses."""
    def wrap(build):
        entries: OrderedDict = OrderedDict()
        stats = [0, 0]
        lock = threading.Lock()

        @functools.wraps(build)
        def cached(spec, *args):
            key = (id(spec), args)
            with lock:
                entry = entries.get(key)
                if entry is not None and entry[0] is spec:
                    entries.move_to_end(key)
                    stats[0] += 1
                    return entry[1]
            value = build(spec, *args)  # outside the lock: two threads may both build, harmlessly
            with lock:
                stats[1] += 1
                entries[key] = (spec, value)
                entries.move_to_end(key)
                while len(entries) > maxsize:
                    entries.popitem(last=False)
            return value

        cached.cache_info = lambda: CacheInfo(stats[0], stats[1], len(entries), maxsize)
        return cached
    return wrap


@spec_cached()  # a handful of (spec, serving, input columns) per process: batch, serving, per dataset
def _plan(spec: DatasetSpec, serving: bool, columns: tuple[str, ...]) -> _Plan:
    has_corrupt = CORRUPT in columns
    kept = [c if c == CORRUPT else f"__src_{c}" for c in columns] + [
        f"__t_{c.name}" for c in spec.columns if c.parse != "drop"]
    text = (*[F.col(f"`{c}`").alias(c if c == CORRUPT else f"__src_{c}") for c in columns],
            *[_text(c.name).alias(f"__t_{c.name}") for c in spec.columns if c.parse != "drop"])
    parsed = [(c, name, expr) for c in spec.columns for name, expr in parse_column(c)]
    numeric = {name for c, name, _ in parsed if c.parse in ("number", "unit", "rating")}
    values = (F.col("*"), *[expr.alias(f"__v_{name}") for _, name, expr in parsed])
    typed = (*[F.col(f"`{c}`") for c in kept],
             *[(_finite(name, c.range) if name in numeric else _v(name)).alias(name) for c, name, _ in parsed])
    # derived columns, the unlabelled flag and the final target in one projection (each projection is a Spark
    # analysis of the whole plan, ~0.1 s here): a derived input that is itself derived is inlined, and the flag is
    # computed from the typed target as the target is replaced, as the former chain of withColumn calls did
    derived: dict[str, Column] = {}
    for d in spec.derived:
        a, b = (derived.get(n, F.col(n)) for n in d.inputs)
        derived[d.name] = _derive(d.rule, a, b)
    target = F.when(~_unlabelled(spec), _label(spec) if spec.task in ("classification", "multiclass")
                    else F.col(spec.target)) if spec.target else None
    names = kept + [name for _, name, _ in parsed]
    tail = (*[target.alias(n) if n == spec.target else F.col(f"`{n}`") for n in names],
            *[e.alias(n) for n, e in derived.items()], _unlabelled(spec).alias(UNLABELLED))
    reason = F.concat_ws("; ", *_value_reasons(spec, serving))
    reason = F.when(reason != "", reason)
    if has_corrupt:  # a malformed row's values are shifted or missing: one reason says it all
        malformed = F.lit("malformed CSV row (wrong number of fields)")
        reason = F.when(F.col(CORRUPT).isNotNull(), malformed).otherwise(reason)
    return _Plan((text, values, typed, tail), reason)


def cleaned_rows(classified: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The accepted rows, typed: one per key, and one per distinct row where there is no key (the spec has none,
    or the row's key is null: rows without a key are never collapsed by it, only whole-row duplicates go).
    Where a key has both a labelled and an unlabelled row, the labelled one is kept."""
    good = classified.filter(F.col(REASON).isNull()).select(*spec.cleaned_columns)
    if not spec.key:
        return good.dropDuplicates()
    # one pass: keyed rows group by key alone, null-key rows by the whole row (a struct of every column)
    whole = F.when(F.col(spec.key).isNull(), F.struct(*[F.col(f"`{c}`") for c in spec.cleaned_columns]))
    good = good.withColumn("__row", whole)
    if not spec.unlabelled:
        return good.dropDuplicates([spec.key, "__row"]).drop("__row")
    w = Window.partitionBy(spec.key, "__row").orderBy(F.col(spec.target).isNull())
    return good.withColumn("__rn", F.row_number().over(w)).filter(F.col("__rn") == 1).drop("__rn", "__row")


def quarantined_rows(classified: DataFrame) -> DataFrame:
    """Rejected rows exactly as they arrived, with the reason."""
    src = [c for c in classified.columns if c.startswith("__src_")]
    return classified.filter(F.col(REASON).isNotNull()).select(
        *[F.col(f"`{c}`").alias(c[len("__src_"):]) for c in src],
        *([F.col(CORRUPT)] if CORRUPT in classified.columns else []), F.col(REASON))


def clean_batch(df: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Raw rows -> cleaned rows (what the scorer calls on requests; no dedup across the stream here)."""
    return classify(df, spec).filter(F.col(REASON).isNull()).select(*spec.cleaned_columns)
