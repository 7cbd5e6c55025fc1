"""Data-quality checks on what the raw and cleaned layers recorded. Pure functions over summaries, so
they are tested without Spark or Dagster; the assets turn each Outcome into an asset check result."""

from __future__ import annotations

from dataclasses import dataclass, field

from ml_platform.spec import DatasetSpec

TYPE_OF_PARSE = {"string": "string", "category": "string", "number": "double", "unit": "double",
                 "rating": "double", "bool": "boolean", "date": "date"}


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    blocking: bool  # a failed blocking check stops downstream assets
    description: str
    metadata: dict = field(default_factory=dict)


def expected_schema(spec: DatasetSpec) -> dict[str, str]:
    out = {n: TYPE_OF_PARSE[c.parse] for c in spec.columns for n in c.output_names()}
    out.update({d.name: "double" for d in spec.derived})
    if spec.task in ("classification", "multiclass"):
        out[spec.target] = "double"
    return out


RAW_CHECKS = {"raw_columns": False, "raw_rows": True}
CLEANED_CHECKS = {"cleaned_schema": True, "cleaned_rows": True, "null_rates": True, "quarantine_share": True,
                  "label_range": True, "all_null_columns": False}


def raw_checks(spec: DatasetSpec, record: dict) -> list[Outcome]:
    dup = record.get("duplicate_of")
    rows, bad = record["rows"], record["malformed_rows"]
    share = bad / rows if rows else 0.0
    rows_ok = bool(dup) or (rows > 0 and share <= spec.max_quarantine_share)
    return [
        Outcome("raw_columns", not record["missing_columns"], False,
                "every spec column is in the file" if not record["missing_columns"]
                else f"{len(record['missing_columns'])} spec columns absent (loaded as null)",
                {"missing": record["missing_columns"], "extra (dropped)": record["extra_columns"]}),
        Outcome("raw_rows", rows_ok, True,
                f"duplicate of batch {dup}: nothing added" if dup else
                f"{rows} rows, {bad} malformed ({share:.1%}; limit {spec.max_quarantine_share:.0%})",
                {"rows": rows, "malformed_rows": bad}),
    ]


def _dominant(s: dict, n: int = 3) -> str:
    """'; mostly price (812 rows, e.g. "price: 1 outside [500, 2e+06]"), year (40 rows)': what to fix first."""
    by_field, top = s.get("quarantined_by_field") or {}, s.get("top_reasons") or {}
    if not s.get("quarantined") or not (by_field or top):
        return ""
    if not by_field:
        return "; mostly " + ", ".join(f"{r} ({c} rows)" for r, c in list(top.items())[:n])
    parts = []
    for f, c in list(by_field.items())[:n]:
        example = next((r for r in top if r.startswith(f)), None)
        parts.append(f"{f} ({c} rows" + (f", e.g. {example!r})" if example else ")"))
    return "; mostly " + ", ".join(parts)


def cleaned_checks(spec: DatasetSpec, s: dict) -> list[Outcome]:
    if s.get("duplicate_of"):
        return [Outcome(n, True, b, f"duplicate of batch {s['duplicate_of']}: skipped")
                for n, b in CLEANED_CHECKS.items()]
    expected = expected_schema(spec)
    diff = {c: (expected.get(c), s["schema"].get(c)) for c in set(expected) | set(s["schema"])
            if expected.get(c) != s["schema"].get(c)}
    rates = dict(s["null_rate"])
    if s.get("unlabelled") and s["cleaned"] and spec.target in rates:
        # unlabelled rows are kept on purpose with a null target: only other nulls count against its limit
        rates[spec.target] = max(0.0, rates[spec.target] - s["unlabelled"] / s["cleaned"])
    too_null = {c: round(rates[c], 4) for c, lim in spec.max_null_rate.items() if rates.get(c, 1.0) > lim}
    rows_in = max(s["rows_in"], 1)
    share = s["quarantined"] / rows_in
    lo, hi = spec.label_range
    # clustering has no target: nothing to be in range
    in_range = s["cleaned"] == 0 or spec.target is None or (lo <= s["target_min"] and s["target_max"] <= hi)
    return [
        Outcome("cleaned_schema", not diff, True, "columns and types match the spec" if not diff
                else f"{len(diff)} columns differ from the spec", {"expected vs actual": diff}),
        Outcome("cleaned_rows", s["cleaned"] > 0, True, f"{s['cleaned']} cleaned rows"
                + (f" ({s['unlabelled']} unlabelled: kept, not trained on)" if s.get("unlabelled") else ""),
                {"rows": s["cleaned"], "unlabelled": s.get("unlabelled", 0)}),
        Outcome("null_rates", not too_null, True, "key columns within their null-rate limits" if not too_null
                else f"null rate over the limit: {too_null}", {"limits": spec.max_null_rate}),
        Outcome("quarantine_share", share <= spec.max_quarantine_share, True,
                f"{s['quarantined']} of {s['rows_in']} rows quarantined ({share:.1%}; "
                f"limit {spec.max_quarantine_share:.0%}){_dominant(s)}",
                {"top reasons": s.get("top_reasons", {}), "by field": s.get("quarantined_by_field", {})}),
        Outcome("label_range", in_range, True, f"{spec.target} in [{s['target_min']}, {s['target_max']}], "
                f"allowed [{lo:g}, {hi:g}]" if spec.target else "no target (clustering)"),
        Outcome("all_null_columns", not s["all_null_columns"], False,
                "no column is entirely null" if not s["all_null_columns"]
                else f"entirely null: {s['all_null_columns']}"),
    ]
