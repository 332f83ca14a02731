"""End to end: `dagster dev` (webserver + daemon) against the test database.

A change committed to a base table is queued by its trigger; the sensor, at its
shipped defaults, requests a run of refresh_queued_versions; the run refreshes
the version; the summary read model shows the change. The schedules are stopped
in the instance before Dagster starts (as an operator would with `dagster
schedule stop`), so only the sensor can start that run: a schedule tick at :15
can no longer drain the queue before the sensor looks. The test measures and
prints the time from the commit to the summary showing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

from bench.soak import free_port, graphql
from orchestration.dagster_dev import (
    dagster_command,
    ensure_database,
    render_instance_config,
    sqlalchemy_url,
    stop_child,
)
from orchestration.db.connection import connect
from orchestration.refresh import drain_queue
from orchestration.settings import PROJECT_ROOT
from orchestration.structure import chapter_id, load_bible_structure

E2E_MARKER = "e2e: starts `dagster dev` as a subprocess (about 30 s); deselect with -m 'not e2e'"
STARTUP_TIMEOUT_SECONDS = 90
CHANGE_TIMEOUT_SECONDS = 90


def _register_marker() -> None:
    """Register the marker so it does not warn (conftest.py is shared; pytest does not call
    hooks defined in test modules, so this reaches the running config instead)."""
    config = getattr(pytest.mark, "_config", None)
    if config is not None:
        config.addinivalue_line("markers", E2E_MARKER)


_register_marker()

REFRESH_RUNS_QUERY = """
query RefreshRuns {
  runsOrError(filter: {pipelineName: "refresh_queued_versions"}) {
    __typename
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
SCHEDULES = ("refresh_queued_every_15_minutes", "full_backfill_nightly")


def wait_for_webserver(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dagster dev exited early:\n{log.read_text()[-3000:]}"
        try:
            if graphql(port, "{ version }").get("data"):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev did not serve within {STARTUP_TIMEOUT_SECONDS}s:\n{log.read_text()[-3000:]}")


def refresh_runs(port: int) -> list[dict]:
    """Every run of refresh_queued_versions: status and tags."""
    try:
        runs = graphql(port, REFRESH_RUNS_QUERY)["data"]["runsOrError"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError, TypeError):
        return []
    return [
        {"status": run["status"], "tags": {tag["key"]: tag["value"] for tag in run["tags"]}}
        for run in runs.get("results", [])
    ]


def summary(conn: psycopg.Connection, version: uuid.UUID) -> tuple | None:
    return conn.execute(
        "SELECT covered_verses, total_verses, verse_fraction, chapters_with_audio, books_complete"
        "  FROM mv_audio_version_progress_summary WHERE audio_version_id = %s",
        [version],
    ).fetchone()


def stop_schedules(env: dict[str, str]) -> None:
    """Stops the schedules in the instance's storage before Dagster starts. One after
    the other: the first call creates Dagster's tables in the fresh storage, and two
    processes creating them at once collide."""
    command = dagster_command("127.0.0.1", 0)
    dagster = command[: command.index("dev")]
    for name in SCHEDULES:
        worker = subprocess.run(
            [*dagster, "schedule", "stop", name, "-w", str(PROJECT_ROOT / "workspace.yaml")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STARTUP_TIMEOUT_SECONDS,
        )
        assert worker.returncode == 0, f"could not stop {name}:\n{worker.stdout[-2000:]}"


def stop_everything(process: subprocess.Popen) -> None:
    """dagster dev stops its webserver, daemon and code server on SIGINT; whatever is
    left in its process group (run workers) is killed."""
    stop_child(process, timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.e2e
def test_sensor_run_refreshes_a_committed_change(db, dsn, server_dsn, tmp_path):
    load_bible_structure(db, "kjv", chapters_limit=3)
    language, version = uuid.uuid4(), uuid.uuid4()
    db.execute("INSERT INTO language_entities (id, name) VALUES (%s, 'E2E language')", [language])
    db.execute(
        "INSERT INTO audio_versions (id, language_entity_id, bible_version_id, name)"
        " VALUES (%s, %s, 'kjv', 'E2E audio')",
        [version, language],
    )
    drain_queue(db)

    before = summary(db, version)
    assert before is not None
    total = before[1]
    assert total > 31 and before == (0, total, 0, 0, 0)

    storage = f"dagster_e2e_{uuid.uuid4().hex[:8]}"
    ensure_database(server_dsn, storage)
    dagster_home = tmp_path / "dagster_home"
    render_instance_config(dagster_home)
    port = free_port()
    env = dict(
        os.environ,
        PROGRESS_DATABASE_URL=dsn,
        DAGSTER_HOME=str(dagster_home),
        DAGSTER_PG_URL=sqlalchemy_url(server_dsn, storage),
        # The shipped sensor defaults; only the run's quiet period is shorter, so the
        # run that keeps draining ends soon after the change.
        PROGRESS_RUN_IDLE_SECONDS="2",
    )
    for name in ("PROGRESS_SENSOR_INTERVAL_SECONDS", "PROGRESS_SENSOR_MIN_DEPTH", "PROGRESS_SENSOR_MAX_AGE_SECONDS"):
        env.pop(name, None)
    log = tmp_path / "dagster_dev.log"
    try:
        stop_schedules(env)
        with log.open("w") as output:
            process = subprocess.Popen(
                dagster_command("127.0.0.1", port),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            started = time.monotonic()
            wait_for_webserver(port, process, log)
            print(f"\ndagster dev served after {time.monotonic() - started:.1f}s")
            assert refresh_runs(port) == []  # nothing has run yet, so the next run is the change's

            db.execute(
                "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status,"
                " publish_status, chapter_id) VALUES (%s, 'audio', true, 'completed', 'published', %s)",
                [version, chapter_id("kjv", "Gen", 1)],
            )
            committed = time.monotonic()

            shown_after = succeeded_after = None
            with connect(dsn) as reader:
                while time.monotonic() - committed < CHANGE_TIMEOUT_SECONDS:
                    if shown_after is None and summary(reader, version) != before:
                        shown_after = time.monotonic() - committed
                    runs = refresh_runs(port)
                    if succeeded_after is None and any(run["status"] == "SUCCESS" for run in runs):
                        succeeded_after = time.monotonic() - committed
                    if shown_after is not None and succeeded_after is not None:
                        break
                    assert process.poll() is None, f"dagster dev exited:\n{log.read_text()[-3000:]}"
                    time.sleep(0.25)
                after = summary(reader, version)

            assert shown_after is not None, f"summary never showed the change:\n{log.read_text()[-4000:]}"
            assert succeeded_after is not None, f"no successful refresh run:\n{log.read_text()[-4000:]}"
            print(
                f"change committed -> summary shows it: {shown_after:.1f}s; "
                f"sensor-triggered run succeeded after {succeeded_after:.1f}s"
            )
            # What a dashboard reading the summary sees: Genesis 1's 31 verses, one chapter with audio.
            assert after is not None
            assert (after[0], after[1], after[3], after[4]) == (31, total, 1, 0)
            assert float(after[2]) == pytest.approx(31 / total)
            # One run for the change, started by the sensor (the schedules are stopped).
            (run,) = refresh_runs(port)
            assert run["tags"].get("dagster/sensor_name") == "refresh_queue_sensor", run
            assert run["tags"]["progress/trigger"].startswith("oldest age"), run
        finally:
            stop_everything(process)
    finally:
        with connect(server_dsn) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {storage} WITH (FORCE)")


def test_storage_url_for_the_embedded_socket_and_for_a_password():
    assert (
        sqlalchemy_url("postgresql://postgres:@/postgres?host=/srv/pgdata", "dagster")
        == "postgresql+psycopg2://postgres@/dagster?host=%2Fsrv%2Fpgdata"
    )
    assert (
        sqlalchemy_url("postgresql://app:p%40ss@db.example.com:6543/app?sslmode=require")
        == "postgresql+psycopg2://app:p%40ss@db.example.com:6543/app?sslmode=require"
    )


def test_simulated_changes_are_committed_and_queued(db):
    import random

    from orchestration.dagster_dev import simulate_change

    load_bible_structure(db, "kjv", chapters_limit=3)
    language = uuid.uuid4()
    db.execute("INSERT INTO language_entities (id, name) VALUES (%s, 'Sim language')", [language])
    audio = db.execute(
        "INSERT INTO audio_versions (language_entity_id, bible_version_id, name)"
        " VALUES (%s, 'kjv', 'Sim audio') RETURNING id",
        [language],
    ).fetchone()[0]
    text = db.execute(
        "INSERT INTO text_versions (language_entity_id, bible_version_id, name)"
        " VALUES (%s, 'kjv', 'Sim text') RETURNING id",
        [language],
    ).fetchone()[0]
    drain_queue(db)
    rng = random.Random(1)
    for _ in range(6):
        said = simulate_change(db, rng)
        # Each change queues exactly the version it names, as the apps' writes would.
        queued = set(db.execute("SELECT kind, version_id FROM progress_refresh_queue").fetchall())
        assert queued == ({("audio", audio)} if "'Sim audio'" in said else {("text", text)}), said
        drain_queue(db)
