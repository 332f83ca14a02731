"""The queue sensor and the schedules, evaluated against a real queue."""

from __future__ import annotations

import re

import dagster as dg
import psycopg
import pytest
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test

from orchestration.automation import (
    full_backfill_nightly,
    refresh_queue_sensor,
    refresh_queued_every_15_minutes,
    refresh_queued_versions,
)
from orchestration.definitions import defs
from orchestration.resources import PostgresResource


@pytest.fixture(autouse=True)
def default_thresholds(monkeypatch):
    for name in ("PROGRESS_SENSOR_MIN_DEPTH", "PROGRESS_SENSOR_MAX_AGE_SECONDS"):
        monkeypatch.delenv(name, raising=False)


def queue_versions(conn: psycopg.Connection, count: int) -> None:
    """Inserting a version queues it (change capture)."""
    conn.execute("INSERT INTO bible_versions (id, name) VALUES ('kjv', 'King James Version') ON CONFLICT DO NOTHING")
    conn.execute(
        "INSERT INTO audio_versions (id, bible_version_id, name)"
        " SELECT gen_random_uuid(), 'kjv', 'v' || n FROM generate_series(1, %s) AS n",
        [count],
    )


def add_run(
    instance: dg.DagsterInstance, job_name: str, status: dg.DagsterRunStatus, run_config: dict | None = None
) -> None:
    """A run record in the given status, as the daemon would leave it."""
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("progress_refresh"), "__repository__"), job_name
    )
    create_run_for_test(
        instance, job_name=job_name, status=status, remote_job_origin=origin, run_config=run_config or {}
    )


def evaluate(dsn: str, instance: dg.DagsterInstance | None = None, cursor: str | None = None):
    with dg.build_sensor_context(
        instance=instance or dg.DagsterInstance.ephemeral(),
        cursor=cursor,
        resources={"postgres": PostgresResource(database_url=dsn)},
    ) as context:
        return refresh_queue_sensor.evaluate_tick(context)


def test_empty_queue_skips_and_says_so(dsn):
    result = evaluate(dsn)
    assert not result.run_requests
    assert "queue depth 0" in result.skip_message


def test_a_lone_change_requests_a_run_at_the_next_tick_by_default(db, dsn):
    queue_versions(db, 1)
    result = evaluate(dsn)
    assert len(result.run_requests) == 1
    trigger = result.run_requests[0].tags["progress/trigger"]
    assert trigger.startswith("oldest age ") and trigger.endswith("s >= 0s"), trigger


def test_sensor_runs_keep_draining_and_their_config_is_valid_for_the_job(db, dsn):
    queue_versions(db, 1)
    request = evaluate(dsn).run_requests[0]
    assert request.run_config == {"ops": {"refresh_progress": {"config": {"keep_draining": True}}}}
    job = defs.resolve_job_def(refresh_queued_versions.name)
    resolved = dg.validate_run_config(job, request.run_config)
    # The job's own defaults still apply (in-process execution) beside the sensor's op config.
    assert "in_process" in resolved["execution"]["multi_or_in_process_executor"]
    assert resolved["ops"]["refresh_progress"]["config"]["keep_draining"] is True


def test_below_both_thresholds_skips_with_depth_and_age(db, dsn, monkeypatch):
    monkeypatch.setenv("PROGRESS_SENSOR_MIN_DEPTH", "25")
    monkeypatch.setenv("PROGRESS_SENSOR_MAX_AGE_SECONDS", "60")
    queue_versions(db, 3)
    result = evaluate(dsn)
    assert not result.run_requests
    assert "queue depth 3 ready < 25" in result.skip_message
    assert re.search(r"oldest age \d+s < 60s", result.skip_message), result.skip_message


def test_deep_queue_requests_exactly_one_run(db, dsn):
    queue_versions(db, 30)
    result = evaluate(dsn)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.tags["progress/trigger"] == "depth 30 >= 25"
    assert request.run_key
    assert result.cursor


def test_old_entry_requests_exactly_one_run(db, dsn, monkeypatch):
    monkeypatch.setenv("PROGRESS_SENSOR_MAX_AGE_SECONDS", "60")
    queue_versions(db, 1)
    db.execute("UPDATE progress_refresh_queue SET enqueued_at = now() - interval '2 minutes'")
    result = evaluate(dsn)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["progress/trigger"].startswith("oldest age 12")


def test_thresholds_come_from_the_environment(db, dsn, monkeypatch):
    queue_versions(db, 2)
    monkeypatch.setenv("PROGRESS_SENSOR_MAX_AGE_SECONDS", "60")
    monkeypatch.setenv("PROGRESS_SENSOR_MIN_DEPTH", "3")
    assert not evaluate(dsn).run_requests
    monkeypatch.setenv("PROGRESS_SENSOR_MIN_DEPTH", "2")
    assert len(evaluate(dsn).run_requests) == 1
    monkeypatch.setenv("PROGRESS_SENSOR_MIN_DEPTH", "3")
    monkeypatch.setenv("PROGRESS_SENSOR_MAX_AGE_SECONDS", "0")
    assert len(evaluate(dsn).run_requests) == 1


def test_run_key_is_stable_for_a_cursor_and_changes_after_a_request(db, dsn):
    queue_versions(db, 30)
    first = evaluate(dsn)
    again = evaluate(dsn)  # the same tick evaluated twice (e.g. after a daemon restart)
    assert first.run_requests[0].run_key == again.run_requests[0].run_key
    following = evaluate(dsn, cursor=first.cursor)
    assert following.run_requests[0].run_key != first.run_requests[0].run_key


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTED])
def test_no_request_while_a_refresh_run_is_pending(db, dsn, status):
    queue_versions(db, 30)
    instance = dg.DagsterInstance.ephemeral()
    add_run(instance, "refresh_queued_versions", status)
    result = evaluate(dsn, instance)
    assert not result.run_requests
    assert "refresh_queued_versions run" in result.skip_message
    assert f"already {status.value.lower()}" in result.skip_message


SENSOR_RUN_CONFIG = {"ops": {"refresh_progress": {"config": {"keep_draining": True}}}}


@pytest.mark.parametrize(
    "status, run_config, max_seconds, hands_over",
    [
        # A sensor run near its drain limit (less than the lead) is about to stop
        # claiming: the next one may start up.
        (dg.DagsterRunStatus.STARTED, SENSOR_RUN_CONFIG, "5", True),
        # Still within its limit: it keeps draining what arrives.
        (dg.DagsterRunStatus.STARTED, SENSOR_RUN_CONFIG, "120", False),
        # A run that does not keep draining (schedule, manual) drains what is queued, then ends.
        (dg.DagsterRunStatus.STARTED, {}, "0", False),
        # Not started yet: nothing is draining.
        (dg.DagsterRunStatus.QUEUED, SENSOR_RUN_CONFIG, "0", False),
    ],
)
def test_the_next_run_starts_up_while_a_sensor_run_winds_down(
    db, dsn, monkeypatch, status, run_config, max_seconds, hands_over
):
    queue_versions(db, 1)
    monkeypatch.setenv("PROGRESS_RUN_MAX_SECONDS", max_seconds)
    instance = dg.DagsterInstance.ephemeral()
    add_run(instance, "refresh_queued_versions", status, run_config)
    result = evaluate(dsn, instance)
    assert len(result.run_requests) == (1 if hands_over else 0), result.skip_message


def test_finished_runs_do_not_block_a_request(db, dsn):
    queue_versions(db, 30)
    instance = dg.DagsterInstance.ephemeral()
    add_run(instance, "refresh_queued_versions", dg.DagsterRunStatus.SUCCESS)
    assert len(evaluate(dsn, instance).run_requests) == 1


def test_refresh_schedule_requests_a_run():
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance=instance) as context:
        result = refresh_queued_every_15_minutes.evaluate_tick(context)
    assert len(result.run_requests) == 1
    assert result.run_requests[0].tags["progress/trigger"] == "schedule"


def test_refresh_schedule_skips_while_a_refresh_is_pending():
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance=instance) as context:
        add_run(instance, "full_backfill", dg.DagsterRunStatus.STARTED)
        result = refresh_queued_every_15_minutes.evaluate_tick(context)
    assert not result.run_requests
    assert "full_backfill run" in result.skip_message


def test_backfill_schedule_requests_a_run():
    with dg.instance_for_test() as instance, dg.build_schedule_context(instance=instance) as context:
        result = full_backfill_nightly.evaluate_tick(context)
    assert len(result.run_requests) == 1


@pytest.mark.parametrize(
    "context",
    [lambda: dg.build_schedule_context(), lambda: dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral())],
    ids=["no instance", "ephemeral instance"],
)
def test_refresh_schedule_evaluates_in_a_bare_context(context):
    """A context built without a persistent instance (as a quick test or a
    notebook builds one) knows of no pending run: the schedule requests one."""
    with context() as built:
        result = refresh_queued_every_15_minutes.evaluate_tick(built)
    assert [r.tags["progress/trigger"] for r in result.run_requests] == ["schedule"]
    assert len(refresh_queued_every_15_minutes(dg.build_schedule_context()).tags) == 1


def test_sensor_evaluates_in_a_context_without_an_instance(db, dsn):
    resources = {"postgres": PostgresResource(database_url=dsn)}
    with dg.build_sensor_context(resources=resources) as context:
        assert "queue depth 0" in refresh_queue_sensor.evaluate_tick(context).skip_message
    queue_versions(db, 1)
    with dg.build_sensor_context(resources=resources) as context:
        assert len(refresh_queue_sensor.evaluate_tick(context).run_requests) == 1


def stale_verdicts(result) -> dict[str, bool]:
    return {
        e.asset_key.to_user_string(): e.passed
        for e in result.asset_events
        if isinstance(e, dg.AssetCheckEvaluation) and e.check_name == "queue_not_stale"
    }


def test_the_sensor_reports_a_stale_queue_when_no_run_would_check_it(db, dsn):
    """An entry in retry backoff for two hours: no run starts, so no run's checks
    run either; the sensor itself reports queue_not_stale failing, once."""
    queue_versions(db, 1)
    db.execute(
        "UPDATE progress_refresh_queue SET enqueued_at = now() - interval '2 hours',"
        " not_before = now() + interval '1 hour'"
    )

    first = evaluate(dsn)

    assert not first.run_requests
    assert re.search(r"1 in backoff or being refreshed, oldest queued 72\d\ds ago", first.skip_message), (
        first.skip_message
    )
    assert stale_verdicts(first) == {
        "mv_audio_version_progress_summary": False,
        "mv_text_version_progress_summary": True,
    }
    failing = next(e for e in first.asset_events if not e.passed)
    assert "oldest queued audio change is 72" in failing.description

    again = evaluate(dsn, cursor=first.cursor)
    assert stale_verdicts(again) == {}  # unchanged: not reported again

    db.execute("DELETE FROM progress_refresh_queue")
    drained = evaluate(dsn, cursor=again.cursor)
    assert stale_verdicts(drained) == {"mv_audio_version_progress_summary": True}


def test_the_sensors_staleness_reports_reach_the_instance(db, dsn):
    """What the daemon does with them: recorded as the check's latest evaluation."""
    queue_versions(db, 1)
    db.execute(
        "UPDATE progress_refresh_queue SET enqueued_at = now() - interval '2 hours',"
        " not_before = now() + interval '1 hour'"
    )
    summary = dg.AssetKey("mv_audio_version_progress_summary")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(summary))
        materialized = instance.get_asset_records([summary])[0].asset_entry.last_materialization_record
        result = evaluate(dsn, instance)
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
        key = dg.AssetCheckKey(summary, "queue_not_stale")
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert latest.evaluation.passed is False
        # Aimed at the latest materialization: the UI shows it as that one's status.
        assert latest.evaluation.target_materialization_data.storage_id == materialized.storage_id


def test_behind_a_pending_run_the_sensor_reports_only_a_stale_queue(db, dsn):
    """A refresh run reports queue_not_stale at its end, aimed at the materialization
    it makes; a passing report from the sensor meanwhile would aim at the one
    before. A stale verdict is reported all the same: a run stuck in the run queue
    never ends, and a stuck queue must show."""
    queue_versions(db, 1)
    db.execute("UPDATE progress_refresh_queue SET enqueued_at = now() - interval '2 hours'")
    with dg.instance_for_test() as instance:
        add_run(instance, refresh_queued_versions.name, dg.DagsterRunStatus.QUEUED)
        during = evaluate(dsn, instance)
        assert "already queued" in during.skip_message
        assert stale_verdicts(during) == {"mv_audio_version_progress_summary": False}
    after = evaluate(dsn, cursor=during.cursor)  # no run pending any more
    assert stale_verdicts(after) == {"mv_text_version_progress_summary": True}


def test_a_bad_stale_setting_never_stops_the_sensor_requesting_runs(db, dsn, monkeypatch):
    queue_versions(db, 1)
    monkeypatch.setenv("PROGRESS_QUEUE_STALE_SECONDS", "15 min")
    result = evaluate(dsn)
    assert len(result.run_requests) == 1
    assert stale_verdicts(result) == {}


def test_behind_a_pending_run_an_unreachable_database_is_a_plain_skip():
    with dg.instance_for_test() as instance:
        add_run(instance, refresh_queued_versions.name, dg.DagsterRunStatus.STARTED)
        result = evaluate("postgresql://nobody@127.0.0.1:1/nowhere", instance)
    assert "already started" in result.skip_message
    assert stale_verdicts(result) == {}
