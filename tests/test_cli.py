"""The command line as a user meets it: every error is one clear line on
stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from orchestration.db.connection import connect


def run_cli(*args: str, dsn: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "PROGRESS_DATABASE_URL"}
    if dsn is not None:
        environment["PROGRESS_DATABASE_URL"] = dsn
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args], capture_output=True, text=True, env=environment, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_malformed_database_url_is_one_line() -> None:
    result = run_cli("status", dsn="this is not a url")
    assert_one_line_error(result, "invalid database URL")


def test_unreachable_server_is_one_line_without_password() -> None:
    result = run_cli("status", dsn="postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere")
    assert_one_line_error(result, "cannot reach PostgreSQL", "127.0.0.1")
    assert "s3cret-pw" not in result.stderr


def test_unmigrated_database_says_to_migrate(empty_dsn: str) -> None:
    assert_one_line_error(run_cli("status", dsn=empty_dsn), "progress-refresh migrate")


def test_migrate_names_missing_base_table(empty_dsn: str) -> None:
    with connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE language_entities (id uuid PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE bible_versions (id text PRIMARY KEY, name text)")
    result = run_cli("migrate", dsn=empty_dsn)
    assert_one_line_error(result, "missing", "verses", "media_files")


def test_migrate_names_missing_column(empty_dsn: str) -> None:
    from orchestration.db.migrations import load_migrations

    with connect(empty_dsn) as conn:
        conn.execute(load_migrations()[0].sql)
        conn.execute("ALTER TABLE verses DROP COLUMN global_order")
    result = run_cli("migrate", dsn=empty_dsn)
    assert_one_line_error(result, "verses.global_order")


def test_migrate_installs_on_existing_base_tables_and_keeps_their_rows(empty_dsn: str) -> None:
    from orchestration.db.migrations import load_migrations

    with connect(empty_dsn) as conn:
        conn.execute(load_migrations()[0].sql)
        conn.execute("ALTER TABLE media_files ADD COLUMN duration_seconds int")
        conn.execute("INSERT INTO bible_versions VALUES ('b', 'Existing bible')")
    assert run_cli("migrate", dsn=empty_dsn).returncode == 0
    with connect(empty_dsn) as conn:
        assert conn.execute("SELECT name FROM bible_versions").fetchall() == [("Existing bible",)]
        assert conn.execute("SELECT to_regclass('mv_audio_version_progress_summary')").fetchone()[0]


def test_newer_schema_is_refused(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("INSERT INTO progress_schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')")
    assert_one_line_error(run_cli("status", dsn=dsn), "newer release")
    assert_one_line_error(run_cli("migrate", dsn=dsn), "newer release")


def test_unknown_version_is_refused(dsn: str) -> None:
    missing = uuid.uuid4()
    assert_one_line_error(
        run_cli("refresh", "--version", f"audio:{missing}", dsn=dsn), "unknown audio version", str(missing)
    )
    assert_one_line_error(run_cli("enqueue", f"text:{missing}", dsn=dsn), "unknown text version")


@pytest.mark.parametrize("bad", ["video:" + str(uuid.uuid4()), "audio:not-a-uuid", "audio"])
def test_malformed_version_argument_is_refused(dsn: str, bad: str) -> None:
    assert_one_line_error(run_cli("refresh", "--version", bad, dsn=dsn), "invalid version")


def test_unknown_strategy_is_refused(dsn: str) -> None:
    assert_one_line_error(run_cli("migrate", "--strategy", "bogus", dsn=dsn), "bogus")


def test_status_json_reports_queue_and_read_models(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("INSERT INTO language_entities (id, name) VALUES (gen_random_uuid(), 'L')")
        conn.execute("INSERT INTO text_versions (language_entity_id, name) SELECT id, 'T' FROM language_entities")
    result = run_cli("status", "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["queue"]["depth"] == 1
    assert status["queue"]["oldest_age_seconds"] >= 0
    assert status["dead_letters"] == []
    assert set(status["read_models"]) >= {"mv_audio_verse_coverage", "language_entity_best_text_version"}


def test_refresh_queued_then_status_shows_rows(dsn: str) -> None:
    with connect(dsn) as conn:
        conn.execute("INSERT INTO bible_versions VALUES ('b', 'B')")
        conn.execute("INSERT INTO books VALUES ('b-1', 'b', 1, 'One')")
        conn.execute("INSERT INTO chapters VALUES ('b-1-1', 'b-1', 1, 1)")
        conn.execute("INSERT INTO verses VALUES ('b-1-1-1', 'b-1-1', 1, 1)")
        conn.execute("INSERT INTO language_entities (id, name) VALUES (gen_random_uuid(), 'L')")
        conn.execute(
            "INSERT INTO text_versions (language_entity_id, bible_version_id, name)"
            " SELECT id, 'b', 'T' FROM language_entities"
        )
        conn.execute(
            "INSERT INTO verse_texts (text_version_id, verse_id, verse_text)"
            " SELECT id, 'b-1-1-1', 'text' FROM text_versions"
        )
    result = run_cli("refresh", "--json", dsn=dsn)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["refreshed"] == 1
    assert report["rows"]["mv_text_verse_coverage"]["inserted"] == 1
    status = json.loads(run_cli("status", "--json", dsn=dsn).stdout)
    assert status["queue"]["depth"] == 0
    assert status["read_models"]["mv_text_version_progress_summary"]["rows"] == 1
    # The lag figures Dagster records per materialization, from the same refresh log.
    text_lag, audio_lag = status["lag_last_hour"]["text"], status["lag_last_hour"]["audio"]
    assert text_lag["refreshes"] == 1 and 0 <= text_lag["p50"] == text_lag["p95"] == text_lag["max"]
    assert audio_lag["refreshes"] == 0 and audio_lag["p95"] is None
    with connect(dsn) as conn:
        assert conn.execute("SELECT source FROM progress_refresh_log").fetchall() == [("cli",)]
    shown = run_cli("status", dsn=dsn).stdout
    assert "text lag over the last hour (1 refreshes): p50" in shown
    assert "audio lag: no refreshes in the last hour" in shown
