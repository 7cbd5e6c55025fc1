"""A light code location for tests/test_batches_cli.py: used_cars' batch partitions, a new-batch sensor under the
real one's name, and trivial raw_batches / cleaned_features assets that write what the real jobs write to the store
(the bronze record, the cleaning's verdict), so `ml-platform batches` and `doctor` read real Dagster runs and a
real store without Spark. The file name says how its batch goes: `bad*` fails its ingestion (as a crashed worker
would), `refuse*` is refused by its job (tagged ml_platform/refused), `copy*` repeats batch `good`'s content, and
`dirty*` is cleaned but not accepted. The store is ML_PLATFORM_DATA."""

import os

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    Failure,
    RunRequest,
    SensorResult,
    SkipReason,
    asset,
    in_process_executor,
    sensor,
)

from ml_platform.data.landing import is_temporary, partition_key
from ml_platform.layout import accepted_marker, batch_record_path, landing_dir, rejected_marker
from ml_platform.spec import builtin_specs
from ml_platform.stores import open_store

SPEC = builtin_specs()["used_cars"]
PARTITIONS = DynamicPartitionsDefinition(name=f"{SPEC.name}_batches")
RAW, CLEANED = AssetKey([SPEC.name, "raw_batches"]), AssetKey([SPEC.name, "cleaned_features"])


def store():
    return open_store(os.environ["ML_PLATFORM_DATA"])


@asset(key=RAW, partitions_def=PARTITIONS)
def raw_batches(context) -> None:
    key = context.partition_key
    if key.startswith("bad"):
        raise RuntimeError(f"worker lost while ingesting {key}")
    if key.startswith("refuse"):
        context.instance.add_run_tags(context.run.run_id, {"ml_platform/refused": "raw_rows: the file has 0 rows"})
        raise Failure(description=f"batch {key} rejected: raw_rows")
    store().write_json(batch_record_path(SPEC, key),
                       {"partition": key, "duplicate_of": "good" if key.startswith("copy") else None})


@asset(key=CLEANED, deps=[RAW], partitions_def=PARTITIONS)
def cleaned_features(context) -> None:
    key, s = context.partition_key, store()
    why = (["duplicate of batch good: nothing new to train on"] if key.startswith("copy")
           else ["quarantine_share: 80% of rows quarantined"] if key.startswith("dirty") else [])
    if why:
        s.write_json(rejected_marker(SPEC, key), {"partition": key, "why": why})
    else:
        s.write_json(accepted_marker(SPEC, key), {"partition": key, "cleaned": 1})


@sensor(name=f"{SPEC.name}_new_batch_sensor", minimum_interval_seconds=2, asset_selection=[RAW, CLEANED],
        default_status=DefaultSensorStatus.RUNNING)
def new_batch_sensor(context):
    known = set(context.instance.get_dynamic_partitions(PARTITIONS.name))
    new = {partition_key(f.name): f.name for f in store().list_files(landing_dir(SPEC))
           if not is_temporary(f.name) and partition_key(f.name) not in known}
    if not new:
        return SkipReason("no new files")
    return SensorResult(run_requests=[RunRequest(partition_key=k, run_key=k, tags={"ml_platform/file": n})
                                      for k, n in new.items()],
                        dynamic_partitions_requests=[PARTITIONS.build_add_request(sorted(new))])


defs = Definitions(assets=[raw_batches, cleaned_features], sensors=[new_batch_sensor], executor=in_process_executor)
