"""Where every landed batch stands, from Dagster's own run records and the store (ml_platform.data.accounting
decides; this module reads the instance), and the check that shows it in the Dagster UI:
`<dataset>/raw_batches:every_batch_accounted` fails while a batch has failed for good or is stuck.
(No `from __future__ import annotations`: Dagster reads the check's context annotation at definition time.)"""

import time

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    DagsterEventType,
    DagsterInstance,
    MetadataValue,
    asset_check,
)

from assets.common import REFUSED_TAG, asset_key, batch_partitions
from ml_platform.data.accounting import BATCH_LAYERS, Batch, RunFact, account, read_store_facts, summarize
from ml_platform.spec import DatasetSpec
from ml_platform.stores.base import Store
from resources import StorageResource

CHECK = "every_batch_accounted"
STUCK_SECONDS = 3600.0  # a batch waiting or running this long fails the check (doctor has its own threshold)
MAX_ATTEMPTS = 4  # failed runs of a batch before it is `failed` (Dagster's own run retry counts as one)
ERRORS_PER_READ = 20  # failure messages fetched per read: one event-log query each
FAILURES = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}


def _layer(spec: DatasetSpec, selection) -> str | None:
    layers = [k.path[-1] for k in selection or () if len(k.path) == 2 and k.path[0] == spec.name]
    for batch_layer in BATCH_LAYERS:
        if batch_layer in layers:
            return batch_layer
    return layers[0] if layers else None


def runs_from_instance(instance: DagsterInstance, spec: DatasetSpec, limit: int = 2000) -> list[RunFact]:
    """The newest `limit` runs of the instance as RunFacts. Runs of other datasets keep only their status (they
    count in the queue depth), so a partition key two datasets share cannot mix their batches up."""
    facts, failed_newest = [], {}
    for r in instance.get_run_records(limit=limit):  # newest first
        run = r.dagster_run
        layer = _layer(spec, run.asset_selection)
        partition = run.tags.get("dagster/partition") if layer else None
        fact = RunFact(run_id=run.run_id, partition=partition, layer=layer, status=run.status.value,
                       created=r.create_timestamp.timestamp(), ended=r.end_time,
                       refused=run.tags.get(REFUSED_TAG), will_retry=run.tags.get("dagster/will_retry") == "true")
        if partition and layer in BATCH_LAYERS and fact.status == "FAILURE" and partition not in failed_newest:
            failed_newest[partition] = len(facts)
        facts.append(fact)
    for i in list(failed_newest.values())[:ERRORS_PER_READ]:
        facts[i] = _with_error(instance, facts[i])
    return facts


def _with_error(instance: DagsterInstance, fact: RunFact) -> RunFact:
    from dataclasses import replace

    messages = []
    for e in instance.all_logs(fact.run_id, of_type=FAILURES):
        err = getattr(e.dagster_event.event_specific_data, "error", None)
        while err is not None and err.cause is not None:  # the step's own exception, not Dagster's wrapper
            err = err.cause
        messages.append((err.message.strip() if err else None) or e.message or e.dagster_event.message or "")
    return replace(fact, error=(messages[0] if messages else "the run failed")[:1000])


def batch_states(instance: DagsterInstance, store: Store, spec: DatasetSpec, now: float | None = None,
                 ) -> tuple[list[Batch], list[RunFact]]:
    runs = runs_from_instance(instance, spec)
    known = set(instance.get_dynamic_partitions(batch_partitions(spec).name))
    return account(spec, read_store_facts(store, spec), known, runs, now or time.time(), MAX_ATTEMPTS), runs


def evaluation(spec: DatasetSpec, batches: list[Batch], runs: list[RunFact], now: float) -> dict:
    """The check's verdict and metadata: counts per state, the oldest unhandled batch's age, the run queue, and a
    table of the batches that need a person (failed, or stuck longer than STUCK_SECONDS)."""
    s = summarize(batches, runs, now)
    stuck = [b for b in batches if b.state in ("waiting", "running") and now - b.since > STUCK_SECONDS]
    bad = [b for b in batches if b.state == "failed"] + stuck
    rows = "\n".join(f"| {b.file or b.key} | {b.state} | {b.attempts} | {b.reason[:200]} |" for b in bad[:50])
    table = "| file | state | failed runs | why |\n|---|---|---|---|\n" + rows if bad else "every batch is moving"
    age = s["oldest_unhandled_age_s"]
    return {
        "passed": not bad,
        "description": (f"{len(bad)} batch(es) need attention: failed {len(bad) - len(stuck)}, stuck {len(stuck)}"
                        if bad else "every landed file is accepted, quarantined, superseded or on its way"),
        "metadata": {**{f"batches_{k}": v for k, v in s["counts"].items()},
                     "oldest_unhandled_age_seconds": round(age, 1) if age is not None else 0.0,
                     "run_queue_depth": s["queue_depth"], "runs_in_flight": s["in_flight"],
                     "needs_attention": MetadataValue.md(table)},
    }


def check_evaluation(spec: DatasetSpec, verdict: dict) -> AssetCheckEvaluation:
    """The verdict as an evaluation the new-batch sensor records without a run."""
    return AssetCheckEvaluation(asset_key=asset_key(spec, "raw_batches"), check_name=CHECK, passed=verdict["passed"],
                                metadata=verdict["metadata"], severity=AssetCheckSeverity.ERROR,
                                description=verdict["description"])


def build_batches_check(spec: DatasetSpec) -> AssetChecksDefinition:
    @asset_check(asset=asset_key(spec, "raw_batches"), name=CHECK, blocking=False,
                 description=f"Every file landed in landing/{spec.name}/ is accepted, quarantined (with a reason), "
                             f"superseded or on its way; fails while one has failed {MAX_ATTEMPTS} times or has waited "
                             f"over {STUCK_SECONDS / 60:.0f} min. The new-batch sensor records it as batches move; "
                             f"`ml-platform batches {spec.name}` lists them.")
    def every_batch_accounted(context: AssetCheckExecutionContext, storage: StorageResource) -> AssetCheckResult:
        now = time.time()
        batches, runs = batch_states(context.instance, storage.store(), spec, now)
        v = evaluation(spec, batches, runs, now)
        return AssetCheckResult(passed=v["passed"], metadata=v["metadata"], severity=AssetCheckSeverity.ERROR,
                                description=v["description"])

    return every_batch_accounted
