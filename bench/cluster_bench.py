"""Clustering benchmark: the platform's KMeans (Spark ML, as algorithms.REGISTRY makes it) vs scikit-learn's KMeans
on the same standardized data: simulated customers with four latent segments, through the platform's own feature
pipeline (median imputation, unit variance), collected once so both fit exactly the same matrix.

Per k: fit time, silhouette on one fixed sample of rows (squared Euclidean, Spark's ClusteringEvaluator definition,
and Euclidean, scikit-learn's default), the adjusted Rand index against the latent segments and the within-cluster
sum of squares, for Spark's KMeans fitted once (the spec's seed) and as the platform fits it (the best of
clustering.RESTARTS seeds), and scikit-learn's KMeans (k-means++, n_init "auto", i.e. one run); then which k each
would pick by silhouette, as the platform picks it.

  .venv/bin/python bench/cluster_bench.py --rows 50000 --sample 10000 --ks 2,3,4,5,6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_platform.local.simulate import customers  # noqa: E402
from ml_platform.spark import local_session  # noqa: E402
from ml_platform.spec import load_spec  # noqa: E402
from ml_platform.train.algorithms import LINEAR_FEATURES, ROW_ID, algorithm  # noqa: E402
from ml_platform.train.clustering import RESTARTS, _silhouette, fit_restarts  # noqa: E402
from ml_platform.train.features import fit_feature_pipeline  # noqa: E402

SPEC = ROOT / "ml_platform" / "specs" / "customers.yaml"
NUMERIC = ["annual_spend", "visits_per_month", "avg_basket", "tenure_months", "online_share"]


def data(spark, rows: int, seed: int):
    """(featurized Spark frame with row ids, the features as numpy, latent segment per row)."""
    frame, seg = customers.generate_labelled(np.random.default_rng(seed), rows, 0)
    pdf = frame.copy()
    for c in NUMERIC:  # what cleaning makes of these texts: numbers, '' as null
        pdf[c] = pdf[c].replace("", None).astype(float)
    pdf[ROW_ID] = np.arange(rows)
    sdf = spark.createDataFrame(pdf)
    spec = load_spec(SPEC)
    feats = fit_feature_pipeline(sdf, spec).transform(sdf).select(ROW_ID, LINEAR_FEATURES).persist()
    rows_ = feats.orderBy(ROW_ID).collect()
    x = np.array([r[LINEAR_FEATURES].toArray() for r in rows_])
    return feats, x, seg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--ks", default="2,3,4,5,6")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    spark = local_session("cluster-bench")
    feats, x, seg = data(spark, args.rows, args.seed)
    rng = np.random.default_rng(args.seed)
    idx = np.sort(rng.choice(len(x), size=min(args.sample, len(x)), replace=False))
    sample_ids = spark.createDataFrame([(int(i),) for i in idx], [ROW_ID])
    spec = load_spec(SPEC)
    alg = algorithm(spec, "kmeans")
    report = {"rows": len(x), "sample": len(idx), "features": x.shape[1],
              "latent_silhouette_sq": float(silhouette_score(x[idx], seg[idx], metric="sqeuclidean")),
              "latent_silhouette": float(silhouette_score(x[idx], seg[idx])), "by_k": []}
    est = alg.make(LINEAR_FEATURES, spec.training.seed)
    for k in [int(v) for v in args.ks.split(",")]:
        row, labels = {"k": k}, {}
        for name, restarts in (("spark1", 1), ("platform", RESTARTS)):
            t0 = time.perf_counter()
            model, _, seed = fit_restarts(est, feats, {est.getParam("k"): k}, spec.training.seed, restarts)
            row[f"{name}_fit_s"] = round(time.perf_counter() - t0, 2)
            labels[name] = (model.transform(feats).select(ROW_ID, "prediction").orderBy(ROW_ID).toPandas()
                            ["prediction"].to_numpy())
            row[f"{name}_inertia"] = float(model.summary.trainingCost)
            row[f"{name}_evaluator_silhouette"] = _silhouette(model.transform(feats.join(sample_ids, ROW_ID)))
        t0 = time.perf_counter()
        sk = KMeans(n_clusters=k, random_state=spec.training.seed, n_init="auto").fit(x)
        row["sklearn_fit_s"], row["sklearn_inertia"] = round(time.perf_counter() - t0, 2), float(sk.inertia_)
        labels["sklearn"] = sk.labels_
        for name, lab in labels.items():
            row[f"{name}_silhouette_sq"] = float(silhouette_score(x[idx], lab[idx], metric="sqeuclidean"))
            row[f"{name}_silhouette"] = float(silhouette_score(x[idx], lab[idx]))
            row[f"{name}_ari"] = float(adjusted_rand_score(seg, lab))
        row["platform_vs_sklearn_ari"] = float(adjusted_rand_score(labels["platform"], labels["sklearn"]))
        report["by_k"].append(row)
        print(json.dumps(row), flush=True)
    for name in ("spark1", "platform", "sklearn"):
        best = max(report["by_k"], key=lambda r: r[f"{name}_silhouette_sq"])
        report[f"{name}_picks_k"] = best["k"]
    print(json.dumps({k: v for k, v in report.items() if k != "by_k"}, indent=1))
    spark.stop()


if __name__ == "__main__":
    main()
