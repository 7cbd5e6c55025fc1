"""new_batch_sensor: each new file in a dataset's landing zone becomes a partition and a run of raw_batches and
cleaned_features; and every tick it accounts for the batches already landed (assets/accounting.py): a batch whose
run died, or whose cleaning never started, is requested again with a backoff, and the `every_batch_accounted` check
records where they stand."""

import hashlib
import json
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

from assets.accounting import MAX_ATTEMPTS, batch_states, check_evaluation, evaluation
from assets.common import asset_key, batch_partitions
from assets.raw import FILE_TAG
from ml_platform.data.accounting import BATCH_LAYERS, RETRY_BASE_SECONDS, retry_due
from ml_platform.data.landing import Cursor, plan_landing
from ml_platform.data.layers import quarantine_file
from ml_platform.layout import landing_dir
from ml_platform.spec import DatasetSpec
from resources import StorageResource

GRACE_SECONDS = 120.0  # a batch with no failed run is re-requested only after this long without any run activity:
#                        the automation sensor requests cleaning itself, and may lag on a busy machine
RETRIES_PER_TICK = 10
RECORD_EVERY_SECONDS = 300.0  # the check is recorded when batches change state, and this often while any is pending


def reconcile(context: SensorEvaluationContext, store, spec: DatasetSpec, last: dict, now: float,
              grace_seconds: float = GRACE_SECONDS, retry_base_seconds: float = RETRY_BASE_SECONDS,
              ) -> tuple[list[RunRequest], list, dict]:
    """Re-requests due batches, and the check evaluation when the accounting changed. Returns (run requests,
    asset events, the cursor's accounting part)."""
    batches, runs = batch_states(context.instance, store, spec, now)
    requests = []
    for b in retry_due(batches, runs, now, retry_base_seconds, MAX_ATTEMPTS):
        mine = [r for r in runs if r.partition == b.key and r.layer in BATCH_LAYERS]
        if not b.attempts and now - max((r.ended or r.created for r in mine), default=b.since) < grace_seconds:
            continue
        if len(requests) >= RETRIES_PER_TICK:
            break
        n = sum(r.layer == b.next_layer for r in mine)
        context.log.warning(f"{spec.name} batch {b.key!r} ({b.file}): requesting {b.next_layer} again "
                            f"(failed runs so far: {b.attempts}; {b.reason})")
        layers = BATCH_LAYERS[BATCH_LAYERS.index(b.next_layer):]  # not ingested yet: both, as a new batch
        requests.append(RunRequest(partition_key=b.key, asset_selection=[asset_key(spec, x) for x in layers],
                                   run_key=f"{spec.name}:{b.key}:{b.next_layer}:attempt{n + 1}",
                                   tags={"ml_platform/dataset": spec.name, "ml_platform/requeued": str(b.attempts)}
                                   | ({FILE_TAG: b.file} if b.file else {})))
    verdict = evaluation(spec, batches, runs, now)
    meta = verdict["metadata"]
    digest = hashlib.sha1(json.dumps([verdict["passed"], {k: v for k, v in meta.items() if k.startswith("batches_")},
                                      sorted((b.key, b.state, b.attempts) for b in batches if b.state != "accepted")],
                                     sort_keys=True).encode()).hexdigest()[:16]
    pending = meta["batches_waiting"] + meta["batches_running"]
    events = []
    if digest != last.get("digest") or (pending and now - last.get("at", 0) > RECORD_EVERY_SECONDS):
        events.append(check_evaluation(spec, verdict))
        last = {"digest": digest, "at": now}
    return requests, events, last


def build_new_batch_sensor(spec: DatasetSpec, interval_seconds: int = 15, settle_seconds: float = 5.0,
                           max_new: int = 50, grace_seconds: float = GRACE_SECONDS,
                           retry_base_seconds: float = RETRY_BASE_SECONDS) -> SensorDefinition:
    raw_key, cleaned_key = asset_key(spec, "raw_batches"), asset_key(spec, "cleaned_features")
    partitions = batch_partitions(spec)
    landing = landing_dir(spec)

    @sensor(name=f"{spec.name}_new_batch_sensor", asset_selection=[raw_key, cleaned_key],
            minimum_interval_seconds=interval_seconds, default_status=DefaultSensorStatus.RUNNING,
            description=f"Watches {landing}/ and requests raw_batches for each settled new CSV; rejected files go "
                        f"to quarantine/{spec.name}/files/ with a reason. Batches whose runs died are requested "
                        f"again with a backoff (up to {MAX_ATTEMPTS} failed runs).")
    def new_batch_sensor(context: SensorEvaluationContext, storage: StorageResource):
        store = storage.store()
        saved = json.loads(context.cursor) if context.cursor and context.cursor.startswith("{") else {}
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
        retries, accounted = [], saved.get("accounted") or {}
        try:  # the accounting never stops new files from being picked up
            retries, more, accounted = reconcile(context, store, spec, accounted, time.time(), grace_seconds,
                                                 retry_base_seconds)
            events += more
        except Exception as e:  # noqa: BLE001
            context.log.warning(f"{spec.name}: batch accounting skipped this tick: {type(e).__name__}: {e}")
        cursor = json.dumps(json.loads(plan.cursor.dump()) | {"accounted": accounted})
        # bronze and silver in one run: one process and one Spark start per batch instead of two (the cleaning step
        # is skipped when a blocking raw check fails); a batch ingested alone is cleaned by reconcile()
        requests = [RunRequest(partition_key=k, run_key=f"{spec.name}:{k}", asset_selection=[raw_key, cleaned_key],
                               tags={FILE_TAG: f.name, "ml_platform/dataset": spec.name}) for k, f in plan.new]
        if not requests and not retries:
            why = f"no new settled files in {landing}/"
            if plan.waiting:
                why += f"; {len(plan.waiting)} still being written: {plan.waiting[:5]}"
            return SensorResult(skip_reason=SkipReason(why), cursor=cursor, asset_events=events)
        return SensorResult(
            run_requests=requests + retries,
            dynamic_partitions_requests=[partitions.build_add_request([k for k, _ in plan.new])] if plan.new else [],
            asset_events=events,
            cursor=cursor,
        )

    return new_batch_sensor
