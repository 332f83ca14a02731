"""The command line as a user meets it: every error is one clear line on
stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid

import pytest

import builders as b
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


def test_no_command_shows_the_help() -> None:
    result = run_cli()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: progress-refresh")
    assert "refresh" in result.stdout and "status" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_malformed_database_url_is_one_line() -> None:
    result = run_cli("status", dsn="this is not a url")
    assert_one_line_error(result, "invalid database URL")


def test_unreachable_server_is_one_line_without_password() -> None:
    result = run_cli("status", dsn="postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere")
    assert_one_line_error(result, "cannot reach PostgreSQL", "127.0.0.1")
    assert "s3cret-pw" not in result.stderr


def test_migrate_names_a_base_column_of_another_type_and_installs_nothing(empty_dsn: str) -> None:
    from pathlib import Path

    base_tables = Path(__file__).parents[1] / "sql" / "migrations" / "001_base_tables.sql"
    with connect(empty_dsn) as conn:
        conn.execute(base_tables.read_text())
        conn.execute("ALTER TABLE chapters ALTER COLUMN total_verses TYPE text")
        conn.execute("ALTER TABLE verses ALTER COLUMN global_order TYPE text")
    for args in (("migrate",), ("migrate", "--dry-run")):
        result = run_cli(*args, dsn=empty_dsn)
        assert_one_line_error(
            result, "chapters.total_verses is text, not an integer", "verses.global_order is text, not an integer"
        )
    with connect(empty_dsn) as conn:
        installed = conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'progress%'").fetchone()
    assert installed == (0,)


@pytest.fixture
def listening_socket():
    """A local port that answers like a web server, or never (not accepted)."""
    import socket
    import threading

    def serve(listener: socket.socket, answer: bytes | None) -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return
            with peer:
                peer.recv(1024)
                peer.sendall(answer)

    listeners = []

    def open_one(answer: bytes | None) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listeners.append(listener)
        if answer is not None:
            threading.Thread(target=serve, args=(listener, answer), daemon=True).start()
        return listener.getsockname()[1]

    yield open_one
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
def test_a_server_that_is_not_postgresql_is_named_as_such(listening_socket, sslmode: str) -> None:
    port = listening_socket(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    result = run_cli("status", dsn=f"postgresql://someone:s3cret-pw@127.0.0.1:{port}/db?sslmode={sslmode}")
    assert_one_line_error(result, "cannot reach PostgreSQL", "is not PostgreSQL (is the port right?)")
    assert "s3cret-pw" not in result.stderr


def test_the_urls_connect_timeout_is_the_one_waited_for_and_said(listening_socket) -> None:
    port = listening_socket(None)
    result = run_cli("status", dsn=f"postgresql://someone@127.0.0.1:{port}/db?connect_timeout=2")
    assert_one_line_error(result, "cannot reach PostgreSQL", "no answer within 2s")


def test_ctrl_c_while_the_command_loads_is_one_line(dsn: str) -> None:
    # Python reports each import as it completes (-X importtime): once an
    # import after the entry point's module is in, the signal lands in the
    # command line's own imports (a quarter of a second), whatever the load.
    command = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "orchestration", "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROGRESS_DATABASE_URL": dsn},
        # A shell's background job ignores SIGINT, and so would the command:
        # Python installs its handler only where the signal is not ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert command.stderr is not None
    for line in command.stderr:
        if line.rstrip().endswith("orchestration.launcher"):
            break
    command.stderr.readline()
    command.send_signal(signal.SIGINT)
    rest = command.stderr.read()
    command.wait(timeout=60)
    said = [line for line in rest.splitlines() if not line.startswith("import time:")]
    assert said == ["interrupted"], rest
    # 130 from the command, or the shell's 128 + SIGINT when Python ends by the signal.
    assert command.returncode in (130, -signal.SIGINT), rest


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


def test_a_base_column_or_table_dropped_after_migrate_is_named_before_any_refresh(db, dsn: str) -> None:
    bible = b.bible(db, "kjv", {"GEN": [3]})
    b.media_file(db, b.audio_version(db, "kjv"), chapter=bible.chapter("GEN", 1))
    # CASCADE takes the product's views that read the column with it.
    db.execute("ALTER TABLE media_files DROP COLUMN publish_status CASCADE")
    for command in (["status"], ["refresh"], ["refresh", "--all"]):
        assert_one_line_error(run_cli(*command, dsn=dsn), "media_files.publish_status")
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0
    db.execute("DROP TABLE verse_texts CASCADE")
    assert_one_line_error(run_cli("status", dsn=dsn), "missing: verse_texts")


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


def text_versions_with_a_verse(db, count: int) -> list[uuid.UUID]:
    """Versions named "Text 1", "Text 2", … that each cover one verse, queued by their triggers."""
    bible = b.bible(db, f"b{uuid.uuid4().hex[:6]}", {"GEN": [1]})
    language = b.language(db)
    ids = [b.text_version(db, bible.id, language, name=f"Text {n}") for n in range(1, count + 1)]
    for version in ids:
        b.verse_texts(db, version, [bible.verse("GEN", 1, 1)])
    return ids


@pytest.mark.parametrize(
    "args, named",
    [
        (["--all", "--version", "audio:" + str(uuid.uuid4())], "--all and --version"),
        (["--queued", "--all"], "--queued and --all"),
        (["--queued", "--version", "text:" + str(uuid.uuid4())], "--queued and --version"),
        (["--rebuild", "safe", "--all"], "--all and --rebuild"),
    ],
)
def test_contradictory_refresh_options_are_refused(dsn: str, args: list[str], named: str) -> None:
    result = run_cli("refresh", *args, dsn=dsn)
    assert result.returncode == 2
    assert_one_line_error(result, f"{named} cannot be combined")


def test_refresh_version_names_what_it_refreshed_and_says_when_deleted(db, dsn: str) -> None:
    live, deleted = text_versions_with_a_verse(db, 2)
    db.execute("UPDATE text_versions SET deleted_at = now() WHERE id = %s", [deleted])
    result = run_cli("refresh", "--version", f"text:{live}", "--version", f"text:{deleted}", dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert f"refreshed text:{live} (Text 1)\n" in result.stdout
    assert f"refreshed text:{deleted} (Text 2): deleted, its rows were removed" in result.stdout
    as_json = json.loads(run_cli("refresh", "--json", "--version", f"text:{live}", dsn=dsn).stdout)
    assert as_json["versions"] == [{"kind": "text", "version_id": str(live), "name": "Text 1", "deleted": False}]


def test_an_id_of_the_other_kind_gets_a_hint(db, dsn: str) -> None:
    (text_id,) = text_versions_with_a_verse(db, 1)
    result = run_cli("refresh", "--version", f"audio:{text_id}", dsn=dsn)
    assert_one_line_error(result, f"unknown audio version {text_id}", f"it is a text version (text:{text_id})")
    result = run_cli("enqueue", f"audio:{text_id}", dsn=dsn)
    assert_one_line_error(result, "it is a text version")


def test_status_names_the_database_masked_and_shows_lag(db, dsn: str) -> None:
    from orchestration.db.dsn import mask_dsn

    text_versions_with_a_verse(db, 1)
    db.execute("UPDATE progress_refresh_queue SET enqueued_at = now() - interval '100 seconds'")
    status = json.loads(run_cli("status", "--json", dsn=dsn).stdout)
    assert status["database"] == mask_dsn(dsn)
    assert 100 <= status["lag_seconds"] < 120
    shown = run_cli("status", dsn=dsn, env={"COLUMNS": "200"}).stdout
    assert f"database      {mask_dsn(dsn)}" in shown
    assert re.search(r"^lag +1[01][0-9]s \(oldest queued change\)", shown, re.MULTILINE), shown


def test_status_shows_why_a_retrying_version_failed_and_when_it_is_tried_again(db, dsn: str) -> None:
    text_versions_with_a_verse(db, 1)
    version = db.execute("SELECT version_id FROM progress_refresh_queue").fetchone()[0]
    db.execute(
        "UPDATE progress_refresh_queue SET attempts = 2, last_error = 'canceling statement due to lock timeout',"
        " not_before = now() + interval '40 seconds'"
    )

    status = json.loads(run_cli("status", "--json", dsn=dsn).stdout)
    shown = run_cli("status", dsn=dsn, env={"COLUMNS": "120"}).stdout

    [entry] = status["retrying"]
    assert (entry["kind"], entry["version_id"], entry["attempts"]) == ("text", str(version), 2)
    assert entry["last_error"] == "canceling statement due to lock timeout"
    assert entry["next_try_at"] is not None
    assert "retrying" in shown and f"text:{version}" in shown, shown
    assert "canceling statement due to lock timeout" in shown, shown


def test_status_json_reports_populated_after_drains_without_a_rebuild(db, dsn: str) -> None:
    text_versions_with_a_verse(db, 2)
    assert json.loads(run_cli("status", "--json", dsn=dsn).stdout)["populated_at"] is None
    assert run_cli("refresh", dsn=dsn).returncode == 0
    populated = json.loads(run_cli("status", "--json", dsn=dsn).stdout)["populated_at"]
    assert populated is not None


def test_status_fits_80_columns(db, dsn: str, monkeypatch) -> None:
    import io

    from rich.console import Console

    from orchestration import cli

    retrying, claimed = text_versions_with_a_verse(db, 2)
    db.execute(
        "INSERT INTO progress_refresh_dead_letter (kind, version_id, attempts, last_error, first_queued_at)"
        " VALUES ('audio', gen_random_uuid(), 3, repeat('a long error message ', 12), now())"
    )
    db.execute(
        "UPDATE progress_refresh_queue SET attempts = 1, last_error = repeat('a long lock timeout ', 10),"
        " not_before = now() + interval '30 seconds' WHERE version_id = %s",
        [retrying],
    )
    # Claimed before the server started: its holder is gone.
    db.execute(
        "UPDATE progress_refresh_queue SET claimed_by = 'python:a-rather-long-host-name:123456:784c2a76',"
        " claimed_at = '2000-01-01', lease_until = now() + interval '1 hour', holder_pid = 99999"
        " WHERE version_id = %s",
        [claimed],
    )
    for text in (
        run_cli("status", dsn=dsn, env={"COLUMNS": "80"}).stdout,
        _rendered_at_80_columns(db, dsn, monkeypatch, cli, Console, io),
    ):
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, text
        flowing = " ".join(line.strip() for line in lines)  # wrapped between words, never inside one
        assert "last error: a long lock timeout a long lock timeout" in flowing, text
        assert "a long error message a long error message" in flowing, text
        assert "by python:a-rather-long-host-name:123456:784c2a76 (session pid 99999, gone)" in flowing, text
        for name in ("language_entity_best_audio_version", "mv_audio_version_progress_summary"):
            assert any(name in line for line in lines), text  # never cut


def _rendered_at_80_columns(db, dsn, monkeypatch, cli, console_type, io) -> str:
    output = io.StringIO()
    monkeypatch.setattr(cli, "console", console_type(width=80, file=output))
    cli._render_status(cli._status(db, dsn))
    return output.getvalue()


def test_an_unusable_state_folder_is_one_line(tmp_path) -> None:
    """Without PROGRESS_DATABASE_URL the embedded server keeps its data in the
    state folder: one that cannot be made is named, in one line."""
    blocker = tmp_path / "a file"
    blocker.write_text("")
    result = run_cli("status", env={"PROGRESS_STATE_DIR": str(blocker / "state")})
    assert_one_line_error(result, str(blocker / "state"), "PROGRESS_STATE_DIR")


def test_seed_demo_says_what_it_loaded_in_words(dsn: str) -> None:
    result = run_cli("seed-demo", "--audio", "1", "--text", "1", dsn=dsn)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("demo data:")]
    assert re.fullmatch(
        r"demo data: [\d,]+ languages, 1 audio and 1 text versions, [\d,]+ media files, "
        r"[\d,]+ verse mappings, [\d,]+ verse texts",
        line,
    ), line
    assert "note:" not in result.stdout
    again = run_cli("seed-demo", "--audio", "3", "--text", "1", dsn=dsn)
    assert again.returncode == 0, again.stderr
    assert "1 audio and 1 text versions" in again.stdout
    assert "note: the demo was loaded before and is kept as it is" in again.stdout
    assert "note:" not in run_cli("seed-demo", "--audio", "1", "--text", "1", dsn=dsn).stdout


def test_a_package_upgraded_without_migrate_says_to_migrate(dsn: str) -> None:
    """A release may change functions and views without a migration: commands
    refuse a database whose definitions are another release's, and migrate mends it."""
    with connect(dsn) as conn:
        conn.execute("UPDATE progress_refresh_settings SET value = 'an older one' WHERE key = 'definitions_digest'")
    assert_one_line_error(
        run_cli("status", dsn=dsn), "SQL functions and views are another release's", "progress-refresh migrate"
    )
    assert run_cli("migrate", dsn=dsn).returncode == 0
    assert run_cli("status", dsn=dsn).returncode == 0


def test_config_fits_80_columns_with_every_setting_named_whole(dsn: str) -> None:
    """A setting's name is what a user copies (into a variable's name, a
    settings row): at 80 columns it stays on one line; values fold."""
    from orchestration import settings

    result = run_cli("config", dsn=dsn, env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for name in (s.name for s in settings.SETTINGS):
        assert any(line.startswith(f"│ {name} ") for line in lines), name
