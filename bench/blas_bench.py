"""Native BLAS (OpenBLAS from Debian) against Spark ML's Java fallback, side by side in one run.

  .venv/bin/python bench/blas_bench.py --rows 200000

Spark ML calls BLAS and LAPACK through dev.ludovic.netlib, which loads the system's libblas.so.3/liblapack.so.3
and falls back to Java code when they are missing (the "JNI_OnLoad: dlopen(libblas.so.3) failed" lines). The
set-up now installs libopenblas0-pthread. Each mode runs in its own child process (a JVM loads its BLAS once):
`native` as installed, `java` with the native library name pointed at nothing, so netlib falls back. Both fit the
same models on the same synthetic data:

- linear regression by the normal equations (solver normal: BLAS level 2, then LAPACK), 100 features;
- ALS (the recommendation task's model): rank 20, 10 iterations (LAPACK per user and item);
- k-means (the clustering task's default): k 8, 100 features;
- scoring: the fitted linear model and k-means over every row (what a scorer does per request).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(rows: int, mode: str) -> dict:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.recommendation import ALS
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import functions as F

    from ml_platform.spark import local_session

    extra = {}
    if mode == "java":  # netlib finds no native library under this name and uses its Java implementation
        extra = {
            "spark.driver.extraJavaOptions": "-Ddev.ludovic.netlib.blas.nativeLib=libnone.so "
            "-Ddev.ludovic.netlib.lapack.nativeLib=libnone.so"
        }
    spark = local_session(f"blas-{mode}", threads=2, shuffle_partitions=2, driver_memory="4g", extra=extra)
    jvm = spark._jvm
    impl = {
        "blas": jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName(),
        "lapack": jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getName(),
    }
    from pyspark.ml.feature import VectorAssembler

    n_feat = 100
    base = spark.range(rows).select(*[(F.rand(i) * 2 - 1).alias(f"x{i}") for i in range(n_feat)])
    base = base.withColumn("y", sum(F.col(f"x{i}") * (i % 7 - 3) for i in range(n_feat)) + F.randn(99))
    data = VectorAssembler(inputCols=[f"x{i}" for i in range(n_feat)], outputCol="features").transform(base)
    data = data.select("features", "y").persist()
    data.count()
    ratings = (
        spark.range(rows)
        .select(
            (F.col("id") % 5000).cast("int").alias("user"),
            (F.rand(3) * 2000).cast("int").alias("item"),
            (F.rand(4) * 5).alias("rating"),
        )
        .persist()
    )
    ratings.count()
    times = {}

    def timed(name, fn):
        t = time.perf_counter()
        r = fn()
        times[name] = round(time.perf_counter() - t, 2)
        return r

    lin = timed(
        "linear regression, normal equations (fit)",
        lambda: LinearRegression(featuresCol="features", labelCol="y", solver="normal", regParam=0.01).fit(data),
    )
    timed(
        "ALS rank 20, 10 iterations (fit)",
        lambda: ALS(userCol="user", itemCol="item", ratingCol="rating", rank=20, maxIter=10, seed=1).fit(ratings),
    )
    km = timed("k-means k 8 (fit)", lambda: KMeans(k=8, seed=1, maxIter=20, predictionCol="cluster").fit(data))
    timed(
        "scoring: linear + k-means over every row",
        lambda: km.transform(lin.transform(data)).write.format("noop").mode("overwrite").save(),
    )
    spark.stop()
    return {"mode": mode, "implementation": impl, "seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--child", choices=["native", "java"])
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.rows, a.child)), flush=True)
        return
    out = {}
    for mode in ("native", "java", "native", "java"):  # twice each, alternating: the machine is noisy
        env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
        r = subprocess.run(
            [sys.executable, __file__, "--rows", str(a.rows), "--child", mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        res = json.loads(r.stdout.strip().splitlines()[-1])
        out.setdefault(mode, []).append(res)
        print(json.dumps(res), flush=True)
    print("\n| step | native (OpenBLAS) s | Java s | Java / native |\n|---|---|---|---|")
    for step in out["native"][0]["seconds"]:
        n = min(r["seconds"][step] for r in out["native"])
        j = min(r["seconds"][step] for r in out["java"])
        print(f"| {step} | {n} | {j} | {j / n:.2f}x |")
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    (ROOT / "bench" / "out" / "blas.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
