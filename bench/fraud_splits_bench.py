"""Fraud: the served model against a tuned HistGradientBoosting, over several train/holdout splits (issue 14:
"within 0.01 PR-AUC of a tuned HGB on the same split", with enough positives that the difference means something).

One pool of simulated rows is landed once (train_bench.prepare); each split is a full platform retrain
(train_bench.full_retrain: training set -> feature pipeline -> base models -> stack, minus Dagster) with a
different spec training.seed, which moves the hash split and the folds. On each split's holdout:

  served    the deployable model fit_stack saved (the stack or one member), scored by its log-odds
  HGB       HistGradientBoostingClassifier on the same train/holdout Parquet, class_weight balanced, early
            stopping, learning_rate x max_leaf_nodes in {0.05, 0.1} x {31, 63}, the best holdout AP kept (as in
            train_bench.baseline: picked on the holdout, which flatters it; --recheck adds class_weight None,
            since balanced weights can cost a gradient-boosted model precision at the top of the ranking)

PR-AUC is reported two ways, each computed the same way for both models: `ap` = scikit-learn average precision
(step-wise, no interpolation), `spark_pr` = Spark's areaUnderPR (trapezoids over at most 1000 score bins, the figure
the platform's leaderboard shows). Per split also a paired bootstrap (holdout rows resampled) of the AP difference.

  nice .venv/bin/python bench/fraud_splits_bench.py --rows 200000 --splits 4 --folds 2
  nice .venv/bin/python bench/fraud_splits_bench.py --rows 200000 --recheck 7,8   # HGB unweighted, same splits
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench import OUT, full_retrain, prepare, reduced  # noqa: E402

from ml_platform.layout import holdout_dir, stacked_model_record, train_dir  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402
from ml_platform.train.algorithms import LABEL, ROW_ID, search_space  # noqa: E402
from ml_platform.train.metrics import LOG_ODDS, score_column  # noqa: E402


def spark_metrics(spark, y: np.ndarray, s: np.ndarray) -> dict:
    """The platform's own evaluator (BinaryClassificationEvaluator, default bins) on (label, score) pairs."""
    import pandas as pd
    from pyspark.ml.evaluation import BinaryClassificationEvaluator

    df = spark.createDataFrame(pd.DataFrame({"y": y.astype(float), "s": s.astype(float)}))
    ev = BinaryClassificationEvaluator(labelCol="y", rawPredictionCol="s")
    return {"spark_pr": ev.setMetricName("areaUnderPR").evaluate(df),
            "spark_roc": ev.setMetricName("areaUnderROC").evaluate(df)}


def served_scores(spark, store, spec, version: str, path: str):
    """The saved served model's ranking score on the holdout (log-odds from rawPrediction, as evaluate_pipeline
    ranks), by row id."""
    from pyspark.ml import PipelineModel

    scored = PipelineModel.load(path).transform(spark.read.parquet(store.uri(holdout_dir(spec, version))))
    rank = score_column(LOG_ODDS) if "rawPrediction" in scored.columns else score_column("probability")
    return scored.select(ROW_ID, LABEL, rank.alias("s")).toPandas().set_index(ROW_ID).sort_index()


def hgb(spark, store, spec, version: str, class_weights=("balanced",)) -> dict:
    """train_bench.baseline for binary classification, keeping the holdout scores by row id; `class_weights` adds
    a third axis to its grid."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import average_precision_score

    numeric, categorical = spec.feature_columns()
    assert not categorical, "fraud has numeric features only"
    cols = [ROW_ID, *numeric, spec.target]
    tr = spark.read.parquet(store.uri(train_dir(spec, version))).select(*cols).toPandas()
    ho = spark.read.parquet(store.uri(holdout_dir(spec, version))).select(*cols).toPandas()
    ho = ho.set_index(ROW_ID).sort_index()
    x_tr, x_ho = tr[numeric].astype("float64"), ho[numeric].astype("float64")
    best, tried, t0 = None, {}, time.perf_counter()
    for lr, leaves, cw in itertools.product((0.05, 0.1), (31, 63), class_weights):
        m = HistGradientBoostingClassifier(learning_rate=lr, max_leaf_nodes=leaves, max_iter=500,
                                           early_stopping=True, class_weight=cw, random_state=0)
        t1 = time.perf_counter()
        m.fit(x_tr, tr[spec.target].astype(int))
        fit = time.perf_counter() - t1
        p = m.predict_proba(x_ho)[:, 1]
        ap = float(average_precision_score(ho[spec.target].astype(int), p))
        tried[f"lr={lr},leaves={leaves},class_weight={cw}"] = round(ap, 4)
        if best is None or ap > best[0]:
            best = (ap, p, fit, {"learning_rate": lr, "max_leaf_nodes": leaves, "class_weight": cw})
    return {"scores": best[1], "y": ho[spec.target].astype(int).to_numpy(), "index": ho.index.to_numpy(),
            "fit_seconds": best[2], "params": best[3], "tried_ap": tried, "search_seconds": time.perf_counter() - t0}


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray, n: int = 500, seed: int = 0) -> dict:
    """AP(a) - AP(b) over holdout rows resampled with replacement: 2.5%, 50%, 97.5% quantiles."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].sum() == 0:
            continue
        diffs.append(average_precision_score(y[i], a[i]) - average_precision_score(y[i], b[i]))
    lo, mid, hi = np.quantile(diffs, [0.025, 0.5, 0.975])
    return {"lo": float(lo), "median": float(mid), "hi": float(hi), "n": len(diffs)}


def one_split(spark, store, spec, seed: int) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=seed))
    version = f"split-seed{seed}"
    run = full_retrain(spark, store, spec, version)
    print(run["board"], flush=True)
    st = run["stack"]
    t0 = time.perf_counter()
    served = served_scores(spark, store, spec, version, st["path"])
    b = hgb(spark, store, spec, version)
    assert (served.index.to_numpy() == b["index"]).all()
    y = b["y"]
    assert (served[LABEL].to_numpy().astype(int) == y).all()
    s, h = served["s"].to_numpy(), b["scores"]
    out = {"seed": seed, "train_rows": run["train_rows"], "holdout_rows": run["holdout_rows"],
           "holdout_positives": int(y.sum()), "served": st["served"], "choice": st["choice"],
           "weights": st["meta_coefficients"], "failed": run["failed"],
           "members_platform_pr": {n: r["holdout"]["pr_auc"] for n, r in run["results"].items()},
           "stack_platform_pr": (st.get("stack_holdout") or {}).get("pr_auc"),
           "served_platform_reported": {k: st["holdout"][k] for k in ("pr_auc", "roc_auc")},
           "served_ap": float(average_precision_score(y, s)), "hgb_ap": float(average_precision_score(y, h)),
           "served_roc": float(roc_auc_score(y, s)), "hgb_roc": float(roc_auc_score(y, h)),
           "hgb_params": b["params"], "hgb_tried_ap": b["tried_ap"], "hgb_fit_s": b["fit_seconds"],
           "hgb_search_s": b["search_seconds"], "retrain_s": run["times"]}
    out |= {f"served_{k}": v for k, v in spark_metrics(spark, y, s).items()}
    out |= {f"hgb_{k}": v for k, v in spark_metrics(spark, y, h).items()}
    out["diff_ap"] = out["served_ap"] - out["hgb_ap"]
    out["diff_spark_pr"] = out["served_spark_pr"] - out["hgb_spark_pr"]
    out["bootstrap_diff_ap"] = paired_bootstrap(y, s, h)
    out["compare_s"] = time.perf_counter() - t0
    return out


def recheck(spark, store, spec, seed: int) -> dict:
    """A split already retrained (its version on disk): the saved served model against HGB without class weights
    (the same 4-point grid, class_weight None), scored as in one_split. With the main run's balanced grid this
    makes an 8-point search."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, seed=seed))
    version = f"split-seed{seed}"
    st = store.read_json(stacked_model_record(spec, version))
    served = served_scores(spark, store, spec, version, st["path"])
    b = hgb(spark, store, spec, version, (None,))
    assert (served.index.to_numpy() == b["index"]).all()
    y, s, h = b["y"], served["s"].to_numpy(), b["scores"]
    out = {"seed": seed, "served": st["served"], "holdout_positives": int(y.sum()),
           "served_ap": float(average_precision_score(y, s)), "hgb_ap": float(average_precision_score(y, h)),
           "served_roc": float(roc_auc_score(y, s)), "hgb_roc": float(roc_auc_score(y, h)),
           "hgb_params": b["params"], "hgb_tried_ap": b["tried_ap"], "hgb_search_s": b["search_seconds"]}
    out["diff_ap"] = out["served_ap"] - out["hgb_ap"]
    out["bootstrap_diff_ap"] = paired_bootstrap(y, s, h)
    return out


def table(splits: list[dict]) -> str:
    f = lambda v: format(v, ".4f")  # noqa: E731
    head = ("| seed | train / holdout rows | holdout positives | served | served AP | HGB AP | diff AP (95% boot.) "
            "| served Spark PR | HGB Spark PR | diff Spark PR | ROC served / HGB | retrain s | HGB search s |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {r['seed']} | {r['train_rows']:,} / {r['holdout_rows']:,} | {r['holdout_positives']} | {r['served']} "
            f"| {f(r['served_ap'])} | {f(r['hgb_ap'])} | {r['diff_ap']:+.4f} ({r['bootstrap_diff_ap']['lo']:+.3f}, "
            f"{r['bootstrap_diff_ap']['hi']:+.3f}) | {f(r['served_spark_pr'])} | {f(r['hgb_spark_pr'])} "
            f"| {r['diff_spark_pr']:+.4f} | {f(r['served_roc'])} / {f(r['hgb_roc'])} | {r['retrain_s']['total']:.0f} "
            f"| {r['hgb_search_s']:.0f} |" for r in splits]
    return "\n".join([head, *rows])


def summary(splits: list[dict]) -> dict:
    out = {"splits": len(splits)}
    for k in ("diff_ap", "diff_spark_pr", "served_ap", "hgb_ap"):
        v = [r[k] for r in splits]
        out[k] = {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else None,
                  "min": min(v), "max": max(v)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--splits", type=int, default=4, help="number of splits: training.seed 7, 8, ...")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the shipped search spaces (default: one setting each)")
    ap.add_argument("--drop", default="", help="algorithms to leave out, comma-separated")
    ap.add_argument("--recheck", default="", help="seeds already retrained: only HGB without class weights")
    a = ap.parse_args()
    spark = local_session("fraud-splits-bench", threads=2, shuffle_partitions=4, driver_memory="8g")
    spark.sparkContext.setLogLevel("ERROR")
    spec = reduced(builtin_specs()["fraud"], not a.full, a.folds)
    if a.drop:
        spec = dataclasses.replace(spec, algorithms={n: v for n, v in spec.algorithms.items()
                                                     if n not in a.drop.split(",")})
    print("search spaces:", json.dumps({n: search_space(spec, n) for n in spec.algorithms}),
          f"folds {spec.training.folds}", flush=True)
    t0 = time.perf_counter()
    store = prepare(spark, spec, a.rows)
    if a.recheck:
        out = []
        for seed in map(int, a.recheck.split(",")):
            out.append(recheck(spark, store, spec, seed))
            print(json.dumps(out[-1], default=str), flush=True)
            (OUT / f"fraud-splits-{a.rows}-recheck.json").write_text(json.dumps(out, indent=1, default=str))
        return
    report = {"rows": a.rows, "folds": spec.training.folds, "algorithms": {n: search_space(spec, n)
              for n in spec.algorithms}, "landing_s": time.perf_counter() - t0, "splits": []}
    path = OUT / f"fraud-splits-{a.rows}.json"
    for i in range(a.splits):
        r = one_split(spark, store, spec, spec.training.seed + i)
        report["splits"].append(r)
        report["summary"] = summary(report["splits"])
        path.write_text(json.dumps(report, indent=1, default=str))
        print(json.dumps({k: v for k, v in r.items() if k not in ("choice",)}, default=str), flush=True)
        print(table(report["splits"]), flush=True)
        print(json.dumps(report["summary"]), flush=True)


if __name__ == "__main__":
    main()
