"""new_batch_sensor: each new file in a dataset's landing zone becomes a partition and a raw_batches run."""

import time

from dagster import (
    AssetObservation,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from assets.common import asset_key, batch_partitions
from ml_platform.data.landing import Cursor, plan_landing
from ml_platform.data.layers import quarantine_file
from ml_platform.layout import landing_dir
from ml_platform.spec import DatasetSpec
from resources import StorageResource


def build_new_batch_sensor(spec: DatasetSpec, interval_seconds: int = 15, settle_seconds: float = 5.0,
                           max_new: int = 50) -> SensorDefinition:
    raw_key = asset_key(spec, "raw_batches")
    partitions = batch_partitions(spec)
    landing = landing_dir(spec)

    @sensor(name=f"{spec.name}_new_batch_sensor", asset_selection=[raw_key], minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Watches {landing}/ and requests raw_batches for each settled new CSV; "
                        f"rejected files go to quarantine/{spec.name}/files/ with a reason.")
    def new_batch_sensor(context: SensorEvaluationContext, storage: StorageResource):
        store = storage.store()
        plan = plan_landing(spec, Cursor.parse(context.cursor), store.list_files(landing),
                            set(context.instance.get_dynamic_partitions(partitions.name)), time.time_ns(),
                            lambda name: store.read_head(f"{landing}/{name}"), settle_seconds, max_new)
        events = []
        for f, reason in plan.rejected:
            try:
                where = quarantine_file(store, spec, f.name, reason)
            except OSError as e:  # leave it in place; the reason is still recorded below
                where = f"not moved ({e})"
            context.log.warning(f"rejected {f.name!r}: {reason} -> {where}")
            events.append(AssetObservation(asset_key=raw_key, metadata={
                "rejected_file": f.name, "reason": reason, "quarantined_to": where}))
        if plan.already_ingested:
            context.log.info(f"skipped {len(plan.already_ingested)} file(s) already ingested under the same name: "
                             f"{plan.already_ingested[:5]}; land corrections under a new name")
        cursor = plan.cursor.dump()
        if not plan.new:
            why = f"no new settled files in {landing}/"
            if plan.waiting:
                why += f"; {len(plan.waiting)} still being written: {plan.waiting[:5]}"
            return SensorResult(skip_reason=SkipReason(why), cursor=cursor, asset_events=events)
        return SensorResult(
            run_requests=[RunRequest(partition_key=k, run_key=f"{spec.name}:{k}", tags={"ml_platform/file": f.name})
                          for k, f in plan.new],
            dynamic_partitions_requests=[partitions.build_add_request([k for k, _ in plan.new])],
            asset_events=events,
            cursor=cursor,
        )

    return new_batch_sensor
