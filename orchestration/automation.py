"""When refreshes run: jobs, schedules and the queue sensor.

Freshness is driven by changes: triggers queue the versions a write can alter,
and `refresh_queue_sensor` starts one refresh run when enough work is queued or
the oldest change has waited long enough. The 15-minute schedule is the safety
net (a stopped sensor, retries coming out of backoff), the nightly backfill the
belt and braces. Every run carries the refresh concurrency tag, and every
refresh step claims a slot of the `progress_refresh` pool, so with the shipped
dagster.yaml only one refresh touches the database at a time.
"""

import json
from typing import Any

import dagster as dg

from orchestration import settings
from orchestration.assets import read_model_assets
from orchestration.db import gateway
from orchestration.read_models import READ_MODELS
from orchestration.resources import PostgresResource

# Run tags: dagster.yaml limits runs with this tag to one at a time.
CONCURRENCY_TAG = "progress/refresh"
CONCURRENCY_TAG_VALUE = "database"
REFRESH_TAGS = {
    CONCURRENCY_TAG: CONCURRENCY_TAG_VALUE,
    # A retried run re-executes only what failed; the queue keeps the rest.
    "dagster/retry_strategy": "FROM_FAILURE",
}

# Applied once, to every refresh step: a lost connection or a database restart is
# retried after 5 s, 10 s, 20 s (each ±50 %), so workers do not retry in lockstep.
# Versions that fail on their own are retried by the database, with backoff.
REFRESH_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

SENSOR_INTERVAL_ENV = settings.SENSOR_INTERVAL_SECONDS.env
SENSOR_MIN_DEPTH_ENV = settings.SENSOR_MIN_DEPTH.env
SENSOR_MAX_AGE_ENV = settings.SENSOR_MAX_AGE_SECONDS.env
DEFAULT_SENSOR_INTERVAL_SECONDS = settings.SENSOR_INTERVAL_SECONDS.default
DEFAULT_SENSOR_MIN_DEPTH = settings.SENSOR_MIN_DEPTH.default
DEFAULT_SENSOR_MAX_AGE_SECONDS = settings.SENSOR_MAX_AGE_SECONDS.default

# Runs still to start or still running: a new request would only wait behind them.
PENDING_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

read_model_selection = dg.AssetSelection.assets(*(model.name for model in READ_MODELS))

# Steps run in the run's own process by default (a refresh is one database call
# per version; extra processes only add start-up time). To spread a run over
# processes, give it run config {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}}
# (docs/operators-guide.md): the chains share the queue safely.
IN_PROCESS: dict[str, Any] = {"execution": {"config": {"in_process": {}}}}

refresh_queued_versions = dg.define_asset_job(
    name="refresh_queued_versions",
    selection=read_model_selection,
    description="Why: apps change recordings and texts continuously; this refreshes only the versions "
    "those changes queued (each chain drains its kind), then checks the refreshed versions against "
    "the logical views. Run config may name versions or ask for all instead.",
    tags=REFRESH_TAGS,
    op_retry_policy=REFRESH_RETRY_POLICY,
    executor_def=dg.multi_or_in_process_executor,
    config=IN_PROCESS,
)

full_backfill = dg.define_asset_job(
    name="full_backfill",
    selection=read_model_selection,
    config={
        **IN_PROCESS,
        "ops": {asset.node_def.name: {"config": {"all_versions": True}} for asset in read_model_assets},
    },
    description="Why: a safety net for anything change capture could miss (a trigger disabled during "
    "a bulk load, a restored backup). Queues every version and drains the queue in batches, logging "
    "n/total; a killed or failed run, when retried, continues with what is still queued.",
    tags=REFRESH_TAGS,
    op_retry_policy=REFRESH_RETRY_POLICY,
    executor_def=dg.multi_or_in_process_executor,
)


def sensor_interval_seconds() -> int:
    return int(settings.value(settings.SENSOR_INTERVAL_SECONDS))


def sensor_thresholds() -> tuple[int, float]:
    """(minimum ready entries, maximum age in seconds of the oldest ready entry)."""
    return (
        int(settings.value(settings.SENSOR_MIN_DEPTH)),
        float(settings.value(settings.SENSOR_MAX_AGE_SECONDS)),
    )


def pending_refresh_run(instance: dg.DagsterInstance) -> dg.RunRecord | None:
    """A queued or running refresh (either job drains the queue), if any."""
    for job in (refresh_queued_versions.name, full_backfill.name):
        records = instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=PENDING_STATUSES), limit=1)
        if records:
            return records[0]
    return None


def _pending_reason(record: dg.RunRecord) -> str:
    run = record.dagster_run
    return f"{run.job_name} run {run.run_id[:8]} is already {run.status.value.lower()}: it will drain the queue"


@dg.sensor(
    job=refresh_queued_versions,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts one refresh_queued_versions run when the queue has enough ready versions "
    f"(${SENSOR_MIN_DEPTH_ENV}, default {DEFAULT_SENSOR_MIN_DEPTH}) or its oldest ready entry is old "
    f"enough (${SENSOR_MAX_AGE_ENV}, default {DEFAULT_SENSOR_MAX_AGE_SECONDS:.0f}s).",
)
def refresh_queue_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    """Why: freshness should follow changes, not a blind cron. Batching (depth) keeps a burst
    of writes to one run; the age limit bounds how long a lone change waits. One run drains
    everything queued, so there is never a run per version, and none while one is pending."""
    pending = pending_refresh_run(context.instance)
    if pending is not None:
        return dg.SkipReason(_pending_reason(pending))
    with postgres.connect() as conn:
        state = gateway.queue_state(conn)
    ready, age = int(state["ready"]), float(state["oldest_ready_age_seconds"])
    depth = int(state["depth"])
    min_depth, max_age = sensor_thresholds()
    if ready == 0:
        waiting = f" ({depth} in backoff or being refreshed)" if depth else ""
        return dg.SkipReason(f"queue depth 0 ready{waiting}, oldest age 0s: nothing to refresh")
    if ready < min_depth and age < max_age:
        return dg.SkipReason(
            f"queue depth {ready} ready < {min_depth} and oldest age {age:.0f}s < "
            f"{max_age:.0f}s: waiting to batch more changes"
        )
    why = f"depth {ready} >= {min_depth}" if ready >= min_depth else f"oldest age {age:.0f}s >= {max_age:.0f}s"
    cursor = json.loads(context.cursor) if context.cursor else {}
    requests = int(cursor.get("requests", 0)) + 1
    oldest = state["oldest_enqueued_at"]
    context.update_cursor(json.dumps({"requests": requests}))
    context.log.info(f"requesting a refresh: {why}")
    return dg.RunRequest(
        # Unique per request (a re-evaluated tick re-uses it, so no duplicate run).
        run_key=f"refresh-{requests}-{oldest.timestamp():.6f}",
        tags={"progress/trigger": why},
    )


@dg.schedule(
    cron_schedule="*/15 * * * *",
    job=refresh_queued_versions,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Drains the queue every 15 minutes whatever the sensor thresholds say.",
)
def refresh_queued_every_15_minutes(context: dg.ScheduleEvaluationContext):
    """Why: a safety net under the sensor. Changes below the sensor's thresholds, versions
    coming out of retry backoff, or a stopped sensor still get refreshed within 15 minutes."""
    pending = pending_refresh_run(context.instance)
    if pending is not None:
        return dg.SkipReason(_pending_reason(pending))
    return dg.RunRequest(tags={"progress/trigger": "schedule"})


@dg.schedule(
    cron_schedule="0 3 * * *",
    job=full_backfill,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Rebuilds every version nightly at 03:00 UTC, in batches.",
)
def full_backfill_nightly(context: dg.ScheduleEvaluationContext):
    """Why: a nightly reconciliation. Whatever change capture could have missed (triggers
    disabled during a bulk load, a restored backup) is corrected within a day, and the
    checks that follow compare every read model with its logical view."""
    return dg.RunRequest(tags={"progress/trigger": "nightly schedule"})


jobs = [refresh_queued_versions, full_backfill]
schedules = [refresh_queued_every_15_minutes, full_backfill_nightly]
sensors = [refresh_queue_sensor]
