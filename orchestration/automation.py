"""When refreshes run: jobs, schedules and the queue sensor.

Freshness is driven by changes: triggers queue the versions a write can alter,
and `refresh_queue_sensor` starts one refresh run as soon as a change is ready
(by default; a minimum depth or age can make it wait to batch). A run starts in
about 5-7 s, so rather than one run per tick, a sensor run keeps draining while
changes keep arriving (bounded in time) and the sensor starts no other while
one is pending (but the next one while a run that reached its drain limit winds
down): a burst or a stream of writes is one run, and a change shows in the read
models seconds after its commit. The 15-minute schedule is the safety
net (a stopped sensor, retries coming out of backoff), the nightly backfill the
belt and braces. Every run carries the refresh concurrency tag, and every
refresh step claims a slot of the `progress_refresh` pool; dagster.yaml sizes
both from the number of refresh workers.
"""

import json
import time
from typing import Any

import dagster as dg
import psycopg

from orchestration import settings
from orchestration.assets import ALL_VERSIONS_TAG, REFRESH_STEP
from orchestration.checks import (
    MATCHES_LOGICAL_VIEW,
    QUEUE_NOT_STALE,
    REFRESHED_VERSIONS_MATCH,
    Staleness,
    check_keys,
    queue_staleness,
)
from orchestration.db import gateway
from orchestration.errors import ProgressError
from orchestration.read_models import KINDS, READ_MODELS
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

# About how long a requested run takes to claim its first version: a sensor tick
# (up to 5 s), the dequeue (1 s) and the run's start-up (5-7 s on a small machine).
HANDOVER_LEAD_SECONDS = 10.0

# The sensor reports the queue_not_stale verdict when it changes, and at least this often.
STALENESS_REPORT_SECONDS = 15 * 60

# The sensor's runs keep draining what arrives while they run (RefreshConfig.keep_draining).
KEEP_DRAINING: dict[str, Any] = {"ops": {REFRESH_STEP: {"config": {"keep_draining": True}}}}

# Runs still to start or still running: a new request would only wait behind them.
PENDING_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

read_model_selection = dg.AssetSelection.assets(*(model.name for model in READ_MODELS))


def read_models_with_checks(*names: str) -> dg.AssetSelection:
    """Every read model, and of their checks only the named ones."""
    keys = [key for name in names for key in check_keys(name)]
    return read_model_selection.without_checks() | dg.AssetSelection.checks(*keys)


EXECUTORS = ("default", "celery", "k8s")


def refresh_executor() -> dg.ExecutorDefinition:
    """The executor of both jobs, from $PROGRESS_DAGSTER_EXECUTOR (docs/scaling-out.md).

    default: steps in the run's own process (the refresh step's workers are threads,
    each with its own connection; extra processes only add start-up time), or in
    processes of their own with run config {"execution": {"config": {"multiprocess": {}}}}.
    celery: steps as tasks on Celery workers (pip install 'progress-refresh[celery]').
    k8s: each step in a Kubernetes job of its own (pip install 'progress-refresh[k8s]').
    """
    name = settings.value(settings.DAGSTER_EXECUTOR)
    if name == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if name != "default":
        raise ProgressError(
            f"unknown ${settings.DAGSTER_EXECUTOR.env} {name!r}: expected one of {', '.join(EXECUTORS)}"
        )
    return dg.multi_or_in_process_executor


REFRESH_EXECUTOR = refresh_executor()
# The default executor runs in process unless a run asks otherwise; the others
# take their own config (broker, namespace, image) from the run or the Launchpad.
IN_PROCESS: dict[str, Any] = (
    {"execution": {"config": {"in_process": {}}}} if REFRESH_EXECUTOR is dg.multi_or_in_process_executor else {}
)

refresh_queued_versions = dg.define_asset_job(
    name="refresh_queued_versions",
    # The refreshed versions compared, not every table: a run stays cheap.
    selection=read_models_with_checks(REFRESHED_VERSIONS_MATCH, QUEUE_NOT_STALE),
    description="Why: apps change recordings and texts continuously; this refreshes only the versions "
    "those changes queued (with parallel workers, oldest change first), then checks the refreshed versions "
    "against the logical views. Run config may name versions or ask for all instead.",
    tags=REFRESH_TAGS,
    op_retry_policy=REFRESH_RETRY_POLICY,
    executor_def=REFRESH_EXECUTOR,
    config=IN_PROCESS,
)

full_backfill = dg.define_asset_job(
    name="full_backfill",
    selection=read_models_with_checks(MATCHES_LOGICAL_VIEW, QUEUE_NOT_STALE),
    config=IN_PROCESS,
    description="Why: a safety net for anything change capture could miss (a trigger disabled during "
    "a bulk load, a restored backup). Queues every version and drains the queue in batches, logging "
    "n/total; a killed or failed run, when retried, continues with what is still queued.",
    tags={**REFRESH_TAGS, ALL_VERSIONS_TAG: "true"},
    op_retry_policy=REFRESH_RETRY_POLICY,
    executor_def=REFRESH_EXECUTOR,
)


def sensor_interval_seconds() -> int:
    return int(settings.value(settings.SENSOR_INTERVAL_SECONDS))


def sensor_thresholds() -> tuple[int, float]:
    """(minimum ready entries, maximum age in seconds of the oldest ready entry)."""
    return (
        int(settings.value(settings.SENSOR_MIN_DEPTH)),
        float(settings.value(settings.SENSOR_MAX_AGE_SECONDS)),
    )


def tick_instance(context: dg.ScheduleEvaluationContext | dg.SensorEvaluationContext) -> dg.DagsterInstance | None:
    """The instance a tick is evaluated in. A context built without one (a test's
    build_schedule_context()) has none: then it knows of no pending run."""
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:
        return None


def pending_refresh_run(instance: dg.DagsterInstance | None, handing_over: bool = False) -> dg.RunRecord | None:
    """A queued or running refresh (either job drains the queue), if any.

    handing_over: a run that keeps draining stops claiming once it has drained for
    $PROGRESS_RUN_MAX_SECONDS, then finishes (checks, events) and exits. From
    HANDOVER_LEAD_SECONDS before that it no longer counts, so the next run is up and
    claiming when it stops: changes never wait for one run to end and the next to start.
    The two overlap for a few seconds, claiming different versions."""
    if instance is None:
        return None
    limit = max(0.0, float(settings.value(settings.RUN_MAX_SECONDS)) - HANDOVER_LEAD_SECONDS)
    now = time.time()
    for job in (refresh_queued_versions.name, full_backfill.name):
        for record in instance.get_run_records(filters=dg.RunsFilter(job_name=job, statuses=PENDING_STATUSES)):
            winding_down = (
                handing_over
                and _keeps_draining(record.dagster_run)
                and record.dagster_run.status == dg.DagsterRunStatus.STARTED
                and now - record.create_timestamp.timestamp() >= limit
            )
            if not winding_down:
                return record
    return None


def _keeps_draining(run: dg.DagsterRun) -> bool:
    ops = run.run_config.get("ops")
    step = ops.get(REFRESH_STEP) if isinstance(ops, dict) else None
    return isinstance(step, dict) and bool(step.get("config", {}).get("keep_draining"))


def _pending_reason(record: dg.RunRecord) -> str:
    run = record.dagster_run
    return f"{run.job_name} run {run.run_id[:8]} is already {run.status.value.lower()}: it will drain the queue"


@dg.sensor(
    job=refresh_queued_versions,
    minimum_interval_seconds=sensor_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts one refresh_queued_versions run, which keeps draining while changes arrive, when "
    f"the queue has enough ready versions (${SENSOR_MIN_DEPTH_ENV}, default {DEFAULT_SENSOR_MIN_DEPTH}) or "
    f"its oldest ready entry is old enough (${SENSOR_MAX_AGE_ENV}, default "
    f"{DEFAULT_SENSOR_MAX_AGE_SECONDS:.0f}s), and none is pending. Reports the queue_not_stale checks "
    "whenever their verdict changes.",
)
def refresh_queue_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    """Why: freshness should follow changes, not a blind cron. A run costs seconds to start,
    so one run absorbs a burst or a stream of writes: it drains everything queued and keeps
    draining what arrives, and no other starts while one is pending. Depth and age
    thresholds can make the sensor wait to batch more; by default it does not wait."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    instance = tick_instance(context)
    pending = pending_refresh_run(instance, handing_over=True)
    if pending is not None:
        # Only a stale verdict is worth a report now: a pending run's own check
        # reports at its end, aimed at the materialization it makes (a passing
        # report now would aim at the one before and hide it), but a run stuck
        # in the queue never ends, and a stuck queue must still show.
        events: list[dg.AssetCheckEvaluation] = []
        try:
            with postgres.connect() as conn:
                events = _staleness_events(context, conn, cursor, instance, stale_only=True)
        except (ProgressError, psycopg.Error) as exc:  # the database away: the pending run will tell
            context.log.warning(f"queue_not_stale not reported: {exc}")
        return _sensor_result(cursor, events, skip=_pending_reason(pending))
    with postgres.connect() as conn:
        state = gateway.queue_state(conn)
        events = _staleness_events(context, conn, cursor, instance, stale_only=False)
    ready, age = int(state["ready"]), float(state["oldest_ready_age_seconds"])
    depth = int(state["depth"])
    min_depth, max_age = sensor_thresholds()
    if ready == 0:
        waiting = (
            f" ({depth} in backoff or being refreshed, oldest queued {float(state['oldest_age_seconds']):.0f}s ago)"
            if depth
            else ""
        )
        return _sensor_result(cursor, events, skip=f"queue depth 0 ready{waiting}: nothing to refresh")
    if ready < min_depth and age < max_age:
        return _sensor_result(
            cursor,
            events,
            skip=f"queue depth {ready} ready < {min_depth} and oldest age {age:.0f}s < "
            f"{max_age:.0f}s: waiting to batch more changes",
        )
    why = f"depth {ready} >= {min_depth}" if ready >= min_depth else f"oldest age {age:.0f}s >= {max_age:.0f}s"
    requests = int(cursor.get("requests", 0)) + 1
    oldest = state["oldest_enqueued_at"]
    cursor["requests"] = requests
    context.log.info(f"requesting a refresh: {why}")
    request = dg.RunRequest(
        # Unique per request (a re-evaluated tick re-uses it, so no duplicate run).
        run_key=f"refresh-{requests}-{oldest.timestamp():.6f}",
        run_config=KEEP_DRAINING,
        tags={"progress/trigger": why},
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor), asset_events=events)


def _staleness_events(
    context: dg.SensorEvaluationContext,
    conn: psycopg.Connection,
    cursor: dict[str, Any],
    instance: dg.DagsterInstance | None,
    stale_only: bool,
) -> list[dg.AssetCheckEvaluation]:
    """queue_not_stale, reported outside any run when its verdict changed (and
    recorded in the cursor): a run's checks follow its refresh and are skipped
    when it refreshed nothing, which is when the queue goes stale. A failure to
    tell (a bad setting) is logged and never stops the sensor's own work."""
    try:
        verdicts = [queue_staleness(conn, kind) for kind in KINDS]
    except ProgressError as exc:
        context.log.warning(f"queue_not_stale not reported: {exc}")
        return []
    reported = cursor.setdefault("stale", {})
    due = [v for v in verdicts if (not stale_only or not v.passed) and _worth_reporting(v, reported.get(v.kind))]
    for v in due:
        reported[v.kind] = {"passed": v.passed, "at": time.time()}
    return [v.evaluation(instance) for v in due]


def _worth_reporting(verdict: Staleness, last: dict[str, Any] | None) -> bool:
    """A verdict is reported when it changes, and again every STALENESS_REPORT_SECONDS
    (a check run by hand in between may have left another status showing)."""
    if last is None or last.get("passed") != verdict.passed:
        return True
    return time.time() - float(last.get("at", 0)) >= STALENESS_REPORT_SECONDS


def _sensor_result(cursor: dict[str, Any], events: list[dg.AssetCheckEvaluation], skip: str) -> dg.SensorResult:
    return dg.SensorResult(skip_reason=skip, cursor=json.dumps(cursor), asset_events=events)


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
    pending = pending_refresh_run(tick_instance(context))
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
