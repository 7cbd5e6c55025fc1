"""Live quality: predictions joined with the actuals that arrive later, per event-time window and model version.

Streaming: predictions (the predictions topic, and the shadow topic where a challenger runs in shadow mode) are
deduplicated by (request_id, model_version) within the watermark (the topics are at least once, and a request
scored by the champion and by a shadow challenger counts once for each version), actuals by request_id; they are
joined on request_id with a time bound (the actual within `actual_within_seconds` of the request), and
aggregated into tumbling windows on the request's event_time, emitted once the watermark passes. The same
definition is recomputed offline from the topics' contents by `offline_metrics`, which tests and the fault
checker compare against. `degraded` is the retrain rule.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from ml_platform.serve.messages import contract
from ml_platform.spec import DatasetSpec

BINS = 20  # probability bins behind pr_auc_approx


def read_schema(name: str, fields: list[str]) -> StructType:
    """The Spark schema to read `fields` of a message kind, from its JSON Schema (the contract's owner), so a field
    renamed there fails here at import rather than reading as null."""
    props = contract(name)["properties"]

    def spark_type(p: dict):
        types = p["type"] if isinstance(p["type"], list) else [p["type"]]
        return DoubleType() if "number" in types else StringType()

    return StructType([StructField(f, spark_type(props[f])) for f in fields])


PREDICTION = read_schema("prediction", ["request_id", "prediction", "probability", "model_version", "event_time"])
ACTUAL = read_schema("actual", ["request_id", "event_time", "actual"])


def _json(rows: DataFrame, schema: StructType) -> DataFrame:
    return rows.select(F.from_json(F.col("value").cast("string"), schema).alias("m")).select("m.*")


def joined_windows(predictions: DataFrame, actuals: DataFrame, spec: DatasetSpec,
                   shadow: DataFrame | None = None) -> DataFrame:
    """Streaming Kafka rows of the prediction and actual topics (and the shadow topic's, if given) -> one row per
    (window, model_version) with additive sums."""
    s = spec.serving
    wm = f"{s.watermark_seconds} seconds"
    rows = predictions if shadow is None else predictions.unionByName(shadow)
    p = (_json(rows, PREDICTION).withColumn("p_ts", F.try_to_timestamp("event_time"))
         .where(F.col("request_id").isNotNull() & F.col("p_ts").isNotNull())
         .withWatermark("p_ts", wm).dropDuplicatesWithinWatermark(["request_id", "model_version"]))
    a = (_json(actuals, ACTUAL).withColumn("a_ts", F.try_to_timestamp("event_time"))
         # a NaN or Infinity actual (a careless producer's token) makes a window's rmse non-finite, against the contract
         .where(F.col("request_id").isNotNull() & F.col("a_ts").isNotNull() & F.col("actual").isNotNull()
                & ~F.isnan("actual") & (F.abs("actual") != float("inf")))
         .select(F.col("request_id").alias("a_id"), "a_ts", "actual")
         .withWatermark("a_ts", wm)
         .dropDuplicatesWithinWatermark(["a_id"]))
    j = p.join(a, F.expr(f"request_id = a_id AND a_ts >= p_ts AND "
                         f"a_ts <= p_ts + interval {s.actual_within_seconds} seconds"))
    err = F.col("prediction") - F.col("actual")
    aggs = [F.count(F.lit(1)).alias("count")]
    if spec.task in ("regression", "recommendation"):  # a rating is a number: its error
        aggs += [F.sum(err * err).alias("sse"), F.sum(F.abs(err)).alias("sae")]
    elif spec.task == "multiclass":
        aggs += [F.sum((F.col("prediction") == F.col("actual")).cast("long")).alias("correct")]
    else:
        y, yhat = F.col("actual") == 1, F.col("prediction") == 1
        b = F.least(F.floor(F.coalesce(F.col("probability"), F.lit(0.0)) * BINS), F.lit(BINS - 1))
        aggs += [F.sum((y & yhat).cast("long")).alias("tp"), F.sum((~y & yhat).cast("long")).alias("fp"),
                 F.sum((y & ~yhat).cast("long")).alias("fn"), F.sum(y.cast("long")).alias("positives")]
        aggs += [F.sum(((b == i) & y).cast("long")).alias(f"pos_{i}") for i in range(BINS)]
        aggs += [F.sum(((b == i) & ~y).cast("long")).alias(f"neg_{i}") for i in range(BINS)]
    return j.groupBy(F.window("p_ts", f"{s.window_seconds} seconds").alias("w"), "model_version").agg(*aggs)


def _iso(t) -> str:
    if isinstance(t, datetime):
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        return t.isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(t)


def pr_auc_approx(pos: list[int], neg: list[int]) -> float | None:
    """Average precision with the threshold at each bin edge (high to low): sum over bins of recall gained times
    the precision at that threshold. Exact when no two scores of different classes share a bin."""
    total = sum(pos)
    if total == 0:
        return None
    tp = fp = 0
    ap = 0.0
    for i in reversed(range(len(pos))):
        tp, fp = tp + pos[i], fp + neg[i]
        if pos[i]:
            ap += (pos[i] / total) * (tp / (tp + fp))
    return ap


def finish(spec: DatasetSpec, row: dict) -> dict:
    """Additive sums of one window -> the metrics message (see contracts/metrics.schema.json)."""
    n = int(row["count"])
    out = {"dataset": spec.name, "window_start": _iso(row["window_start"]), "window_end": _iso(row["window_end"]),
           "model_version": str(row["model_version"]), "count": n}
    if spec.task in ("regression", "recommendation"):
        out |= {"rmse": math.sqrt(row["sse"] / n) if n else None, "mae": row["sae"] / n if n else None}
    elif spec.task == "multiclass":
        out |= {"accuracy": int(row["correct"]) / n if n else None}
    else:
        tp, fp, fn = int(row["tp"]), int(row["fp"]), int(row["fn"])
        out |= {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None,
                "positives": int(row["positives"]),
                "pr_auc_approx": pr_auc_approx([int(row[f"pos_{i}"]) for i in range(BINS)],
                                               [int(row[f"neg_{i}"]) for i in range(BINS)])}
    return out


def window_rows(agg: DataFrame) -> list[dict]:
    """Collect one micro-batch of emitted windows (a handful of rows) as plain dicts."""
    flat = agg.select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"), "*").drop("w")
    return [r.asDict() for r in flat.collect()]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def offline_metrics(spec: DatasetSpec, predictions: list[dict], actuals: list[dict]) -> dict[tuple[str, str], dict]:
    """The same windows recomputed from the topics' messages (`predictions`: the predictions topic's and the shadow
    topic's), in offset order (the first occurrence of a (request_id, model_version) wins, as in the stream).
    Keyed by (window_start, model_version)."""
    s = spec.serving
    first_p, first_a = {}, {}
    for m in predictions:
        first_p.setdefault((m["request_id"], m["model_version"]), m)
    for m in actuals:
        if isinstance(m.get("actual"), int | float) and math.isfinite(m["actual"]):
            first_a.setdefault(m["request_id"], m)
    sums: dict[tuple[float, str], dict] = {}
    for (rid, _), p in first_p.items():
        a = first_a.get(rid)
        if a is None:
            continue
        pt, at = _ts(p["event_time"]), _ts(a["event_time"])
        if not pt <= at <= pt + s.actual_within_seconds:
            continue
        start = math.floor(pt / s.window_seconds) * s.window_seconds
        r = sums.setdefault((start, p["model_version"]), {"count": 0, "sse": 0.0, "sae": 0.0, "tp": 0, "fp": 0,
                                                           "fn": 0, "positives": 0, "correct": 0,
                                                           **{f"pos_{i}": 0 for i in range(BINS)},
                                                           **{f"neg_{i}": 0 for i in range(BINS)}})
        e = p["prediction"] - a["actual"]
        y, yhat = a["actual"] == 1, p["prediction"] == 1
        b = min(int(math.floor((p.get("probability") or 0.0) * BINS)), BINS - 1)
        r["count"] += 1
        r["correct"] += p["prediction"] == a["actual"]
        r["sse"] += e * e
        r["sae"] += abs(e)
        r["tp"] += y and yhat
        r["fp"] += (not y) and yhat
        r["fn"] += y and not yhat
        r["positives"] += y
        r[f"pos_{b}" if y else f"neg_{b}"] += 1
    out = {}
    for (start, version), r in sums.items():
        row = r | {"window_start": datetime.fromtimestamp(start, UTC),
                   "window_end": datetime.fromtimestamp(start + s.window_seconds, UTC),
                   "model_version": version}
        m = finish(spec, row)
        out[(m["window_start"], version)] = m
    return out


def degraded(spec: DatasetSpec, windows: list[dict]) -> bool:
    """The retrain rule: at least degrade_n of the last degrade_m judged windows (each with at least
    min_window_count joined predictions) are past the threshold. rmse and mae are worse above it; precision,
    recall and pr_auc_approx below it."""
    s = spec.serving
    if not s.degrade_metric:
        return False
    judged = [w for w in windows if w.get("count", 0) >= s.min_window_count and w.get(s.degrade_metric) is not None]
    last = judged[-s.degrade_m:]
    worse_above = s.degrade_metric in ("rmse", "mae")
    bad = sum((w[s.degrade_metric] > s.degrade_threshold) if worse_above else
              (w[s.degrade_metric] < s.degrade_threshold) for w in last)
    return bad >= s.degrade_n


# the gate's metric without degrade_metric
LIVE_PRIMARY = {"regression": "rmse", "classification": "pr_auc_approx", "multiclass": "accuracy",
                "recommendation": "rmse"}
LOWER_IS_BETTER = ("rmse", "mae")


def _latest(windows: list[dict]) -> list[dict]:
    """One message per (window_start, model_version), the last one read (a replayed window says the same), in
    window order."""
    out = {(m["window_start"], str(m.get("model_version"))): m for m in windows
           if isinstance(m, dict) and "window_end" in m and "window_start" in m}
    return sorted(out.values(), key=lambda m: (m["window_end"], str(m.get("model_version"))))


def judge(spec: DatasetSpec, recent: list[dict], new: list[dict], champion: str | None = None,
          ) -> tuple[list[dict], bool]:
    """The live-metrics sensor's decision: the recent windows to remember (every version's, for the last
    max(degrade_m, gate_windows) window starts) and whether to request a retrain. Only the champion's windows are
    judged when `champion` is known (a challenger's bad windows must not retrain the champion); all of them
    otherwise. After a retrain request the judged windows are forgotten, so one degradation asks once."""
    s = spec.serving
    windows = _latest(recent + new)
    judged = [w for w in windows if champion is None or str(w.get("model_version")) == champion]
    retrain = degraded(spec, judged[-s.degrade_m:])
    if retrain:
        windows = [w for w in windows if w not in judged]
    starts = sorted({w["window_start"] for w in windows})[-max(s.degrade_m, s.challenger.gate_windows):]
    return [w for w in windows if w["window_start"] in starts], retrain


def challenger_verdict(spec: DatasetSpec, windows: list[dict], champion: str | None,
                       challenger: str | None) -> tuple[bool, str]:
    """The live promotion gate: (promote, why). True when, in each of the last N (serving.challenger.gate_windows)
    windows where both versions were judged (each with at least min_window_count joined predictions and the
    metric known), the challenger's metric is no worse than the champion's. The metric is the spec's
    degrade_metric, else rmse (regression) or pr_auc_approx (classification). No champion, no challenger, the
    same version, or N = 0: never."""
    s = spec.serving
    n = s.challenger.gate_windows
    if not n or champion is None or challenger is None or champion == challenger:
        return False, "no live gate: needs gate_windows > 0 and a challenger other than the champion"
    metric = s.degrade_metric or LIVE_PRIMARY[spec.task]
    by_start: dict[str, dict[str, dict]] = {}
    for m in _latest(windows):
        if m.get("count", 0) >= s.min_window_count and isinstance(m.get(metric), int | float):
            by_start.setdefault(m["window_start"], {})[str(m["model_version"])] = m
    paired = [(start, v[champion][metric], v[challenger][metric]) for start, v in sorted(by_start.items())
              if champion in v and challenger in v][-n:]
    if len(paired) < n:
        return False, f"{len(paired)} of {n} windows judged with both versions so far ({metric})"
    worse = [(start, cp, ch) for start, cp, ch in paired
             if (ch > cp if metric in LOWER_IS_BETTER else ch < cp)]
    if worse:
        start, cp, ch = worse[-1]
        return False, (f"challenger {challenger} worse than champion {champion} in {len(worse)} of the last {n} "
                       f"windows ({metric} {ch:.4g} vs {cp:.4g} in the window from {start})")
    return True, (f"challenger {challenger} no worse than champion {champion} on {metric} in each of the last {n} "
                  f"windows: " + ", ".join(f"{ch:.4g} vs {cp:.4g}" for _, cp, ch in paired))
