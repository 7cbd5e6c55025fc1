"""Training benchmarks, side by side in one run (a noisy 2-core machine: compare ratios, not seconds).

  quality   the stack vs its base models vs a tuned single-machine baseline (scikit-learn HistGradientBoosting)
            on the same train/holdout split; Spark GBT time-to-quality vs the baseline's fit time
  parallel  base models trained concurrently (2 at a time) vs one by one, same data, same settings
  scaling   full retrain wall time (training_set -> serving_deployment work, minus Dagster) at several sizes:
            --rows times each scale, grown one accepted batch at a time (the smallest size is one batch; a size
            of m batches trains on the last m, the spec's training window), so no row is simulated twice

Every step goes through ml_platform.train.kinds, as the Dagster assets do (features, train, select, leaderboard).
Regression and binary classification are compared with HistGradientBoosting{Regressor,Classifier}; multi-class
(--dataset tickets) with HistGradientBoostingClassifier (class_weight balanced) on macro-F1, accuracy, log-loss.
--small gives every algorithm one setting, the first combination of its shipped grid, no random draws (and
--folds overrides the spec's folds), for runs where the shipped search spaces take too long.

  .venv/bin/python bench/train_bench.py --dataset used_cars --rows 20000 --only quality,xgboost,parallel
  .venv/bin/python bench/train_bench.py --dataset tickets --rows 50000 --only quality
  .venv/bin/python bench/train_bench.py --dataset used_cars --rows 1000000 --only scaling --scales 0.25,0.5,1 \
      --small --folds 2
"""

from __future__ import annotations

import argparse
import dataclasses
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
from ml_platform.layout import holdout_dir, landing_dir, train_dir  # noqa: E402
from ml_platform.local.simulate import SimConfig, write_batch  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import builtin_specs  # noqa: E402
from ml_platform.stores import LocalStore  # noqa: E402
from ml_platform.train.algorithms import LABEL, TREE_FEATURES, algorithm, param_maps, search_space  # noqa: E402
from ml_platform.train.kinds import kind  # noqa: E402
from ml_platform.train.metrics import primary  # noqa: E402
from ml_platform.train.models import featurized, train_models  # noqa: E402
from ml_platform.train.training_set import build_training_set, mark_accepted  # noqa: E402


def prepare(spark, spec, rows: int, batches: int = 4) -> LocalStore:
    d = OUT / f"{spec.name}-{rows}"
    if (d / "ready").exists():
        return LocalStore(d / "data")
    shutil.rmtree(d, ignore_errors=True)
    store = LocalStore(d / "data")
    land_batches(spark, store, spec, rows // batches, batches)
    (d / "ready").write_text("")
    return store


def land_batches(spark, store: LocalStore, spec, per_batch: int, batches: int) -> float:
    """Simulate, ingest, clean and accept batches 1..`batches` of `per_batch` rows (those not already accepted:
    a marker file per batch); the seconds it took."""
    land = store.path(landing_dir(spec))
    land.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        done = store.path(f"bench-accepted-{b:05d}")
        if done.exists():
            continue
        p = write_batch(SimConfig(spec.name, rows_per_batch=per_batch, seed=3), b, land, None)
        k = partition_key(p.name)
        ingest_batch(spark, store, spec, k)
        mark_accepted(store, spec, k, True, clean_stored_batch(spark, store, spec, k))
        done.write_text("")
    return time.perf_counter() - t0


def reduced(spec, small: bool, folds: int | None):
    """The spec with one setting per algorithm (the first combination of its grid, random draws dropped) when
    `small`, and `folds` folds when given."""
    if small:
        spec = dataclasses.replace(spec, algorithms={n: {"grid": {p: [v] for p, v in search_space(spec, n)[0].items()}}
                                                     for n in spec.algorithms})
    if folds:
        spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training, folds=folds))
    return spec


def full_retrain(spark, store, spec, version: str, concurrent: int = 2) -> dict:
    """The jobs' training_set, feature_pipeline, models and stack steps (jobs.py), through the task kind's table
    (train/kinds.py), each step timed; minus MLflow logging, explanations and plots."""
    k = kind(spec)
    t = {}
    t0 = time.perf_counter()
    summary = build_training_set(spark, store, spec, version)
    t["training_set"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    k.features(spark, store, spec, version)
    t["feature_pipeline"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = k.train(spark, store, spec, version, list(spec.algorithms), concurrent)
    t["models"] = time.perf_counter() - t0
    ok = {n: r for n, r in results.items() if isinstance(r, dict)}
    failed = {n: str(r) for n, r in results.items() if not isinstance(r, dict)}
    t0 = time.perf_counter()
    stack = k.select(spark, store, spec, version, ok)
    t["stack"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return {"times": t, "results": ok, "failed": failed, "stack": stack, "train_rows": summary["train_rows"],
            "holdout_rows": summary["holdout_rows"], "board": k.leaderboard(spec, ok, stack)[0]}


def baseline(spark, store, spec, version: str) -> dict:
    """HistGradientBoosting on the same split: numeric features as they are (NaN native), categoricals as codes
    (native categorical support), log target for used_cars; a small tuned grid, early stopping. Classifiers
    (binary and multi-class) with class_weight balanced."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        log_loss,
        mean_squared_error,
        roc_auc_score,
    )

    numeric, categorical = spec.feature_columns()
    cols = numeric + categorical + [spec.target]
    tr = spark.read.parquet(store.uri(train_dir(spec, version))).select(*cols).toPandas()
    ho = spark.read.parquet(store.uri(holdout_dir(spec, version))).select(*cols).toPandas()
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
                if spec.task == "multiclass":  # the target is the class index 0..K-1 (spec.classes' order)
                    y, labels = ho[spec.target].astype(int), list(range(len(spec.classes)))
                    proba = np.zeros((len(ho), len(labels)))
                    proba[:, m.classes_] = m.predict_proba(x_ho)
                    yhat = proba.argmax(axis=1)
                    score = {"macro_f1": float(f1_score(y, yhat, average="macro")),
                             "accuracy": float(accuracy_score(y, yhat)),
                             "log_loss": float(log_loss(y, proba, labels=labels))}
                else:
                    p = m.predict_proba(x_ho)[:, 1]
                    score = {"pr_auc": float(average_precision_score(ho[spec.target], p)),
                             "roc_auc": float(roc_auc_score(ho[spec.target], p))}
                key = score[primary(spec.task)[0]]
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


COLUMNS = {"regression": ["rmse", "mae", "r2"], "classification": ["pr_auc", "roc_auc"],
           "multiclass": ["macro_f1", "accuracy", "log_loss"]}


def comparison(spec, run: dict, b: dict) -> str:
    """The served model, the stack, every base model and the baseline on the holdout, one markdown table."""
    cols = COLUMNS[spec.task]
    st = run["stack"]
    fmt = lambda v: "" if v is None else format(v, ".4g")  # noqa: E731
    rows = [(f"served ({st['served']})", st["holdout"])]
    if st.get("stack_holdout"):
        rows.append(("stacked", st["stack_holdout"]))
    rows += [(n, r["holdout"]) for n, r in sorted(run["results"].items())]
    rows.append((f"HistGradientBoosting {b['params']}", b["score"]))
    return "\n".join([f"| model (holdout) | {' | '.join(cols)} |", "|---|" + "---|" * len(cols)]
                     + [f"| {n} | {' | '.join(fmt(s.get(c)) for c in cols)} |" for n, s in rows])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="used_cars", choices=["used_cars", "fraud", "tickets"])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--only", default="quality,parallel,scaling")
    ap.add_argument("--scales", default="0.25,0.5,1,2")
    ap.add_argument("--small", action="store_true", help="one setting per algorithm (its grid's first combination)")
    ap.add_argument("--folds", type=int, default=None, help="cross-validation folds (default: the spec's)")
    a = ap.parse_args()
    spark = local_session("train-bench", threads=2, shuffle_partitions=4, driver_memory="8g")
    spark.sparkContext.setLogLevel("ERROR")
    spec = reduced(builtin_specs()[a.dataset], a.small, a.folds)
    print("search spaces:", json.dumps({n: search_space(spec, n) for n in spec.algorithms}),
          f"folds {spec.training.folds}", flush=True)
    only = set(a.only.split(","))
    report = {"dataset": a.dataset, "rows": a.rows, "small": a.small, "folds": spec.training.folds}
    if only & {"quality", "parallel", "xgboost"}:
        store = prepare(spark, spec, a.rows)
        run = full_retrain(spark, store, spec, "bench")
        print(run["board"], flush=True)
        report["retrain_seconds"] = run["times"]
        report["failed"] = run["failed"]
        report["split"] = {"train": run["train_rows"], "holdout": run["holdout_rows"]}
        print(f"train {run['train_rows']} / holdout {run['holdout_rows']} rows; failed: {run['failed']}; "
              f"stages (s): {json.dumps({k: round(v, 1) for k, v in run['times'].items()})}", flush=True)
        if "quality" in only:
            b = baseline(spark, store, spec, "bench")
            metric = primary(spec.task)[0]
            gbt = run["results"].get("gbt")
            st = run["stack"]
            report["quality"] = {
                "served": st["served"], "choice": st["choice"], "served_score": st["holdout"][metric],
                "served_holdout": {c: st["holdout"].get(c) for c in COLUMNS[spec.task]},
                "stack": (st.get("stack_holdout") or {}).get(metric), "weights": st["meta_coefficients"],
                "cv": st["cv"], "brier": st["holdout"].get("brier"),
                "base": {n: r["holdout"][metric] for n, r in run["results"].items()},
                "base_train_seconds": {n: r["train_seconds"] for n, r in run["results"].items()},
                "stack_fit_seconds": st["fit_seconds"],
                "baseline_hgb": b["score"], "baseline_params": b["params"],
                "gbt_refit_seconds_est": gbt and gbt["train_seconds"] / (gbt["param_maps"] * gbt["folds"] + 1),
                "baseline_fit_seconds": b["fit_seconds"], "baseline_search_seconds": b["search_seconds"],
                "gbt_cv_search_seconds": gbt and gbt["train_seconds"],
            }
            print(json.dumps(report["quality"], indent=1, default=str), flush=True)
            print(comparison(spec, run, b), flush=True)
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
        # one store grown a batch at a time: the smallest size is one batch, a size of m batches trains on the last
        # m accepted ones (the spec's window), so each batch is simulated, ingested and cleaned once
        report["scaling"] = {}
        sizes = sorted(int(a.rows * float(x)) for x in a.scales.split(","))
        unit = sizes[0]
        if any(n % unit for n in sizes):
            raise SystemExit(f"--scales: every size must be a multiple of the smallest ({unit} rows)")
        store = LocalStore(OUT / f"{spec.name}-scaling-{unit}" / "data")
        for n in sizes:
            m = n // unit
            landed = land_batches(spark, store, spec, unit, m)
            sized = dataclasses.replace(spec, training=dataclasses.replace(spec.training, window=m))
            run = full_retrain(spark, store, sized, f"scale-{n}")
            report["scaling"][n] = {"times": run["times"], "train_rows": run["train_rows"],
                                    "holdout_rows": run["holdout_rows"], "failed": run["failed"],
                                    "models": {k: r["train_seconds"] for k, r in run["results"].items()},
                                    "served": run["stack"]["served"],
                                    "served_score": run["stack"]["holdout"][primary(spec.task)[0]],
                                    "landing_s": landed}
            print(n, json.dumps({k: round(v, 1) for k, v in run["times"].items()}),
                  json.dumps({k: v for k, v in report["scaling"][n].items() if k != "times"}, default=str),
                  flush=True)
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"report-{a.dataset}-{a.rows}-scaling.json").write_text(json.dumps(report, indent=1, default=str))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"report-{a.dataset}-{a.rows}.json").write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
