"""Storage backends side by side, in one run (ratios; this machine is noisy):

1. The cleaning layers (ingest + clean of one batch) with the store on a local folder, on S3 (MinIO on loopback,
   Spark through s3a) and on HDFS (MiniDFSCluster on loopback), rounds interleaved, one SparkSession.
2. What a sensor tick costs per backend: listing a landing zone of N files.
3. The EMR path's fixed cost: one ingest job through moto's EMR API, the node emulation and Pipes over MinIO,
   against the same job in the Dagster process.

    .venv/bin/python bench/storage_bench.py --rows 100000 --rounds 3 --files 1000
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--skip-emr", action="store_true")
    a = ap.parse_args()

    from services import MiniHdfs, Minio

    from ml_platform.data.landing import partition_key
    from ml_platform.jobs import run_job
    from ml_platform.local.simulate import SimConfig, write_batch
    from ml_platform.spark import local_session, s3a_conf
    from ml_platform.spec import builtin_specs
    from ml_platform.stores import LocalStore, open_store

    tmp = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    for d in ("minio", "hdfs"):
        (tmp / d).mkdir()
    minio, hdfs = Minio(tmp / "minio"), MiniHdfs(tmp / "hdfs")
    os.environ.update(minio.env())
    minio.client().create_bucket(Bucket="bench")
    spark = local_session("storage-bench", threads=2, shuffle_partitions=4, jars_dir=ROOT / ".jars",
                          jar_groups=("spark", "aws"), extra=s3a_conf(minio.endpoint))
    spec = builtin_specs()["used_cars"]
    csv = write_batch(SimConfig("used_cars", rows_per_batch=a.rows, test_share=0.0), 1, tmp / "csv", None)
    body, key = csv.read_text(), partition_key(csv.name)
    print(f"batch: {a.rows} rows, {len(body) / 1e6:.1f} MB")
    try:
        stores = {
            "local": lambda: LocalStore(tmp / f"local-{uuid.uuid4().hex[:6]}"),
            "s3": lambda: open_store(f"s3://bench/{uuid.uuid4().hex[:6]}", endpoint_url=minio.endpoint),
            "hdfs": lambda: open_store(f"{hdfs.root}/{uuid.uuid4().hex[:6]}", http_port=hdfs.http_port,
                                       user=os.environ.get("USER", "root")),
        }
        times = {n: [] for n in stores}
        for r in range(a.rounds + 1):  # round 0 warms the JVM and each filesystem client
            for name, make in stores.items():
                store = make()
                store.write_text(f"landing/used_cars/{csv.name}", body)
                t = timed(lambda store=store: (run_job("ingest", spark, store, spec, {"partition": key}),
                                               run_job("clean", spark, store, spec, {"partition": key})))
                if r:
                    times[name].append(t)
        base = statistics.median(times["local"])
        print("\n1. ingest + clean, median of", a.rounds)
        for n, ts in times.items():
            m = statistics.median(ts)
            print(f"   {n:6s} {m:7.2f} s  {a.rows / m:9,.0f} rows/s  {m / base:5.2f}x local")

        print(f"\n2. listing a landing zone of {a.files} files (a sensor tick)")
        lists = {}
        for name, make in stores.items():
            store = make()
            for i in range(a.files):
                store.write_text(f"landing/used_cars/f-{i:05d}.csv", "id\n")
            lists[name] = statistics.median(timed(lambda s=store: s.list_files("landing/used_cars"))
                                            for _ in range(5))
        for n, t in lists.items():
            print(f"   {n:6s} {t * 1000:8.1f} ms  {t / lists['local']:6.1f}x local")

        if not a.skip_emr:
            print("\n3. one ingest job: in the Dagster process vs through EMR (moto API + node emulation + Pipes)")
            local_t, emr_t = emr_overhead(minio, spec, csv, key, spark)
            print(f"   in process {local_t:6.1f} s   EMR path {emr_t:6.1f} s   {emr_t / local_t:5.1f}x")
    finally:
        spark.stop()
        minio.stop()
        hdfs.stop()


def emr_overhead(minio, spec, csv, key, spark):
    from dagster import DagsterInstance, materialize
    from emr_emulator import EmrNodes
    from services import MotoServer

    from assets import build_dataset_assets
    from resources import EmrSparkResource, LocalSparkResource, S3Storage

    server = MotoServer()
    nodes = EmrNodes(minio.client(), minio.endpoint)
    nodes.start()
    os.environ["AWS_ENDPOINT_URL_S3"] = minio.endpoint
    minio.client().upload_file(str(ROOT / "ml_platform" / "emr_job.py"), "bench", "code/emr_job.py")
    out = []
    try:
        for backend in ("local", "emr"):
            storage = S3Storage(root=f"s3://bench/emr-{uuid.uuid4().hex[:6]}", endpoint_url=minio.endpoint)
            spark_resource = LocalSparkResource(storage=storage, threads="2", shuffle_partitions=4) \
                if backend == "local" else \
                EmrSparkResource(storage=storage, endpoint_url=server.endpoint, entry_point="s3://bench/code/emr_job.py",
                                 pipes_bucket="bench", spark_scheme="s3a", poll_seconds=0.5,
                                 python=str(ROOT / ".venv-emr" / "bin" / "python"))
            storage.store().write_text(f"landing/{spec.name}/{csv.name}", csv.read_text())
            with DagsterInstance.ephemeral() as instance:
                instance.add_dynamic_partitions(f"{spec.name}_batches", [key])
                t = time.perf_counter()
                ok = materialize(build_dataset_assets(spec)[:1], partition_key=key, instance=instance,
                                 resources={"spark": spark_resource, "storage": storage}).success
                out.append(time.perf_counter() - t)
                assert ok
    finally:
        nodes.stop()
        server.stop()
    return out


if __name__ == "__main__":
    main()
