"""What the asset layers share: partitions per dataset and turning ml_platform check outcomes into Dagster's."""

from __future__ import annotations

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DagsterEventType,
    DagsterRunStatus,
    DynamicPartitionsDefinition,
    Failure,
    MetadataValue,
)

from ml_platform.data.checks import Outcome
from ml_platform.jobs import JobFailed
from ml_platform.spec import DatasetSpec
from ml_platform.train.registry import DAGSTER_RUN_TAG


def batch_partitions(spec: DatasetSpec) -> DynamicPartitionsDefinition:
    """One partition per landed batch file, added by the dataset's new_batch_sensor."""
    return DynamicPartitionsDefinition(name=f"{spec.name}_batches")


def asset_key(spec: DatasetSpec, layer: str) -> AssetKey:
    return AssetKey([spec.name, layer])


def check_specs(spec: DatasetSpec, key: AssetKey, table: dict[str, bool]) -> list[AssetCheckSpec]:
    """Checks are partitioned like their asset, so a failed check blocks only its own batch downstream
    (partitioned checks are a Dagster preview feature in 1.13; unpartitioned ones never count as passed
    for a partitioned dependency, and automation would stall)."""
    parts = batch_partitions(spec)
    return [AssetCheckSpec(name, asset=key, blocking=blocking, partitions_def=parts)
            for name, blocking in table.items()]


def check_results(key: AssetKey, outcomes: list[Outcome]) -> list[AssetCheckResult]:
    return [AssetCheckResult(
        asset_key=key, check_name=o.name, passed=o.passed,
        severity=AssetCheckSeverity.ERROR if o.blocking else AssetCheckSeverity.WARN,
        description=o.description,
        metadata={k: MetadataValue.json(v) if isinstance(v, dict | list) else v for k, v in o.metadata.items()},
    ) for o in outcomes]


def run_job(context, spark, spec: DatasetSpec, name: str, args: dict, registry=None) -> dict:
    """Run a layer's job (ml_platform.jobs) on the Spark resource and return its summary. Data the job refused
    (JobFailed) fails the step with the job's own reason; anything else is a defect and keeps its traceback."""
    try:
        return spark.run_job(context, name, spec, args, registry)
    except JobFailed as e:
        # a refusal is about the data, final: the batch accounting shows it as quarantined and never retries it
        context.instance.add_run_tags(context.run.run_id, {REFUSED_TAG: str(e)[:1000] or name})
        where = f"{spec.name} batch {context.partition_key!r}" if context.has_partition_key else spec.name
        raise Failure(description=f"{where} {FAILED_AS.get(name, f'{name} failed')}: {e}",
                      metadata={"reason": str(e)}) from None


FAILED_AS = {"ingest": "rejected"}
REFUSED_TAG = "ml_platform/refused"  # ml_platform.data.accounting.RunFact.refused reads it


def job_check_results(context, key: AssetKey, checks: list[dict]) -> list[AssetCheckResult]:
    """The check outcomes a job evaluated (and acted on), as Dagster's check results. A failed blocking check fails
    the run after the step; it is a verdict on the data, so the run is tagged as refused (never retried)."""
    outcomes = [Outcome(**c) for c in checks]
    blocked = [f"{o.name}: {o.description}" for o in outcomes if o.blocking and not o.passed]
    if blocked:
        context.instance.add_run_tags(context.run.run_id, {REFUSED_TAG: "; ".join(blocked)[:1000]})
    return check_results(key, outcomes)


def run_tags(context) -> dict[str, str]:
    """What links an MLflow run or model version back to Dagster."""
    return {DAGSTER_RUN_TAG: context.run.run_id, "dagster_job": context.job_name}


def end_orphaned_mlflow_runs(context, registry, spec: DatasetSpec) -> list[str]:
    """End as FAILED the MLflow runs a killed run worker left RUNNING (their Dagster run is over). A Dagster run
    this instance does not know (another deployment sharing the server) counts as alive. Never fails the step:
    an unreachable MLflow is the next step's problem, with its own error."""
    def alive(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id)
        return run is None or run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
                                             DagsterRunStatus.CANCELING)

    try:
        ended = registry.tracker().end_orphaned_runs(spec.name, alive)
    except Exception as e:  # noqa: BLE001 — housekeeping: say so and go on
        context.log.warning(f"could not check {spec.name}'s MLflow runs left RUNNING: {e}")
        return []
    if ended:
        context.log.warning(f"ended {len(ended)} MLflow run(s) of {spec.name} left RUNNING by a run that died: "
                            f"{ended}")
    return ended


def upstream_value(context, keys: list[AssetKey], field: str) -> str:
    """A metadata field (the training version, the model version) of the upstream materialization this step
    builds on: the one made earlier in this same run if there is one, else the newest. A retrain started
    meanwhile cannot switch a running chain to its own data."""
    wanted = set(keys)
    same_run = [e for e in context.instance.all_logs(context.run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
                if e.asset_materialization and e.asset_materialization.asset_key in wanted]
    events = same_run or [e for e in (context.instance.get_latest_materialization_event(k) for k in keys) if e]
    for e in sorted(events, key=lambda e: e.timestamp, reverse=True):
        value = e.asset_materialization.metadata.get(field)
        if value is not None:
            return str(value.value)
    raise Failure(description=f"no materialization of {', '.join(k.to_user_string() for k in keys)} records a "
                              f"{field}; materialize it first")
