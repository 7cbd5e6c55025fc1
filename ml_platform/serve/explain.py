"""Per-prediction explanations on request, for any served model (a stack included): which fields of one request
moved its answer, and by how much.

Each feature field the request sent is replaced, one at a time, by what the model assumes when that field is
unknown: an optional field is left out (the fitted pipeline then imputes its training median, or puts a category
in its unseen-level bucket); a required number is set to its training median (from the champion's own imputer).
Every variant is scored through the same serving core as the request, in one call, and a field's contribution
is the answer minus the variant's answer (the price, or the probability of the positive class). A field with a
large positive contribution pushed this prediction up compared with not knowing it.
"""

from __future__ import annotations

from typing import Any

from ml_platform.spec import FEATURE_PARSES, DatasetSpec

METHOD = "field substitution: the answer minus the answer with the field unknown (required numbers at their " \
         "training median)"
SEP = "~x"  # variant request_ids: <request_id>~x<i>, printable ASCII like every request_id


def training_medians(model) -> dict[str, float]:
    """The medians the champion's feature pipeline imputes, by cleaned numeric column (empty for a model without
    an imputer)."""
    from pyspark.ml.feature import ImputerModel

    for stage in getattr(model, "stages", []):
        if isinstance(stage, ImputerModel):
            row = stage.surrogateDF.first()
            return {c.removeprefix("__n_"): float(row[c]) for c in row.asDict() if row[c] is not None}
    return {}


def feature_fields(spec: DatasetSpec) -> list[str]:
    """The request fields whose values become model features."""
    numeric, categorical = spec.feature_columns()
    used = set(numeric + categorical)
    return [c.name for c in spec.columns if c.parse in FEATURE_PARSES and set(c.output_names()) & used]


def variants(spec: DatasetSpec, row: dict[str, Any], medians: dict[str, float]) -> tuple[list[tuple[str, dict]],
                                                                                      list[str]]:
    """(field, variant request) for each feature field the scored request sent, each variant with its own
    request_id; and the fields that cannot be explained (required, with no training median)."""
    required = {c.name for c in spec.columns if c.required}
    out, skipped = [], []
    for field in feature_fields(spec):
        if row.get(field) is None:
            continue
        v = dict(row)
        if field in required:
            if field not in medians:
                skipped.append(field)
                continue
            v[field] = medians[field]
        else:
            del v[field]
        v["request_id"] = f"{row['request_id']}{SEP}{len(out)}"
        out.append((field, v))
    return out, skipped


def answer(spec: DatasetSpec, result: dict) -> float | None:
    """The number an explanation decomposes: the prediction (regression) or the positive-class probability."""
    return result.get("prediction") if spec.task == "regression" else result.get("probability")


def explanation(spec: DatasetSpec, result: dict, fields: list[str], skipped: list[str], scored: list[dict]) -> dict:
    """A scored result's explanation from its variants' results (`fields` and `scored` in the same order)."""
    base = answer(spec, result)
    contributions, failed = {}, []
    for field, r in zip(fields, scored, strict=True):
        same_model = r.get("model_version") == result.get("model_version")  # no swap between the two calls
        value = answer(spec, r) if r.get("status") == "scored" and same_model else None
        if value is None or base is None:
            failed.append(field)
        else:
            contributions[field] = base - value
    return {"method": METHOD, "of": "prediction" if spec.task == "regression" else "probability",
            "model_version": result.get("model_version"),
            "contributions": dict(sorted(contributions.items(), key=lambda kv: -abs(kv[1]))),
            "not_explained": skipped + failed}
