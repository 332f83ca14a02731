"""The refresh assets and checks, run in process against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration.assets import base_table_specs, read_model_assets
from orchestration.automation import jobs, schedules, sensors
from orchestration.checks import MATCHES_LOGICAL_VIEW, REFRESHED_VERSIONS_MATCH, all_checks
from orchestration.db import gateway
from orchestration.read_models import READ_MODELS
from orchestration.resources import PostgresResource
from orchestration.structure import chapter_id, load_bible_structure, verse_id

METADATA_KEYS = {
    "source",
    "versions_refreshed",
    "versions",
    "lag_seconds_p50",
    "lag_seconds_p95",
    "lag_seconds_max",
    "oldest_queued_age_seconds",
    "rows_inserted",
    "rows_updated",
    "rows_deleted",
    "rows_written",
    "duration_seconds",
    "dagster/row_count",
    "table_size_bytes",
    "failed_versions",
    "failed_versions_count",
    "dead_letters",
    "outcome",
    "mode",
}


def defs_for(dsn: str) -> dg.Definitions:
    """The code location's pieces with the resource pointed at the test database."""
    return dg.Definitions(
        assets=[*base_table_specs, *read_model_assets],
        asset_checks=all_checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources={"postgres": PostgresResource(database_url=dsn)},
    )


def seed(conn: psycopg.Connection, audio_versions: int = 1) -> dict[str, list[uuid.UUID]]:
    """Genesis 1-3, one language, audio versions with nothing published and one text version."""
    load_bible_structure(conn, "kjv", chapters_limit=3)
    language = uuid.uuid4()
    conn.execute("INSERT INTO language_entities (id, name) VALUES (%s, 'Test language')", [language])
    audio = [uuid.uuid4() for _ in range(audio_versions)]
    text = [uuid.uuid4()]
    for i, version in enumerate(audio):
        conn.execute(
            "INSERT INTO audio_versions (id, language_entity_id, bible_version_id, name) VALUES (%s, %s, 'kjv', %s)",
            [version, language, f"audio {i}"],
        )
    conn.execute(
        "INSERT INTO text_versions (id, language_entity_id, bible_version_id, name) VALUES (%s, %s, 'kjv', 'text')",
        [text[0], language],
    )
    return {"audio": audio, "text": text}


def publish_chapter(conn: psycopg.Connection, audio_version: uuid.UUID, chapter: int = 1) -> None:
    conn.execute(
        "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status, publish_status,"
        " chapter_id) VALUES (%s, 'audio', true, 'completed', 'published', %s)",
        [audio_version, chapter_id("kjv", "Gen", chapter)],
    )


def add_verse_texts(conn: psycopg.Connection, text_version: uuid.UUID, verses: range) -> None:
    conn.execute(
        "INSERT INTO verse_texts (text_version_id, verse_id, verse_text)"
        " SELECT %s, v, 'In the beginning' FROM unnest(%s::text[]) AS v",
        [text_version, [verse_id("kjv", "Gen", 1, n) for n in verses]],
    )


def assert_read_models_equal_views(conn: psycopg.Connection) -> None:
    for model in READ_MODELS:
        assert gateway.mismatches(conn, model.name, model.logical_view) == 0, model.name


def materializations(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e
        for e in (
            event.asset_check_evaluation_data
            for event in result.all_events
            if event.event_type_value == "ASSET_CHECK_EVALUATION"
        )
    }


def run_job(dsn: str, name: str, run_config: dict | None = None, **kwargs) -> dg.ExecuteInProcessResult:
    instance = kwargs.pop("instance", None) or dg.DagsterInstance.ephemeral()
    result = (
        defs_for(dsn).resolve_job_def(name).execute_in_process(run_config=run_config or {}, instance=instance, **kwargs)
    )
    _instances[result.run_id] = instance
    return result


_instances: dict[str, dg.DagsterInstance] = {}


def step_failure(result: dg.ExecuteInProcessResult) -> str:
    """The message of the run's (first) failed step."""
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.step_failure_data.error.message


def run_logs(result: dg.ExecuteInProcessResult) -> list[str]:
    """What context.log wrote during the run (user messages, not only Dagster events)."""
    return [entry.user_message for entry in _instances[result.run_id].all_logs(result.run_id)]


def test_refresh_job_makes_read_models_equal_their_logical_views(db, dsn):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    add_verse_texts(db, versions["text"][0], range(1, 11))

    result = run_job(dsn, "refresh_queued_versions")

    assert result.success
    assert_read_models_equal_views(db)
    assert gateway.queue_state(db)["depth"] == 0
    summary = db.execute("SELECT covered_verses FROM mv_audio_version_progress_summary").fetchone()
    assert summary == (31,)
    metadata = materializations(result)
    assert set(metadata) == {model.name for model in READ_MODELS}
    for name, values in metadata.items():
        assert set(values) >= METADATA_KEYS, name
    verse = metadata["mv_audio_verse_coverage"]
    assert verse["versions_refreshed"].value == 1
    assert verse["versions"].value == [
        {"version": "audio 0", "language": "Test language", "id": str(versions["audio"][0])}
    ]
    assert verse["source"].value == f"dagster:{result.run_id}"
    assert verse["rows_inserted"].value == 31
    assert verse["dagster/row_count"].value == 31
    assert verse["table_size_bytes"].value > 0
    assert metadata["mv_text_verse_coverage"]["rows_inserted"].value == 10
    checks = check_results(result)
    assert len(checks) == 12 and all(c.passed for c in checks.values()), checks
    # After a refresh, a check compares the versions that refresh wrote; the
    # whole-table check is not run (it computes every logical view).
    assert not any(key.endswith(f":{MATCHES_LOGICAL_VIEW}") for key in checks), checks
    audio_check = checks[f"mv_audio_verse_coverage:{REFRESHED_VERSIONS_MATCH}"]
    assert audio_check.metadata["scope"].value == "1 of 1 refreshed version(s) sampled"
    assert [v["version"] for v in audio_check.metadata["versions_sampled"].value] == ["audio 0"]


def test_refresh_job_works_with_each_storage_strategy(strategy_db, strategy_dsn):
    versions = seed(strategy_db)
    publish_chapter(strategy_db, versions["audio"][0], 1)
    add_verse_texts(strategy_db, versions["text"][0], range(1, 4))

    result = run_job(strategy_dsn, "refresh_queued_versions")

    assert result.success
    assert_read_models_equal_views(strategy_db)
    metadata = materializations(result)
    assert metadata["mv_audio_version_progress_summary"]["versions_refreshed"].value == 1
    assert metadata["mv_audio_version_progress_summary"]["dagster/row_count"].value == 1
    assert all(c.passed for c in check_results(result).values())


def test_run_with_nothing_queued_succeeds_says_so_and_materialises_nothing(dsn):
    result = run_job(dsn, "refresh_queued_versions")
    assert result.success
    assert materializations(result) == {}
    logs = run_logs(result)
    assert any("nothing queued for audio" in m for m in logs), logs
    assert any("no text read model materialises" in m for m in logs), logs
    # Nothing was refreshed, so there is nothing for the equality checks to compare.
    assert check_results(result) == {}


def test_run_config_naming_versions_refreshes_only_those(db, dsn):
    versions = seed(db, audio_versions=2)
    first, second = versions["audio"]
    publish_chapter(db, first, 1)
    publish_chapter(db, second, 2)
    op_config = {"config": {"versions": [f"audio:{first}"]}}

    result = run_job(
        dsn,
        "refresh_queued_versions",
        {"ops": {"refresh_progress": op_config}},
    )

    assert result.success
    refreshed = [row[0] for row in db.execute("SELECT audio_version_id FROM mv_audio_version_progress_summary")]
    assert refreshed == [first]
    queued = {row[0] for row in db.execute("SELECT version_id FROM progress_refresh_queue WHERE kind = 'audio'")}
    assert queued == {second}
    metadata = materializations(result)
    assert metadata["mv_audio_verse_coverage"]["mode"].value == "named"
    assert not any(name.startswith(("mv_text", "language_entity_best_text")) for name in metadata)


def test_unknown_named_version_fails_the_run_with_one_clear_line(dsn):
    op_config = {"config": {"versions": [f"audio:{uuid.uuid4()}"]}}
    result = run_job(dsn, "refresh_queued_versions", {"ops": {"refresh_progress": op_config}}, raise_on_error=False)
    assert not result.success
    assert "unknown audio version" in step_failure(result)


def test_full_backfill_rebuilds_every_version_and_logs_progress(db, dsn):
    versions = seed(db, audio_versions=3)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    assert run_job(dsn, "refresh_queued_versions").success
    # Drift nobody queued: only a full backfill repairs it.
    db.execute("DELETE FROM mv_audio_verse_coverage WHERE audio_version_id = %s", [versions["audio"][0]])

    result = run_job(dsn, "full_backfill")

    assert result.success
    assert_read_models_equal_views(db)
    verse = materializations(result)["mv_audio_verse_coverage"]
    assert verse["mode"].value == "all"
    assert verse["versions_refreshed"].value == 3
    logs = run_logs(result)
    assert any("audio: 3/3 versions refreshed" in m for m in logs), logs
    checks = check_results(result)
    assert all(c.passed for c in checks.values())
    scope = checks[f"mv_audio_verse_coverage:{MATCHES_LOGICAL_VIEW}"].metadata["scope"].value
    assert scope == "whole table (every settled scope)"


def test_failed_version_is_reported_and_the_rest_refreshed(db, dsn, monkeypatch):
    versions = seed(db, audio_versions=2)
    stuck, fine = versions["audio"]
    publish_chapter(db, stuck, 1)
    publish_chapter(db, fine, 1)
    monkeypatch.setenv("PROGRESS_LOCK_TIMEOUT", "200ms")
    with psycopg.connect(dsn, autocommit=True) as holder:
        # Hold the per-version lock a refresh of `stuck` needs (class 1 = audio).
        holder.execute("SELECT pg_advisory_lock(1, hashtext(%s))", [str(stuck)])
        result = run_job(dsn, "refresh_queued_versions")

    assert result.success
    verse = materializations(result)["mv_audio_verse_coverage"]
    assert verse["versions_refreshed"].value == 1
    assert verse["failed_versions_count"].value == 1
    failed = verse["failed_versions"].value[0]
    assert (failed["version"], failed["id"]) == ("audio 0", str(stuck))
    assert "lock" in failed["error"]
    assert any(f"audio:{stuck} failed" in m for m in run_logs(result))
    refreshed = [row[0] for row in db.execute("SELECT audio_version_id FROM mv_audio_version_progress_summary")]
    assert refreshed == [fine]


def test_run_fails_when_every_version_failed(db, dsn, monkeypatch):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    monkeypatch.setenv("PROGRESS_LOCK_TIMEOUT", "200ms")
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(1, hashtext(%s))", [str(versions["audio"][0])])
        result = run_job(dsn, "refresh_queued_versions", raise_on_error=False)
    assert not result.success
    assert "every audio version of this run failed" in step_failure(result)


def test_corrupted_read_model_fails_its_check_visibly(db, dsn):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    assert run_job(dsn, "refresh_queued_versions").success
    db.execute("UPDATE mv_audio_chapter_coverage SET covered_verses = covered_verses - 1")

    result = dg.materialize(
        [*base_table_specs, *read_model_assets, *all_checks],
        selection=dg.AssetSelection.all_asset_checks(),
        resources={"postgres": PostgresResource(database_url=dsn)},
    )

    checks = check_results(result)
    broken = checks[f"mv_audio_chapter_coverage:{MATCHES_LOGICAL_VIEW}"]
    assert not broken.passed
    assert broken.severity == dg.AssetCheckSeverity.ERROR
    assert broken.metadata["mismatching_rows"].value == 1  # one chapter row, changed
    assert all(c.passed for key, c in checks.items() if key != f"mv_audio_chapter_coverage:{MATCHES_LOGICAL_VIEW}")


def test_mismatching_rows_counts_each_wrong_row_once(db):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    publish_chapter(db, versions["audio"][0], 2)
    db.execute("SELECT drain_progress_refresh_queue()")
    assert gateway.mismatches(db, "mv_audio_chapter_coverage", "audio_chapter_coverage") == 0

    version = versions["audio"][0]
    keys = {"v": version, **{f"c{n}": chapter_id("kjv", "Gen", n) for n in (1, 2, 3)}}
    # One row changed, one missing, one extra.
    db.execute(
        "UPDATE mv_audio_chapter_coverage SET covered_verses = covered_verses - 1"
        " WHERE audio_version_id = %(v)s AND chapter_id = %(c1)s",
        keys,
    )
    db.execute("DELETE FROM mv_audio_chapter_coverage WHERE audio_version_id = %(v)s AND chapter_id = %(c2)s", keys)
    db.execute("INSERT INTO mv_audio_chapter_coverage VALUES (%(v)s, %(c3)s, 1, 10, true, false)", keys)
    assert gateway.mismatches(db, "mv_audio_chapter_coverage", "audio_chapter_coverage") == 3
    assert (
        gateway.mismatches(db, "mv_audio_chapter_coverage", "audio_chapter_coverage", "audio_version_id", [version])
        == 3
    )


def run_check_alone(dsn: str, key: dg.AssetCheckKey, instance: dg.DagsterInstance) -> dg.AssetCheckEvaluation:
    """One check run on its own (as from the UI), in the given instance."""
    result = dg.materialize(
        [*base_table_specs, *read_model_assets, *all_checks],
        selection=dg.AssetSelection.checks(key),
        resources={"postgres": PostgresResource(database_url=dsn)},
        instance=instance,
        raise_on_error=False,
    )
    return check_results(result)[key.to_user_string()]


def test_a_run_of_one_read_model_says_which_levels_it_refreshed_unrecorded(db, dsn):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [*base_table_specs, *read_model_assets],
        selection=["mv_audio_verse_coverage"],
        resources={"postgres": PostgresResource(database_url=dsn)},
        instance=instance,
    )

    assert set(materializations(result)) == {"mv_audio_verse_coverage"}
    warnings = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any(
        "not selected, so not recorded as materialized: mv_audio_chapter_coverage, mv_audio_book_coverage" in m
        for m in warnings
    ), warnings
    for model in READ_MODELS:
        if model.kind == "audio":  # (the text version stays queued: its kind was not selected)
            assert gateway.mismatches(db, model.name, model.logical_view) == 0, model.name


def test_a_refresh_of_other_versions_never_reports_a_corrupted_table_as_matching(db, dsn):
    """The whole-table check keeps its failure until a whole-table comparison
    passes: a refresh run compares (and reports) only what it refreshed."""
    versions = seed(db, audio_versions=2)
    broken_version, other = versions["audio"]
    publish_chapter(db, broken_version, 1)
    instance = dg.DagsterInstance.ephemeral()
    assert run_job(dsn, "refresh_queued_versions", instance=instance).success
    db.execute("DELETE FROM mv_audio_verse_coverage WHERE audio_version_id = %s", [broken_version])
    whole = dg.AssetCheckKey(dg.AssetKey("mv_audio_verse_coverage"), MATCHES_LOGICAL_VIEW)
    assert not run_check_alone(dsn, whole, instance).passed

    publish_chapter(db, other, 2)
    result = run_job(dsn, "refresh_queued_versions", instance=instance)

    assert result.success
    refreshed = check_results(result)[f"mv_audio_verse_coverage:{REFRESHED_VERSIONS_MATCH}"]
    assert refreshed.passed
    assert refreshed.metadata["scope"].value == "1 of 1 refreshed version(s) sampled"
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([whole])[whole]
    assert latest.evaluation.passed is False


def test_the_refreshed_versions_check_on_its_own_compares_the_latest_refresh(db, dsn):
    versions = seed(db)
    key = dg.AssetCheckKey(dg.AssetKey("mv_audio_verse_coverage"), REFRESHED_VERSIONS_MATCH)
    instance = dg.DagsterInstance.ephemeral()

    nothing_yet = run_check_alone(dsn, key, instance)
    assert nothing_yet.passed
    assert nothing_yet.metadata["scope"].value == "no refresh recorded yet: nothing compared"
    publish_chapter(db, versions["audio"][0], 1)
    assert run_job(dsn, "refresh_queued_versions", instance=instance).success
    db.execute("DELETE FROM mv_audio_verse_coverage WHERE audio_version_id = %s", [versions["audio"][0]])
    caught = run_check_alone(dsn, key, instance)
    assert not caught.passed
    assert caught.metadata["scope"].value == "1 of 1 refreshed version(s) sampled"


def test_queued_versions_are_left_out_of_the_equality_check(db, dsn):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    assert run_job(dsn, "refresh_queued_versions").success
    publish_chapter(db, versions["audio"][0], 2)  # queued, not yet refreshed: expected to lag

    result = dg.materialize(
        [*base_table_specs, *read_model_assets, *all_checks],
        selection=dg.AssetSelection.all_asset_checks(),
        resources={"postgres": PostgresResource(database_url=dsn)},
    )

    checks = check_results(result)
    assert all(c.passed for c in checks.values()), checks
    verse = checks[f"mv_audio_verse_coverage:{MATCHES_LOGICAL_VIEW}"]
    assert verse.metadata["scopes_left_out_as_queued"].value == 1


@pytest.mark.parametrize("age_seconds, passed", [(10, True), (4000, False)])
def test_stale_queue_fails_the_staleness_check(db, dsn, age_seconds, passed):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    db.execute("UPDATE progress_refresh_queue SET enqueued_at = now() - make_interval(secs => %s)", [age_seconds])

    result = dg.materialize(
        [*base_table_specs, *read_model_assets, *all_checks],
        selection=dg.AssetSelection.checks(
            dg.AssetCheckKey(dg.AssetKey("mv_audio_version_progress_summary"), "queue_not_stale")
        ),
        resources={"postgres": PostgresResource(database_url=dsn)},
    )

    check = check_results(result)["mv_audio_version_progress_summary:queue_not_stale"]
    assert check.passed is passed
    assert check.metadata["queue_depth"].value == 1
    assert check.metadata["oldest_age_seconds"].value >= age_seconds
    if not passed:
        assert check.severity == dg.AssetCheckSeverity.ERROR


def full_backfill_job() -> dg.JobDefinition:
    """The full_backfill job, reconstructable (for a re-execution) and pointed at the test database."""
    import os

    return defs_for(os.environ["PROGRESS_DATABASE_URL"]).resolve_job_def("full_backfill")


def test_retried_backfill_resumes_instead_of_requeueing(db, dsn, monkeypatch):
    versions = seed(db, audio_versions=2)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    monkeypatch.setenv("PROGRESS_DATABASE_URL", dsn)
    monkeypatch.setenv("PROGRESS_LOCK_TIMEOUT", "200ms")
    with dg.instance_for_test() as instance:
        with psycopg.connect(dsn, autocommit=True) as holder:
            for version in versions["audio"]:  # every audio version fails: the audio step fails
                holder.execute("SELECT pg_advisory_lock(1, hashtext(%s))", [str(version)])
            with dg.execute_job(dg.reconstructable(full_backfill_job), instance) as first:
                assert not first.success
        # The failed versions wait out their backoff; make them ready, as time would.
        db.execute("UPDATE progress_refresh_queue SET not_before = NULL")
        options = dg.ReexecutionOptions.from_failure(first.run_id, instance)
        with dg.execute_job(dg.reconstructable(full_backfill_job), instance, reexecution_options=options) as retry:
            assert retry.success
            logs = [entry.user_message for entry in instance.all_logs(retry.run_id)]
    assert any("audio: resuming a backfill, 2 version(s) still queued" in m for m in logs), logs
    assert not any("queued all" in m for m in logs)
    assert_read_models_equal_views(db)


def test_full_backfill_rebuilds_everything_whatever_op_config_it_is_given(db, dsn):
    """Any op config replaces the job's default config: a backfill run given only
    a worker count must still rebuild every version, not drain the queue."""
    versions = seed(db, audio_versions=2)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    assert run_job(dsn, "refresh_queued_versions").success
    db.execute("DELETE FROM mv_audio_verse_coverage WHERE audio_version_id = %s", [versions["audio"][0]])

    result = run_job(dsn, "full_backfill", {"ops": {"refresh_progress": {"config": {"workers": 1}}}})

    assert result.success
    assert materializations(result)["mv_audio_verse_coverage"]["mode"].value == "all"
    assert_read_models_equal_views(db)


def test_a_run_asked_for_named_and_all_versions_at_once_fails_saying_so(db, dsn):
    versions = seed(db)
    config = {"ops": {"refresh_progress": {"config": {"versions": [f"audio:{versions['audio'][0]}"]}}}}

    result = run_job(dsn, "full_backfill", config, raise_on_error=False)

    assert not result.success
    assert "named versions or all versions, not both" in step_failure(result)


def test_max_versions_below_one_fails_the_run_naming_it(db, dsn):
    versions = seed(db)
    publish_chapter(db, versions["audio"][0], 1)
    config = {"ops": {"refresh_progress": {"config": {"max_versions": 0}}}}

    result = run_job(dsn, "refresh_queued_versions", config, raise_on_error=False)

    assert not result.success
    assert "max_versions" in step_failure(result)
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 2


def test_a_backfill_step_retried_in_the_same_run_resumes_instead_of_requeueing(db, dsn, monkeypatch):
    """The step's retry policy retries it in the same run after, say, a lost
    connection: what the first attempt refreshed has left the queue and stays done."""
    versions = seed(db, audio_versions=3)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    monkeypatch.setenv("PROGRESS_REFRESH_WORKERS", "1")
    monkeypatch.setenv("PROGRESS_BATCH_SIZE", "1")
    real = gateway.refresh_claimed
    calls = []

    def lost_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(gateway, "refresh_claimed", lost_on_the_third)

    result = run_job(dsn, "full_backfill")

    assert result.success
    logs = run_logs(result)
    for kind in ("audio", "text"):
        assert sum(f"{kind}: queued all" in m for m in logs) == 1, logs
        assert any(f"{kind}: resuming a backfill" in m for m in logs), logs
    # Four text and audio versions in all, one attempt lost: at most one refreshed twice.
    assert len(calls) <= 4 + 1 + 1, len(calls)
    assert_read_models_equal_views(db)


def test_a_backfill_step_lost_before_it_queued_queues_everything_on_its_retry(db, dsn, monkeypatch):
    """An attempt that failed before it queued the versions (a lost connection)
    left nothing to resume: the retry queues every version, and repairs drift."""
    versions = seed(db, audio_versions=2)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    assert run_job(dsn, "refresh_queued_versions").success
    db.execute("DELETE FROM mv_audio_verse_coverage WHERE audio_version_id = %s", [versions["audio"][0]])
    real = gateway.enqueue_all_versions
    calls = []

    def lost_the_first_time(conn, kind):
        calls.append(kind)
        if len(calls) == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(conn, kind)

    monkeypatch.setattr(gateway, "enqueue_all_versions", lost_the_first_time)

    result = run_job(dsn, "full_backfill")

    assert result.success
    logs = run_logs(result)
    assert not any("resuming a backfill" in m for m in logs), logs
    assert sum("audio: queued all 2 version(s)" in m for m in logs) == 1, logs
    assert_read_models_equal_views(db)


MULTIPROCESS_RUN_CONFIG = Path(__file__).parents[1] / "docs" / "examples" / "multiprocess_run_config.yaml"


def test_multiprocess_executor_configuration_refreshes_both_chains(db, dsn, tmp_path):
    """The documented run config, launched as an operator would, from the command line."""
    versions = seed(db, audio_versions=2)
    for version in versions["audio"]:
        publish_chapter(db, version, 1)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "PROGRESS_DATABASE_URL": dsn, "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [
            str(dagster),
            "job",
            "execute",
            "-m",
            "orchestration.definitions",
            "-a",
            "defs",
            "-j",
            "refresh_queued_versions",
            "-c",
            str(MULTIPROCESS_RUN_CONFIG),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Executing steps using multiprocess executor" in output
    assert "RUN_SUCCESS" in output
    assert_read_models_equal_views(db)
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 0


def test_materializations_record_the_lag_of_what_they_refreshed(db, dsn):
    versions = seed(db, audio_versions=3)
    for version, seconds in zip(versions["audio"], (10, 20, 30), strict=True):
        publish_chapter(db, version, 1)
        db.execute(
            "UPDATE progress_refresh_queue SET enqueued_at = now() - make_interval(secs => %s) WHERE version_id = %s",
            [seconds, version],
        )

    result = run_job(dsn, "refresh_queued_versions")

    for name in ("mv_audio_verse_coverage", "language_entity_best_audio_version"):
        metadata = materializations(result)[name]
        p50, p95, worst = (metadata[f"lag_seconds_{p}"].value for p in ("p50", "p95", "max"))
        # Ages of 10, 20 and 30 s at the start, plus the time until each refresh committed.
        assert 20 <= p50 < 40, name
        assert (p95 - p50, worst - p50) == (pytest.approx(9, abs=1), pytest.approx(10, abs=1)), name
        assert metadata["oldest_queued_age_seconds"].value == 0
    # `status` reads the same log.
    assert gateway.refresh_lag(db, "audio", f"dagster:{result.run_id}").max == pytest.approx(worst, abs=0.001)


def test_the_summary_shows_refreshed_versions_by_name_before_and_after(db, dsn):
    versions = seed(db, audio_versions=2)
    first, second = versions["audio"]
    publish_chapter(db, first, 1)
    assert run_job(dsn, "refresh_queued_versions").success
    publish_chapter(db, first, 2)
    publish_chapter(db, second, 3)

    result = run_job(dsn, "refresh_queued_versions")

    preview = materializations(result)["mv_audio_version_progress_summary"]["preview"].value
    assert preview.startswith("2 of 2 refreshed version(s):")
    rows = {line.split(" | ")[0].strip("| "): line for line in preview.splitlines() if line.startswith("| audio")}
    assert set(rows) == {"audio 0", "audio 1"}
    # audio 0 had chapter 1 (31 of Genesis 1-3's 80 verses) and now has chapters 1 and 2.
    assert "| Test language | 38.8% → 70.0% | 33.3% → 66.7% | 0.0% → 0.0% |" in rows["audio 0"]
    assert "| 0.0% → 30.0% | 0.0% → 33.3% |" in rows["audio 1"]  # chapter 3: 24 verses
    assert "preview" not in materializations(result)["mv_audio_verse_coverage"]


def test_a_chain_with_nothing_queued_materialises_nothing_and_its_checks_still_work(db, dsn):
    versions = seed(db)
    assert run_job(dsn, "refresh_queued_versions").success
    add_verse_texts(db, versions["text"][0], range(1, 4))

    result = run_job(dsn, "refresh_queued_versions")

    assert result.success
    assert set(materializations(result)) == {model.name for model in READ_MODELS if model.kind == "text"}
    assert any("no audio read model materialises" in m for m in run_logs(result))
    checks = check_results(result)
    assert checks and all(key.startswith(("mv_text", "language_entity_best_text")) for key in checks), checks
    assert all(c.passed for c in checks.values())

    # Run on their own, the audio checks compare every settled scope and still catch a wrong row.
    db.execute(
        "INSERT INTO mv_audio_verse_coverage VALUES (%s, %s)", [versions["audio"][0], verse_id("kjv", "Gen", 1, 1)]
    )
    standalone = dg.materialize(
        [*base_table_specs, *read_model_assets, *all_checks],
        selection=dg.AssetSelection.checks_for_assets(*(m.name for m in READ_MODELS if m.kind == "audio")),
        resources={"postgres": PostgresResource(database_url=dsn)},
        raise_on_error=False,
    )
    audio_checks = check_results(standalone)
    broken = audio_checks[f"mv_audio_verse_coverage:{MATCHES_LOGICAL_VIEW}"]
    assert not broken.passed
    assert broken.metadata["scope"].value == "whole table (every settled scope)"
