"""Cleaning: raw string columns -> typed features, driven by the spec. One function for batch and serving.

`classify(df, spec)` adds typed columns and a `_reject_reason`; rows with a reason are quarantined, the rest
are cleaned. Everything is a Spark column expression (no Python UDF), so the streaming scorer applies exactly
this code to each request with no training/serving skew.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from ml_platform.ingest import CORRUPT
from ml_platform.spec import ColumnSpec, DatasetSpec

REASON = "_reject_reason"
MISSING_TOKENS = ["", "--", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
NUM = r"([-+]?[0-9][0-9,]*(?:\.[0-9]+)?|[-+]?\.[0-9]+)"  # keeps the sign: longitudes in the US are negative
TRUE_TOKENS = ["TRUE", "T", "YES", "Y", "1"]
FALSE_TOKENS = ["FALSE", "F", "NO", "N", "0"]


def _raw(name: str) -> Column:
    """Trimmed source text, with the source's 'unknown' tokens as null."""
    v = F.trim(F.col(f"`{name}`"))
    return F.when(v.isin(MISSING_TOKENS), F.lit(None)).otherwise(v)


def _to_number(text: Column) -> Column:
    """Signed number from text like '-1,234.5'; null if not a finite number."""
    d = F.regexp_replace(text, ",", "").try_cast("double")
    return F.when(F.isnan(d) | (F.abs(d) == float("inf")), F.lit(None)).otherwise(d)


def _in_range(value: Column, rng: tuple[float, float] | None) -> Column:
    if rng is None:
        return value
    return F.when(value.between(rng[0], rng[1]), value)


def parse_column(c: ColumnSpec) -> list[tuple[str, Column]]:
    """(output name, typed expression) pairs for one source column."""
    raw = _raw(c.name)
    if c.strip:
        raw = F.regexp_replace(raw, "[" + c.strip.replace("\\", "\\\\") + "]", "")
    if c.parse == "drop":
        return []
    if c.parse in ("string", "category"):
        return [(c.name, raw)]
    if c.parse == "number":
        return [(c.name, _in_range(_to_number(raw), c.range))]
    if c.parse == "unit":  # '35.1 in', '12.7 gal', '5 seats'
        num = F.regexp_extract(raw, rf"(?i)^{NUM}\s*{c.unit}\.?$", 1)
        return [(c.name, _in_range(_to_number(F.nullif(num, F.lit(""))), c.range))]
    if c.parse == "rating":  # '177 hp @ 5,750 RPM', '200 lb-ft @ 1,750 RPM'
        pattern = rf"(?i)^{NUM}\s*[a-z][a-z-]*\s*@\s*{NUM}\s*rpm$"
        return [(f"{c.name}_{u}", _to_number(F.nullif(F.regexp_extract(raw, pattern, i + 1), F.lit(""))))
                for i, u in enumerate(c.units)]
    if c.parse == "bool":
        up = F.upper(raw)
        return [(c.name, F.when(up.isin(TRUE_TOKENS), True).when(up.isin(FALSE_TOKENS), False))]
    if c.parse == "date":
        return [(c.name, F.try_to_date(raw, c.format or "yyyy-MM-dd"))]
    raise ValueError(f"column {c.name}: unknown parse rule {c.parse!r}")


def _derive(rule: str, a: Column, b: Column) -> Column:
    if rule == "years_between":  # age in years: year(listed_date) - model year, never negative
        return F.greatest(F.year(b) - a, F.lit(0)).cast("double")
    if rule == "per_year":  # e.g. miles per year, with age 0 counted as one year
        return a / F.greatest(b, F.lit(1.0))
    raise ValueError(f"unknown derive rule {rule!r}")


def _value_reasons(spec: DatasetSpec) -> list[Column]:
    out = []
    for c in spec.columns:
        if c.required and c.name != spec.target:
            out.append(F.when(F.col(c.name).isNull(),
                              F.concat(F.lit(f"{c.name}: missing or invalid value '"),
                                       F.coalesce(F.col(f"`__raw_{c.name}`"), F.lit("")), F.lit("'"))))
    lo, hi = spec.label_range
    t = F.col(spec.target)
    raw_t = F.coalesce(F.col(f"`__raw_{spec.target}`"), F.lit(""))
    out.append(F.when(t.isNull(), F.concat(F.lit(f"{spec.target}: missing or not a number '"), raw_t, F.lit("'"))))
    out.append(F.when(~t.between(lo, hi), F.concat(F.lit(f"{spec.target}: "), raw_t,
                                                     F.lit(f" outside [{lo:g}, {hi:g}]"))))
    if spec.task == "classification":
        out.append(F.when(t != F.floor(t), F.concat(F.lit(f"{spec.target}: not a class label "), raw_t)))
    return out


def classify(df: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Typed cleaned columns plus `_reject_reason` (null for good rows) and the raw checked values.

    The raw source columns are kept alongside so that quarantined rows can be written as they arrived.
    """
    has_corrupt = CORRUPT in df.columns
    parsed = [(name, expr) for c in spec.columns for name, expr in parse_column(c)]
    checked = {c.name for c in spec.columns if c.required} | {spec.target}
    renamed = df.select(
        *[F.col(f"`{c}`").alias(c if c == CORRUPT else f"__src_{c}") for c in df.columns],
        *[_raw(c).alias(f"__raw_{c}") for c in sorted(checked)],
        *[expr.alias(name) for name, expr in parsed],
    )
    for d in spec.derived:
        renamed = renamed.withColumn(d.name, _derive(d.rule, F.col(d.inputs[0]), F.col(d.inputs[1])))
    if spec.task == "classification":
        renamed = renamed.withColumn(spec.target, F.col(spec.target).cast("double"))
    reason = F.concat_ws("; ", *_value_reasons(spec))
    reason = F.when(reason != "", reason)
    if has_corrupt:  # a malformed row's values are shifted or missing: one reason says it all
        malformed = F.lit("malformed CSV row (wrong number of fields)")
        reason = F.when(F.col(CORRUPT).isNotNull(), malformed).otherwise(reason)
    return renamed.withColumn(REASON, reason)


def cleaned_rows(classified: DataFrame, spec: DatasetSpec) -> DataFrame:
    """The accepted rows, typed, one per key (or per distinct row where the spec has no key)."""
    good = classified.filter(F.col(REASON).isNull()).select(*spec.cleaned_columns)
    return good.dropDuplicates([spec.key]) if spec.key else good.dropDuplicates()


def quarantined_rows(classified: DataFrame) -> DataFrame:
    """Rejected rows exactly as they arrived, with the reason."""
    src = [c for c in classified.columns if c.startswith("__src_")]
    return classified.filter(F.col(REASON).isNotNull()).select(
        *[F.col(f"`{c}`").alias(c[len("__src_"):]) for c in src],
        *([F.col(CORRUPT)] if CORRUPT in classified.columns else []), F.col(REASON))


def clean_batch(df: DataFrame, spec: DatasetSpec) -> DataFrame:
    """Raw rows -> cleaned rows (what the scorer calls on requests; no dedup across the stream here)."""
    return classify(df, spec).filter(F.col(REASON).isNull()).select(*spec.cleaned_columns)
