"""Training benchmarks, side by side in one run (a noisy 2-core machine: compare ratios, not seconds).

  quality   the stack vs its base models vs a tuned single-machine baseline (scikit-learn HistGradientBoosting)
            on the same train/holdout split; Spark GBT time-to-quality vs the baseline's fit time
  parallel  base models trained concurrently (2 at a time) vs one by one, same data, same settings
  scaling   full retrain wall time (training_set -> serving_deployment work, minus Dagster) at several sizes

  .venv/bin/python bench/train_bench.py --dataset used_cars --rows 20000 --only quality,xgboost,parallel
  .venv/bin/python bench/train_bench.py --dataset used_cars --rows 20000 --only scaling --scales 0.25,0.5,1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "train"

from ml_platform.data.landing import partition_key  # noqa: E402
from ml_platform.data.layers import clean_stored_batch, ingest_batch  # noqa: E402
from ml_platform.layout import landing_dir  # noqa: E402
from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402
from ml_platform.stores import LocalStore  # noqa: E402
from ml_platform.train.algorithms import LABEL, TREE_FEATURES, algorithm, param_maps  # noqa: E402
from ml_platform.train.features import build_feature_pipeline  # noqa: E402
from ml_platform.train.models import featurized, train_models  # noqa: E402
from ml_platform.train.stacking import fit_stack, leaderboard  # noqa: E402
from ml_platform.train.training_set import build_training_set, mark_accepted  # noqa: E402


def prepare(spark, spec, rows: int, batches: int = 4) -> LocalStore:
    d = OUT / f"{spec.name}-{rows}"
    if (d / "ready").exists():
        return LocalStore(d / "data")
    shutil.rmtree(d, ignore_errors=True)
    store = LocalStore(d / "data")
    land = store.path(landing_dir(spec))
    land.mkdir(parents=True)
    for b in range(1, batches + 1):
        p = write_batch(SimConfig(spec.name, rows_per_batch=rows // batches, seed=3), b, land, None)
        k = partition_key(p.name)
        ingest_batch(spark, store, spec, k)
        mark_accepted(store, spec, k, True, clean_stored_batch(spark, store, spec, k))
    (d / "ready").write_text("")
    return store


def full_retrain(spark, store, spec, version: str, concurrent: int = 2) -> dict:
    t = {}
    t0 = time.perf_counter()
    build_training_set(spark, store, spec, version)
    t["training_set"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_feature_pipeline(spark, store, spec, version)
    t["feature_pipeline"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = train_models(spark, store, spec, version, list(spec.algorithms), concurrent)
    t["models"] = time.perf_counter() - t0
    ok = {n: r for n, r in results.items() if isinstance(r, dict)}
    failed = {n: str(r) for n, r in results.items() if not isinstance(r, dict)}
    t0 = time.perf_counter()
    stack = fit_stack(spark, store, spec, version, ok)
    t["stack"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return {"times": t, "results": ok, "failed": failed, "stack": stack}


def baseline(spark, store, spec, version: str) -> dict:
    """HistGradientBoosting on the same split: numeric features as they are (NaN native), categoricals as codes
    (native categorical support), log target for used_cars; a small tuned grid, early stopping."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import average_precision_score, mean_squared_error, roc_auc_score

    numeric, categorical = spec.feature_columns()
    base = store.path(f"gold/{spec.name}/{version}")
    cols = numeric + categorical + [spec.target]
    tr = spark.read.parquet(str(base / "train")).select(*cols).toPandas()
    ho = spark.read.parquet(str(base / "holdout")).select(*cols).toPandas()
    for c in categorical:
        cats = tr[c].astype("category").cat.categories
        tr[c] = tr[c].astype("category").cat.set_categories(cats)
        ho[c] = ho[c].astype("category").cat.set_categories(cats)
    for c in numeric:
        tr[c] = tr[c].astype("float64")
        ho[c] = ho[c].astype("float64")
    x_tr, x_ho = tr[numeric + categorical], ho[numeric + categorical]
    best, t0 = None, time.perf_counter()
    for lr in (0.05, 0.1):
        for leaves in (31, 63):
            if spec.task == "regression":
                m = HistGradientBoostingRegressor(learning_rate=lr, max_leaf_nodes=leaves, max_iter=500,
                                                  early_stopping=True, categorical_features="from_dtype",
                                                  random_state=0)
                t1 = time.perf_counter()
                m.fit(x_tr, np.log1p(tr[spec.target]) if spec.training.log_target else tr[spec.target])
                fit = time.perf_counter() - t1
                p = m.predict(x_ho)
                p = np.expm1(p) if spec.training.log_target else p
                score = {"rmse": float(np.sqrt(mean_squared_error(ho[spec.target], p)))}
                key = -score["rmse"]
            else:
                m = HistGradientBoostingClassifier(learning_rate=lr, max_leaf_nodes=leaves, max_iter=500,
                                                   early_stopping=True, class_weight="balanced",
                                                   categorical_features="from_dtype", random_state=0)
                t1 = time.perf_counter()
                m.fit(x_tr, tr[spec.target].astype(int))
                fit = time.perf_counter() - t1
                p = m.predict_proba(x_ho)[:, 1]
                score = {"pr_auc": float(average_precision_score(ho[spec.target], p)),
                         "roc_auc": float(roc_auc_score(ho[spec.target], p))}
                key = score["pr_auc"]
            if best is None or key > best[0]:
                best = (key, score, fit, {"learning_rate": lr, "max_leaf_nodes": leaves})
    return {"score": best[1], "fit_seconds": best[2], "params": best[3],
            "search_seconds": time.perf_counter() - t0}


def xgboost_vs_native(spark, store, spec, version: str, best: dict) -> dict:
    """One fit with the best setting the search found: xgboost.spark as shipped (one barrier worker) against
    native xgboost hist on the same feature vectors, with one thread and with both cores."""
    import xgboost as xgb
    from pyspark.ml.functions import vector_to_array

    train, holdout = featurized(spark, store, spec, version)
    alg = algorithm(spec, "xgboost")
    est = alg.make(alg.features, spec.training.seed)
    (pm,) = param_maps(est, [best], "bench")
    t0 = time.perf_counter()
    model = est.copy(pm).fit(train)
    spark_s = time.perf_counter() - t0
    scored = model.transform(holdout).select(LABEL, "prediction").toPandas()

    def arrays(df):
        pdf = df.select(vector_to_array(TREE_FEATURES).alias("x"), LABEL).toPandas()
        return np.stack(pdf["x"].to_numpy()), pdf[LABEL].to_numpy()

    x_tr, y_tr = arrays(train)
    x_ho, y_ho = arrays(holdout)
    out = {"params": best, "spark_fit_s": spark_s,
           "spark_rmse_label": float(np.sqrt(np.mean((scored["prediction"] - scored[LABEL]) ** 2)))}
    cls = xgb.XGBRegressor if spec.task == "regression" else xgb.XGBClassifier
    for threads in (1, 2):
        m = cls(tree_method="hist", n_jobs=threads, random_state=spec.training.seed, **best)
        t0 = time.perf_counter()
        m.fit(x_tr, y_tr)
        out[f"native_{threads}t_fit_s"] = time.perf_counter() - t0
        p = m.predict(x_ho) if spec.task == "regression" else m.predict_proba(x_ho)[:, 1]
        out[f"native_{threads}t_rmse_label"] = float(np.sqrt(np.mean((p - y_ho) ** 2)))
        out[f"ratio_vs_{threads}t"] = spark_s / out[f"native_{threads}t_fit_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="used_cars", choices=["used_cars", "fraud"])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--only", default="quality,parallel,scaling")
    ap.add_argument("--scales", default="0.25,0.5,1,2")
    a = ap.parse_args()
    spark = local_session("train-bench", threads=2, shuffle_partitions=4, driver_memory="8g")
    spark.sparkContext.setLogLevel("ERROR")
    spec = builtin_specs()[a.dataset]
    only = set(a.only.split(","))
    report = {"dataset": a.dataset, "rows": a.rows}
    if only & {"quality", "parallel", "xgboost"}:
        store = prepare(spark, spec, a.rows)
        run = full_retrain(spark, store, spec, "bench")
        board, _ = leaderboard(spec, run["results"], run["stack"])
        print(board, flush=True)
        report["retrain_seconds"] = run["times"]
        report["failed"] = run["failed"]
        if "quality" in only:
            b = baseline(spark, store, spec, "bench")
            metric = "rmse" if spec.task == "regression" else "pr_auc"
            gbt = run["results"].get("gbt")
            st = run["stack"]
            report["quality"] = {
                "served": st["served"], "choice": st["choice"], "served_score": st["holdout"][metric],
                "stack": (st.get("stack_holdout") or {}).get(metric), "weights": st["meta_coefficients"],
                "cv": st["cv"], "brier": st["holdout"].get("brier"),
                "base": {n: r["holdout"][metric] for n, r in run["results"].items()},
                "baseline_hgb": b["score"], "baseline_params": b["params"],
                "gbt_refit_seconds_est": gbt and gbt["train_seconds"] / (gbt["param_maps"] * gbt["folds"] + 1),
                "baseline_fit_seconds": b["fit_seconds"], "baseline_search_seconds": b["search_seconds"],
                "gbt_cv_search_seconds": gbt and gbt["train_seconds"],
            }
            print(json.dumps(report["quality"], indent=1), flush=True)
        if "xgboost" in only and "xgboost" in run["results"]:
            report["xgboost"] = xgboost_vs_native(spark, store, spec, "bench", run["results"]["xgboost"]["best_params"])
            print(json.dumps(report["xgboost"]), flush=True)
        if "parallel" in only:
            t0 = time.perf_counter()
            train_models(spark, store, spec, "bench", list(spec.algorithms), 1)
            one = time.perf_counter() - t0
            t0 = time.perf_counter()
            train_models(spark, store, spec, "bench", list(spec.algorithms), 2)
            two = time.perf_counter() - t0
            report["parallel"] = {"one_by_one_s": one, "two_at_a_time_s": two, "speedup": one / two}
            print(json.dumps(report["parallel"]), flush=True)
    if "scaling" in only:
        report["scaling"] = {}
        for s in [float(x) for x in a.scales.split(",")]:
            n = int(a.rows * s)
            store = prepare(spark, spec, n)
            run = full_retrain(spark, store, spec, "scale")
            report["scaling"][n] = run["times"]
            print(n, json.dumps({k: round(v, 1) for k, v in run["times"].items()}), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"report-{a.dataset}-{a.rows}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
