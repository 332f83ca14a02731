"""Refresh guarantees (SPEC 8.2 and the per-version design of SPEC 3):
(a) a change committed while a refresh runs is refreshed by the next drain;
(b) a refresh that changes nothing writes no rows;
(c) a whole-Bible version refreshes per version, writing only what changed
    (timings are printed, never asserted: speed is the benchmarks' business)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

import builders as b
from orchestration.db import gateway
from orchestration.db.connection import connect
from orchestration.db.migrations import migrate
from orchestration.read_models import READ_MODELS

MV_TABLES = [m.name for m in READ_MODELS]


def queue_row(db: psycopg.Connection, kind: str, version: uuid.UUID):
    return db.execute(
        "SELECT generation, claimed_by, lease_until FROM progress_refresh_queue WHERE kind = %s AND version_id = %s",
        [kind, version],
    ).fetchone()


def small_world(db: psycopg.Connection) -> tuple[b.Bible, uuid.UUID, uuid.UUID]:
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    le = b.language(db)
    v = b.audio_version(db, "A", le)
    b.media_file(db, v, chapter=A.chapter("GEN", 1))
    b.drain(db)
    b.assert_read_models_match(db)
    return A, le, v


# (a) nothing lost ---------------------------------------------------------------


def test_change_committed_after_claim_stays_queued(db, dsn):
    A, _, v = small_world(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    [claim] = gateway.claim_batch(db, "test-worker", 10, 300)
    assert (claim.kind, claim.version_id) == ("audio", v)

    with connect(dsn) as writer:
        b.media_file(writer, v, chapter=A.chapter("EXO", 1))
    assert queue_row(db, "audio", v)[0] == claim.generation + 1

    outcome = gateway.refresh_claimed(db, claim, "test-worker")
    assert outcome.ok, outcome.error
    generation, claimed_by, lease_until = queue_row(db, "audio", v)
    assert generation == claim.generation + 1
    assert (claimed_by, lease_until) == (None, None)  # released, ready for the next drain

    assert b.drain(db) == [("audio", v)]
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)
    assert b.summary(db, "audio", v)["covered_verses"] == 7


GATE_KEY = 424242

GATE_TRIGGER = """
CREATE FUNCTION test_refresh_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('progress_test.gate', true) = 'on' THEN
        PERFORM set_config('progress_test.gate', 'off', false);
        PERFORM pg_advisory_lock(%(key)s);
        PERFORM pg_advisory_unlock(%(key)s);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER test_refresh_gate AFTER INSERT ON mv_audio_verse_coverage
    FOR EACH STATEMENT EXECUTE FUNCTION test_refresh_gate();
"""


class Gate:
    """Stops a refresh right after it has written the verse level of its version,
    until the test opens the gate: a session with progress_test.gate = on waits,
    once, for an advisory lock the test holds."""

    def __init__(self, db: psycopg.Connection) -> None:
        self.db = db
        db.execute(GATE_TRIGGER % {"key": GATE_KEY})

    def arm(self, session: psycopg.Connection) -> None:
        session.execute("SELECT set_config('progress_test.gate', 'on', false)")

    def close(self) -> None:
        self.db.execute("SELECT pg_advisory_lock(%s)", [GATE_KEY])

    def open(self) -> None:
        self.db.execute("SELECT pg_advisory_unlock(%s)", [GATE_KEY])

    def wait_until_held(self, session: psycopg.Connection) -> None:
        wait_for(self.db, session.info.backend_pid, lambda event: event == ("Lock", "advisory"))


def wait_for(db: psycopg.Connection, pid: int, condition: Callable[[tuple], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        if row and condition(tuple(row)):
            return True
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} never reached the expected wait")


def run_in_thread(target: Callable[[], object]) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = target()
        except BaseException as exc:  # reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict):
    thread.join(30)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    return result["value"]


def test_change_committed_mid_refresh_python_path(db, dsn):
    A, _, v = small_world(db)
    gate = Gate(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))

    with connect(dsn) as refresher, connect(dsn) as writer:
        [claim] = gateway.claim_batch(refresher, "test-worker", 10, 300)
        gate.arm(refresher)
        gate.close()
        thread, result = run_in_thread(lambda: gateway.refresh_claimed(refresher, claim, "test-worker"))
        gate.wait_until_held(refresher)
        # the refresh has computed and written the verse level: commit a change now
        b.media_file(writer, v, chapter=A.chapter("EXO", 1))
        assert thread.is_alive()  # the change committed while the refresh was running
        gate.open()
        outcome = finish(thread, result)
        assert outcome.ok, outcome.error

    # the refresh finished without the change, and left the version queued
    assert "A-EXO-1-1" not in b.verse_ids(db, "audio", v)
    assert gateway.mismatches_by_read_model(db)["mv_audio_verse_coverage"] > 0
    generation, claimed_by, lease_until = queue_row(db, "audio", v)
    assert generation == claim.generation + 1
    assert (claimed_by, lease_until) == (None, None)

    assert b.drain(db) == [("audio", v)]
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)
    assert b.verse_ids(db, "audio", v) >= {"A-EXO-1-1", "A-EXO-1-2"}


def start_held_sql_drain(gate: Gate, refresher: psycopg.Connection) -> tuple[threading.Thread, dict]:
    """One call of the SQL drain in a thread, held by the gate inside its refresh."""
    gate.arm(refresher)
    gate.close()
    thread, result = run_in_thread(lambda: refresher.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall())
    gate.wait_until_held(refresher)
    return thread, result


def test_change_committed_mid_refresh_sql_drain(db, dsn):
    A, _, v = small_world(db)
    other = b.audio_version(db, "A")
    b.drain(db)
    gate = Gate(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))

    with connect(dsn) as refresher, connect(dsn) as writer, connect(dsn) as writer2:
        # one call of the SQL drain: one batch, one transaction
        thread, result = start_held_sql_drain(gate, refresher)
        # a change to a version that is not being refreshed commits during the drain
        b.media_file(writer2, other, chapter=A.chapter("GEN", 1))
        assert thread.is_alive()
        # a change to the version being drained: whether it commits during the
        # drain or waits for it, the next drain must pick it up
        wthread, wresult = run_in_thread(lambda: b.media_file(writer, v, chapter=A.chapter("EXO", 1)))
        try:
            writer_waited = wait_for(db, writer.info.backend_pid, lambda event: event[0] == "Lock", timeout=1)
        except AssertionError:
            writer_waited = False
        gate.open()
        assert finish(thread, result) == [("audio", v)]
        finish(wthread, wresult)
    print(
        f"\nduring one SQL drain call, a writer to the version being drained"
        f" {'waited for the drain to commit' if writer_waited else 'did not wait'}"
    )

    assert b.queued(db) == {("audio", v), ("audio", other)}
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)
    assert b.summary(db, "audio", v)["covered_verses"] == 7
    assert b.summary(db, "audio", other)["covered_verses"] == 3


def test_a_worker_skips_what_a_running_sql_drain_holds_and_finds_nothing_left_behind(db, dsn):
    """The SQL drain locks its batch for its one transaction instead of leasing
    it: a worker claiming meanwhile skips the version (never waits, never
    refreshes it twice), and once the drain commits the version is gone from
    the queue, with no claim left behind."""
    A, _, v = small_world(db)
    other = b.audio_version(db, "A")
    b.media_file(db, other, chapter=A.chapter("GEN", 1))
    b.drain(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    gate = Gate(db)
    with connect(dsn) as refresher, connect(dsn) as worker:
        thread, result = start_held_sql_drain(gate, refresher)
        b.media_file(worker, other, chapter=A.chapter("GEN", 2))
        # the worker gets the other version only, at once, and refreshes it
        [claim] = gateway.claim_batch(worker, "test-worker", 10, 300)
        assert (claim.kind, claim.version_id) == ("audio", other)
        assert gateway.refresh_claimed(worker, claim, "test-worker").error is None
        assert thread.is_alive()
        gate.open()
        assert finish(thread, result) == [("audio", v)]
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 0
    assert [r[0] for r in db.execute("SELECT version_id FROM progress_refresh_log ORDER BY id DESC LIMIT 2")] == [
        v,
        other,
    ]
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)
    assert b.summary(db, "audio", v)["covered_verses"] == 5


def test_a_writer_never_waits_for_a_running_sql_drain(strategy_dsn):
    """An app queuing a change to a version a SQL drain is refreshing goes on at
    once (a writer waiting behind a lock fails here within a second), however long
    the drain takes: under the matview strategy a drain refreshes everything,
    tens of seconds on a real database. Its change stays queued for the next drain."""
    with connect(strategy_dsn) as db:
        db.execute("SELECT refresh_progress_materialized_views_full()")
        A, _, v = small_world(db)
        b.media_file(db, v, chapter=A.chapter("GEN", 2))

        with connect(strategy_dsn) as refresher, connect(strategy_dsn) as writer, connect(strategy_dsn) as holder:
            holder.execute("BEGIN")
            # A SHARE lock until rollback: the drain's refresh waits at the book level.
            holder.execute("CREATE INDEX test_hold ON mv_audio_book_coverage (book_id)")
            try:
                thread, result = run_in_thread(
                    lambda: refresher.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall()
                )
                wait_for(db, refresher.info.backend_pid, lambda event: event[0] == "Lock")
                writer.execute("SET lock_timeout = '1s'")
                b.media_file(writer, v, chapter=A.chapter("EXO", 1))
                b.media_file(writer, v, chapter=A.chapter("GEN", 2))
                assert thread.is_alive()  # both committed while the drain was held
            finally:
                holder.execute("ROLLBACK")
            assert finish(thread, result) == [("audio", v)]

        assert b.queued(db) == {("audio", v)}
        assert b.drain(db) == [("audio", v)]
        b.assert_read_models_match(db)
        b.assert_queue_empty(db)
        assert b.verse_ids(db, "audio", v) >= {A.verse("EXO", 1, 1), A.verse("EXO", 1, 2)}


def test_a_writer_holding_a_language_never_deadlocks_with_a_sql_drain(db, dsn):
    """A writer's transaction changes one version (which locks its language for
    the best version) and then writes another version of that language, which a
    SQL drain is refreshing and which waits for the language: the writer goes on
    (the drain holds no queue row), and the drain finishes after its commit."""
    A = b.bible(db, "A", {"GEN": [3, 3]})
    le = b.language(db)
    v1, v2 = b.audio_version(db, "A", le), b.audio_version(db, "A", le)
    b.drain(db)
    b.media_file(db, v2, chapter=A.chapter("GEN", 1))
    with connect(dsn) as writer, connect(dsn) as refresher:
        writer.execute("BEGIN")
        writer.execute("UPDATE audio_versions SET created_at = now() WHERE id = %s", [v1])
        thread, result = run_in_thread(
            lambda: refresher.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall()
        )
        wait_for(db, refresher.info.backend_pid, lambda event: event == ("Lock", "advisory"))
        writer.execute("SET LOCAL lock_timeout = '2s'")
        b.media_file(writer, v2, chapter=A.chapter("GEN", 2))
        writer.execute("COMMIT")
        assert finish(thread, result) == [("audio", v2)]
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)


def test_two_sql_drains_at_once_take_different_versions(db, dsn):
    """A drain never waits for another's batch, nor comes back empty while
    versions it could refresh are queued: it takes the next ones."""
    A, _, v = small_world(db)
    others = [b.audio_version(db, "A") for _ in range(2)]
    b.drain(db)
    db.execute("UPDATE progress_refresh_settings SET value = '1' WHERE key = 'drain_batch_size'")
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    for other in others:
        b.media_file(db, other, chapter=A.chapter("EXO", 1))
    gate = Gate(db)
    with connect(dsn) as first, connect(dsn) as second:
        thread, result = start_held_sql_drain(gate, first)
        second.execute("SET lock_timeout = '1s'")
        assert second.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall() == [("audio", others[0])]
        assert second.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall() == [("audio", others[1])]
        # what is left is the first drain's: nothing to wait for, nothing taken twice
        assert second.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall() == []
        assert thread.is_alive()
        gate.open()
        assert finish(thread, result) == [("audio", v)]
    assert [r[0] for r in db.execute("SELECT version_id FROM progress_refresh_log ORDER BY id DESC LIMIT 3")] == [
        v,
        others[1],
        others[0],
    ]
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)


def test_chapter_change_landing_mid_refresh_of_another_chapter(strategy_dsn):
    """A change to one chapter commits while a drain refreshes another chapter of
    the same version (held at the book level by a lock the test holds): the
    next drain makes every read model equal to its logical view."""
    with connect(strategy_dsn) as db:
        db.execute("SELECT refresh_progress_materialized_views_full()")
        A, _, v = small_world(db)
        table = gateway.storage_strategy(db) == "table"
        b.media_file(db, v, chapter=A.chapter("GEN", 2))
        assert b.chapter_scopes(db) == {("audio", v): [A.chapter("GEN", 2)]}

        with connect(strategy_dsn) as refresher, connect(strategy_dsn) as writer, connect(strategy_dsn) as holder:
            holder.execute("BEGIN")
            # A SHARE lock until rollback (LOCK TABLE refuses materialized views).
            holder.execute("CREATE INDEX test_hold ON mv_audio_book_coverage (book_id)")
            try:
                if table:  # the Python path: claimed in a transaction of its own
                    [claim] = gateway.claim_batch(refresher, "test-worker", 10, 300)
                    thread, result = run_in_thread(lambda: gateway.refresh_claimed(refresher, claim, "test-worker"))
                else:  # the SQL drain: claim and refresh in one transaction
                    thread, result = run_in_thread(
                        lambda: refresher.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall()
                    )
                wait_for(db, refresher.info.backend_pid, lambda event: event[0] == "Lock")
                wthread, wresult = run_in_thread(lambda: b.media_file(writer, v, chapter=A.chapter("EXO", 1)))
                if table:
                    finish(wthread, wresult)  # committed while the refresh of GEN 2 waits
                    assert thread.is_alive()
                    assert b.chapter_scopes(db) == {("audio", v): sorted([A.chapter("GEN", 2), A.chapter("EXO", 1)])}
            finally:
                holder.execute("ROLLBACK")
            outcome = finish(thread, result)
            finish(wthread, wresult)
            if table:
                assert outcome.ok, outcome.error

        assert ("audio", v) in b.queued(db)
        b.drain(db)
        b.assert_read_models_match(db)
        b.assert_queue_empty(db)
        assert b.summary(db, "audio", v)["covered_verses"] == 7


def test_queue_scopes_merge_and_the_whole_version_absorbs_them(db):
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2, 3]})
    v = b.audio_version(db, "A", b.language(db))
    b.media_file(db, v, chapter=A.chapter("GEN", 1))
    b.drain(db)
    b.media_file(db, v, chapter=A.chapter("EXO", 1))
    b.media_file(db, v, start=A.verse("GEN", 1, 2), end=A.verse("GEN", 2, 1))
    assert b.chapter_scopes(db) == {
        ("audio", v): sorted([A.chapter("EXO", 1), A.chapter("GEN", 1), A.chapter("GEN", 2)])
    }
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)
    assert b.summary(db, "audio", v)["covered_verses"] == 6

    # a chapter-scoped drain writes only those chapters' rows
    b.media_file(db, v, chapter=A.chapter("GEN", 2), publish_status="pending")
    assert b.queued(db) == set()  # not live: nothing it could alter
    f = b.media_file(db, v, verses=[A.verse("EXO", 2, 1)])
    assert b.chapter_scopes(db) == {("audio", v): [A.chapter("EXO", 2)]}
    b.drain(db)
    b.assert_read_models_match(db)

    # a version-level change, or enqueueing by hand, means the whole version
    db.execute("UPDATE media_files SET deleted_at = now() WHERE id = %s", [f])
    db.execute("SELECT enqueue_progress_refresh('audio', %s)", [v])
    assert b.chapter_scopes(db) == {("audio", v): None}
    b.media_file(db, v, chapter=A.chapter("EXO", 2))
    assert b.chapter_scopes(db) == {("audio", v): None}
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)


# (b) a refresh that changes nothing writes nothing --------------------------------


def xact_writes(db: psycopg.Connection) -> dict[str, tuple[int, int, int]]:
    """Rows inserted, updated and deleted in each read model by this session and not
    yet flushed to the cumulative statistics (PostgreSQL 15+: this includes
    committed transactions whose counts are still pending), so callers compare
    two readings taken inside one transaction."""
    return {
        name: tuple(
            db.execute(
                "SELECT pg_stat_get_xact_tuples_inserted(%s::regclass), pg_stat_get_xact_tuples_updated(%s::regclass),"
                "       pg_stat_get_xact_tuples_deleted(%s::regclass)",
                [name, name, name],
            ).fetchone()
        )
        for name in MV_TABLES
    }


def xact_delta(before: dict, after: dict) -> dict[str, tuple[int, int, int]]:
    return {name: tuple(a - b_ for a, b_ in zip(after[name], before[name], strict=True)) for name in after}


def table_stats(db: psycopg.Connection) -> dict[str, tuple[int, int, int]]:
    """Cumulative n_tup_ins/upd/del of the read models, after flushing this session's stats."""
    db.execute("SELECT pg_stat_force_next_flush()")
    db.execute("SELECT 1")  # the flush happens when the session goes idle
    db.execute("SELECT pg_stat_clear_snapshot()")
    rows = db.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = ANY (%s)", [MV_TABLES]
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def rich_world(db: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2, 2]})
    B = b.bible(db, "B", {"GEN": [3]})
    le = b.language(db)
    v = b.audio_version(db, "A", le)
    b.audio_version(db, "A", le)
    t = b.text_version(db, "A", le)
    b.text_version(db, "A", le)
    b.media_file(
        db,
        v,
        chapter=A.chapter("GEN", 1),
        start=A.verse("GEN", 2, 2),
        end=A.verse("EXO", 1, 1),
        verses=[B.verse("GEN", 1, 1)],
    )
    b.verse_texts(db, t, A.chapter_verses("GEN", 1) + A.chapter_verses("EXO", 2) + [B.verse("GEN", 1, 2)])
    b.drain(db)
    b.assert_read_models_match(db)
    return v, t


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_refresh_without_changes_writes_nothing(db, kind):
    v, t = rich_world(db)
    version = v if kind == "audio" else t
    before = table_stats(db)
    with db.transaction():
        pending = xact_writes(db)
        counts = db.execute("SELECT * FROM refresh_progress_version(%s, %s)", [kind, version]).fetchall()
        assert counts and all(row[1:] == (0, 0, 0) for row in counts), counts
        assert {row[0] for row in counts} == {m.name for m in READ_MODELS if m.kind == kind}
        assert set(xact_delta(pending, xact_writes(db)).values()) == {(0, 0, 0)}
    # the same through the queue: enqueue, drain, nothing written
    with db.transaction():
        db.execute("SELECT enqueue_progress_refresh(%s, %s)", [kind, version])
        pending = xact_writes(db)
        assert [r[1] for r in db.execute("SELECT * FROM drain_progress_refresh_queue()")] == [version]
        assert set(xact_delta(pending, xact_writes(db)).values()) == {(0, 0, 0)}
    assert table_stats(db) == before


def test_write_counters_do_see_a_changing_refresh(db):
    """The counters used above do move when a refresh writes (so the test above is not vacuous)."""
    v, _ = rich_world(db)
    covered = len(b.verse_ids(db, "audio", v))
    assert covered == 6  # A-GEN-1 (3), A-GEN-2-2, A-EXO-1-1, B-GEN-1-1
    before = table_stats(db)
    db.execute("UPDATE media_files SET publish_status = 'archived' WHERE audio_version_id = %s", [v])
    with db.transaction():
        pending = xact_writes(db)
        b.drain(db)
        writes = xact_delta(pending, xact_writes(db))
    assert writes["mv_audio_verse_coverage"] == (0, 0, covered)
    after = table_stats(db)
    assert after["mv_audio_verse_coverage"][2] - before["mv_audio_verse_coverage"][2] == covered


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_a_chapter_change_moves_the_summary_row_in_place_and_makes_a_missing_one(db, kind):
    """The summary row of a chapter-scoped refresh is updated where its counts moved,
    left unwritten where they did not, and made again when it is missing."""
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    version = (b.audio_version if kind == "audio" else b.text_version)(db, "A", b.language(db))
    summary_table = f"mv_{kind}_version_progress_summary"

    def cover(book: str, chapter: int) -> None:
        if kind == "audio":
            b.media_file(db, version, chapter=A.chapter(book, chapter))
        else:
            b.verse_texts(db, version, A.chapter_verses(book, chapter))

    cover("GEN", 1)
    b.drain(db)

    def drain_chapter_change() -> dict[str, tuple[int, int, int]]:
        assert b.chapter_scopes(db)[(kind, version)] is not None  # not the whole version
        with db.transaction():
            pending = xact_writes(db)
            assert b.drain(db) == [(kind, version)]
            writes = xact_delta(pending, xact_writes(db))
        b.assert_read_models_match(db)
        return writes

    cover("EXO", 1)
    assert drain_chapter_change()[summary_table] == (0, 1, 0)
    assert b.summary(db, kind, version)["covered_verses"] == 5

    if kind == "audio":  # a second file of a covered chapter: no count moves
        cover("EXO", 1)
    else:  # a covered verse's text deleted and restored: no count moves
        for deleted_at in ("now()", "NULL"):
            db.execute(
                f"UPDATE verse_texts SET deleted_at = {deleted_at} WHERE verse_id = %s AND text_version_id = %s",
                [A.verse("EXO", 1, 1), version],
            )
    assert set(drain_chapter_change().values()) == {(0, 0, 0)}

    db.execute(
        sql.SQL("DELETE FROM {} WHERE {} = %s").format(
            sql.Identifier(summary_table), sql.Identifier(f"{kind}_version_id")
        ),
        [version],
    )
    cover("GEN", 2)
    assert drain_chapter_change()[summary_table] == (1, 0, 0)
    assert b.summary(db, kind, version)["covered_verses"] == 7


# (c) a whole-Bible version -----------------------------------------------------------


def load_whole_bible(db: psycopg.Connection) -> str:
    """A KJV-sized structure: the shipped versification when the loader exists."""
    try:
        from orchestration.structure import load_bible_structure
    except ImportError:
        spec = {f"B{n:02d}": [26] * 18 for n in range(1, 67)}
        b.bible(db, "kjv", spec)
        return "kjv"
    load_bible_structure(db, "kjv")
    return "kjv"


def counts_by_model(rows) -> dict[str, tuple[int, int, int]]:
    return {r[0]: tuple(r[1:]) for r in rows}


def timed_refresh(db: psycopg.Connection, kind: str, version: uuid.UUID) -> tuple[dict, float]:
    started = time.perf_counter()
    rows = db.execute("SELECT * FROM refresh_progress_version(%s, %s)", [kind, version]).fetchall()
    return counts_by_model(rows), time.perf_counter() - started


def test_whole_bible_version_refreshes_only_what_changed(db):
    bible_id = load_whole_bible(db)
    totals = db.execute("SELECT * FROM progress_bible_version_totals(%s)", [bible_id]).fetchone()
    total_verses, total_chapters, total_books = totals
    le = b.language(db)
    v = b.audio_version(db, bible_id, le)
    b.audio_version(db, bible_id, le)  # a rival (newer), so the best version is a real choice
    b.drain(db)
    db.execute(
        "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status, publish_status,"
        " chapter_id) SELECT %s, 'audio', true, 'completed', 'published', c.id"
        " FROM chapters c JOIN books bk ON bk.id = c.book_id WHERE bk.bible_version_id = %s",
        [v, bible_id],
    )
    b.clear_queue(db)

    first, first_seconds = timed_refresh(db, "audio", v)
    assert first["mv_audio_verse_coverage"] == (total_verses, 0, 0)
    assert first["mv_audio_chapter_coverage"] == (total_chapters, 0, 0)
    assert first["mv_audio_book_coverage"] == (0, total_books, 0)  # rows existed, now complete
    assert first["mv_audio_version_progress_summary"] == (0, 1, 0)
    assert first["language_entity_best_audio_version"] == (0, 1, 0)  # v overtakes the rival

    unchanged, unchanged_seconds = timed_refresh(db, "audio", v)
    assert set(unchanged.values()) == {(0, 0, 0)}, unchanged

    # one chapter stops being covered: its verses and chapter row go, its book
    # and the summary change, nothing else is written
    chapter, book, size = db.execute(
        "SELECT c.id, c.book_id, count(vs.id) FROM chapters c JOIN books bk ON bk.id = c.book_id"
        "  JOIN verses vs ON vs.chapter_id = c.id WHERE bk.bible_version_id = %s"
        " GROUP BY c.id, c.book_id, bk.book_number, c.chapter_number"
        " ORDER BY bk.book_number DESC, c.chapter_number LIMIT 1 OFFSET 5",
        [bible_id],
    ).fetchone()
    db.execute(
        "UPDATE media_files SET deleted_at = now() WHERE audio_version_id = %s AND chapter_id = %s", [v, chapter]
    )
    with db.transaction():
        pending = xact_writes(db)
        one, one_seconds = timed_refresh(db, "audio", v)
        assert one == {
            "mv_audio_verse_coverage": (0, 0, size),
            "mv_audio_chapter_coverage": (0, 0, 1),
            "mv_audio_book_coverage": (0, 1, 0),
            "mv_audio_version_progress_summary": (0, 1, 0),
            "language_entity_best_audio_version": (0, 0, 0),
        }
        assert xact_delta(pending, xact_writes(db)) == {name: one.get(name, (0, 0, 0)) for name in MV_TABLES}
    assert b.book_rows(db, "audio", v)[book][2] is False

    # and back
    db.execute("UPDATE media_files SET deleted_at = NULL WHERE audio_version_id = %s AND chapter_id = %s", [v, chapter])
    back, back_seconds = timed_refresh(db, "audio", v)
    assert back == {
        "mv_audio_verse_coverage": (size, 0, 0),
        "mv_audio_chapter_coverage": (1, 0, 0),
        "mv_audio_book_coverage": (0, 1, 0),
        "mv_audio_version_progress_summary": (0, 1, 0),
        "language_entity_best_audio_version": (0, 0, 0),
    }
    b.clear_queue(db)
    b.assert_read_models_match(db)
    print(
        f"\nwhole-bible audio version ({total_verses} verses, {total_chapters} chapters):"
        f" first refresh {first_seconds * 1000:.0f} ms, no-change refresh {unchanged_seconds * 1000:.0f} ms,"
        f" one chapter removed {one_seconds * 1000:.0f} ms, restored {back_seconds * 1000:.0f} ms"
    )


def test_a_claim_taken_over_after_its_lease_expired_is_not_refreshed_twice(db):
    version = db.execute(
        "INSERT INTO text_versions (id, name) VALUES (gen_random_uuid(), 'T') RETURNING id"
    ).fetchone()[0]
    [stale] = gateway.claim_batch(db, "slow-worker", 10, 0)  # a lease that has already expired
    [fresh] = gateway.claim_batch(db, "other-worker", 10, 300)  # so another worker claims it
    assert stale.version_id == fresh.version_id == version
    outcome = gateway.refresh_claimed(db, stale, "slow-worker")
    assert outcome.skipped and not outcome.ok and outcome.error is None
    assert db.execute("SELECT claimed_by FROM progress_refresh_queue").fetchall() == [("other-worker",)]
    assert gateway.refresh_claimed(db, fresh, "other-worker").ok
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 0


# (d) a full rebuild ---------------------------------------------------------------------

INDEX_DEFINITIONS = """
    SELECT c.relname, i.relname, pg_get_indexdef(x.indexrelid), con.contype
      FROM pg_index x
      JOIN pg_class c ON c.oid = x.indrelid
      JOIN pg_class i ON i.oid = x.indexrelid
      LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid
     WHERE c.relname = ANY(%s)
     ORDER BY 1, 2"""


def test_full_rebuild_keeps_every_key_and_index(db):
    """The rebuild drops the indexes to build them once at the end: none may go missing."""
    rich_world(db)
    names = [m.name for m in READ_MODELS]
    db.execute("CREATE INDEX dashboard_percent ON mv_audio_version_progress_summary (verse_fraction)")
    before = db.execute(INDEX_DEFINITIONS, [names]).fetchall()
    assert {r[0] for r in before if r[3] == "p"} == set(names)  # every read model has its key
    rows_before = {name: db.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall() for name in names}

    db.execute("SELECT refresh_progress_materialized_views_full()")

    assert db.execute(INDEX_DEFINITIONS, [names]).fetchall() == before
    assert {name: db.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall() for name in names} == rows_before
    b.assert_read_models_match(db)
    # the key still holds
    key_table = READ_MODELS[0]
    with pytest.raises(psycopg.errors.UniqueViolation), db.transaction():
        db.execute(f"INSERT INTO {key_table.name} SELECT * FROM {key_table.name} LIMIT 1")


def test_a_concurrent_rebuild_never_waits_for_a_writer_s_queue_entry(db, dsn):
    """A writer's open transaction holds its version's queue entry (its change
    queued) and then edits the structure, whose counts a concurrent rebuild
    holds: were the rebuild to wait for that entry when it settles the queue,
    the two would deadlock and the rebuild's work be lost. It skips the entry,
    which stays queued for the next drain."""
    A = b.bible(db, "A", {"GEN": [3, 3]})
    version = b.text_version(db, "A", b.language(db))
    b.verse_texts(db, version, A.chapter_verses("GEN", 1)[:1])  # queued, committed
    with psycopg.connect(dsn) as writer, connect(dsn) as rebuilder:
        b.verse_texts(writer, version, A.chapter_verses("GEN", 1)[1:2])  # the entry locked until commit
        rebuilder.execute("SET lock_timeout = '10s'")
        rebuilder.execute("SELECT refresh_progress_materialized_views_concurrently()")
        writer.execute("INSERT INTO verses VALUES ('A-GEN-2-4', 'A-GEN-2', 4, 99)")
        writer.commit()
    assert b.queued(db) == {("text", version)}
    b.drain(db)
    b.assert_read_models_match(db)
    assert b.verse_ids(db, "text", version) == set(A.chapter_verses("GEN", 1)[:2])


@pytest.mark.parametrize("leaves", ["moved to another language", "soft-deleted"])
def test_a_version_leaving_its_language_while_its_best_version_is_refreshed_is_not_left_best(db, dsn, leaves):
    """A drain refreshing language entity E's best version reads version V as
    E's member; meanwhile V leaves E and another drain refreshes V, which finds
    E only through the best-version row the first drain has not committed yet.
    V must not stay E's best version."""
    A = b.bible(db, "A", {"GEN": [3]})
    first, second = b.language(db), b.language(db)
    best, other = b.text_version(db, "A", first), b.text_version(db, "A", first)
    b.verse_texts(db, best, A.chapter_verses("GEN", 1)[:2])
    b.verse_texts(db, other, A.chapter_verses("GEN", 1)[:1])
    b.drain(db)
    assert b.best(db, "text", first) == best
    # The first drain pauses after writing the entity's best version (now `other`).
    db.execute(f"""
        CREATE FUNCTION test_pause() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$;
        CREATE TRIGGER test_pause AFTER UPDATE ON language_entity_best_text_version
            FOR EACH ROW WHEN (NEW.language_entity_id = '{first}') EXECUTE FUNCTION test_pause();""")
    db.execute("UPDATE verse_texts SET deleted_at = now() WHERE text_version_id = %s", [best])
    with connect(dsn) as first_drain, connect(dsn) as writer, connect(dsn) as second_drain:
        drain_thread = threading.Thread(target=b.drain, args=(first_drain,))
        drain_thread.start()
        deadline = time.monotonic() + 30
        while not db.execute(
            "SELECT FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
        ).fetchall():
            assert time.monotonic() < deadline, "the first drain never reached the entity"
            time.sleep(0.02)
        if leaves == "soft-deleted":
            writer.execute("UPDATE text_versions SET deleted_at = now() WHERE id = %s", [other])
        else:
            writer.execute("UPDATE text_versions SET language_entity_id = %s WHERE id = %s", [second, other])
        b.drain(second_drain)
        drain_thread.join()
    db.execute("DROP TRIGGER test_pause ON language_entity_best_text_version")
    b.drain(db)
    assert b.best(db, "text", first) == best  # its only member left, texts or not
    b.assert_read_models_match(db)


def test_rebuild_after_a_load_without_triggers_lets_chapter_changes_see_mapped_files(db):
    """Rows written while the capture triggers were off (a bulk load), then a
    full rebuild: a later change to one chapter still counts the verses a
    mapped file covers there, however the rows were loaded."""
    A = b.bible(db, "A", {"GEN": [3, 2]})
    v = b.audio_version(db, "A", b.language(db))
    b.drain(db)
    tables = ("media_files", "media_files_verses")
    for table in tables:
        db.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
    try:
        b.media_file(db, v, verses=A.chapter_verses("GEN", 1))
        recording = b.media_file(db, v, chapter=A.chapter("GEN", 1))
    finally:
        for table in tables:
            db.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    assert not b.queued(db)
    db.execute("SELECT refresh_progress_materialized_views_full()")
    b.assert_read_models_match(db)

    db.execute("UPDATE media_files SET publish_status = 'pending' WHERE id = %s", [recording])
    assert b.chapter_scopes(db) == {("audio", v): [A.chapter("GEN", 1)]}
    b.drain(db)

    b.assert_read_models_match(db)
    assert b.summary(db, "audio", v)["covered_verses"] == 3


def test_a_mapped_chapter_change_reads_no_other_versions_files(db):
    """A version with mapped files refreshes a changed chapter from its own
    files: the files other versions map to the same verses are told apart
    without reading them, so the refresh costs the same however many versions
    record those verses (counted: media_files rows the drain reads)."""
    A = b.bible(db, "A", {"GEN": [3, 2]})
    mine = b.audio_version(db, "A", b.language(db))
    verses = A.chapter_verses("GEN", 1)
    b.media_file(db, mine, verses=verses[:1])
    for _ in range(20):
        b.media_file(db, b.audio_version(db, "A", b.language(db)), verses=verses)
    b.drain(db)

    b.media_file(db, mine, verses=verses[1:2])
    assert b.chapter_scopes(db) == {("audio", mine): [A.chapter("GEN", 1)]}
    # This session's counts not yet flushed to the statistics: read before and after.
    rows_read = "SELECT idx_tup_fetch + seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = 'media_files'"
    with db.transaction():
        before = b.fetch(db, rows_read)[0][0]
        assert b.drain(db) == [("audio", mine)]
        read = b.fetch(db, rows_read)[0][0] - before
    assert read <= 4  # its own two files (found, then read), none of the 20 others

    b.assert_read_models_match(db)
    assert b.verse_ids(db, "audio", mine) == set(verses[:2])


def _index_entries_read(db: psycopg.Connection, table: str) -> int:
    """Index entries this transaction has read from the table's indexes so far."""
    query = (
        "SELECT coalesce(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)"
        " FROM pg_index WHERE indrelid = %s::regclass"
    )
    return int(b.fetch(db, query, [table])[0][0])


def test_a_range_chapter_change_reads_none_of_the_versions_other_ranges(db):
    """A version recorded as verse ranges refreshes a changed chapter from the
    ranges listed as reaching it: the version's other ranges are not read, so
    the refresh costs the same however many ranges the version holds (counted:
    media_files index entries the drain reads)."""
    A = b.bible(db, "A", {"GEN": [3] * 30})
    v = b.audio_version(db, "A", b.language(db))
    for chapter in range(1, 31):
        b.media_file(db, v, start=A.verse("GEN", chapter, 1), end=A.verse("GEN", chapter, 2))
    b.drain(db)

    changed = b.media_file(db, v, start=A.verse("GEN", 7, 3))
    assert b.chapter_scopes(db) == {("audio", v): [A.chapter("GEN", 7)]}
    with db.transaction():
        before = _index_entries_read(db, "media_files")
        assert b.drain(db) == [("audio", v)]
        read = _index_entries_read(db, "media_files") - before
    assert read <= 8  # the two ranges of GEN 7 (listed, then read), none of the 29 others

    b.assert_read_models_match(db)
    assert A.verse("GEN", 7, 3) in b.verse_ids(db, "audio", v)
    db.execute("UPDATE media_files SET end_verse_id = %s WHERE id = %s", [A.verse("GEN", 8, 1), changed])
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verse("GEN", 8, 1) in b.verse_ids(db, "audio", v)


def _a_change_to_gen_2_alone_still_counts(db: psycopg.Connection, A: b.Bible, v: uuid.UUID, covered: str) -> None:
    """A new range in GEN 2 refreshes GEN 2 alone, whose rows still count the
    verse an older range covers there."""
    b.media_file(db, v, start=A.verse("GEN", 2, 2))
    assert b.chapter_scopes(db) == {("audio", v): [A.chapter("GEN", 2)]}
    b.drain(db)
    b.assert_read_models_match(db)
    assert covered in b.verse_ids(db, "audio", v)


def test_a_verse_moved_to_another_chapter_takes_the_ranges_over_it_along(db):
    """A structure change moves a verse a range covers into another chapter:
    the range's version is refreshed whole, and from then on a change to that
    other chapter alone still counts the range's verse there."""
    A = b.bible(db, "A", {"GEN": [3, 3]})
    v = b.audio_version(db, "A", b.language(db))
    b.media_file(db, v, start=A.verse("GEN", 1, 1), end=A.verse("GEN", 1, 3))
    b.drain(db)

    moved = A.verse("GEN", 1, 3)
    db.execute("UPDATE verses SET chapter_id = %s WHERE id = %s", [A.chapter("GEN", 2), moved])
    assert b.chapter_scopes(db)[("audio", v)] is None
    b.drain(db)
    b.assert_read_models_match(db)

    # The range still reaches GEN 2, through the moved verse.
    _a_change_to_gen_2_alone_still_counts(db, A, v, moved)


@pytest.mark.parametrize("refill", ["rebuild", "migrate"])
def test_ranges_loaded_without_triggers_reach_their_chapters_after_a_rebuild_or_migrate(db, refill):
    """Ranges written while the capture triggers were off (a bulk load), then a
    full rebuild or a migrate: a later change to one chapter still counts the
    verses a range covers there."""
    A = b.bible(db, "A", {"GEN": [3, 2]})
    v = b.audio_version(db, "A", b.language(db))
    b.drain(db)
    db.execute("ALTER TABLE media_files DISABLE TRIGGER USER")
    try:
        b.media_file(db, v, start=A.verse("GEN", 1, 1), end=A.verse("GEN", 2, 1))
    finally:
        db.execute("ALTER TABLE media_files ENABLE TRIGGER USER")
    if refill == "rebuild":
        db.execute("SELECT refresh_progress_materialized_views_full()")
    else:
        migrate(db, strategy="table")
        db.execute("SELECT enqueue_progress_refresh('audio', %s)", [v])
        b.drain(db)
    b.assert_read_models_match(db)
    _a_change_to_gen_2_alone_still_counts(db, A, v, A.verse("GEN", 2, 1))


@pytest.mark.parametrize("deleted", ["end verse", "end chapter", "start verse"])
def test_a_range_whose_verse_is_deleted_in_another_bible_version_shrinks(db, deleted):
    """A range of a version of bible B runs from B's Genesis 1 to a verse of
    bible A, or from a verse of A: deleting that verse (or its chapter)
    sets the range's end (or start) to NULL before any structure trigger
    sees it, so no chapter list from the structure change can name the
    version; the file's change queues it whole, and its rows shrink."""
    A = b.bible(db, "A", {"GEN": [2, 2]})
    B = b.bible(db, "B", {"GEN": [2, 2]})
    v = b.audio_version(db, "B", b.language(db))
    if deleted == "start verse":
        b.media_file(db, v, start=A.verse("GEN", 1, 1), end=A.verse("GEN", 2, 2))
    else:
        b.media_file(db, v, start=B.verse("GEN", 1, 1), end=A.verse("GEN", 2, 1))
    b.drain(db)
    b.assert_read_models_match(db)
    before = b.verse_ids(db, "audio", v)

    if deleted == "end chapter":
        db.execute("DELETE FROM chapters WHERE id = %s", [A.chapter("GEN", 2)])
    else:
        gone = A.verse("GEN", 1, 1) if deleted == "start verse" else A.verse("GEN", 2, 1)
        db.execute("DELETE FROM verses WHERE id = %s", [gone])
    b.drain(db)

    b.assert_read_models_match(db)
    assert b.verse_ids(db, "audio", v) < before


@pytest.mark.parametrize("change", ["made live", "moved to another version"])
def test_a_mapping_written_while_its_file_changes_is_not_lost(dsn, change):
    """Two writers at once: one makes a file live (or moves it to another
    version) while the other maps the file to a verse of another chapter.
    Each trigger sees the other's row as it was: the file's change finds no
    mapping, the mapping a file not live (or in its old version). Together
    they still queue what the mapping reaches."""
    with connect(dsn) as db, connect(dsn) as file_writer, connect(dsn) as mapping_writer:
        A = b.bible(db, "A", {"GEN": [3, 3]})
        le = b.language(db)
        v, other = b.audio_version(db, "A", le), b.audio_version(db, "A", le)
        if change == "made live":
            f = b.media_file(db, v, upload_status="pending")
            statement, params = "UPDATE media_files SET upload_status = 'completed' WHERE id = %s", [f]
        else:
            f = b.media_file(db, v)
            statement, params = "UPDATE media_files SET audio_version_id = %s WHERE id = %s", [other, f]
        b.drain(db)

        file_writer.execute("BEGIN")
        file_writer.execute(statement, params)
        done = threading.Event()

        def map_the_file() -> None:
            with mapping_writer.transaction():
                b.mapping(mapping_writer, f, A.verse("GEN", 2, 1))
            done.set()

        writer = threading.Thread(target=map_the_file)
        writer.start()
        time.sleep(0.5)  # the mapping's statement has run, seeing the file as it was
        file_writer.execute("COMMIT")
        writer.join(timeout=30)
        assert done.is_set()

        b.drain(db)
        b.assert_read_models_match(db)
        owner = other if change == "moved to another version" else v
        assert A.verse("GEN", 2, 1) in b.verse_ids(db, "audio", owner)


def test_a_range_added_while_its_verses_are_reordered_is_listed_again(db, dsn):
    """A range file whose writer holds its version's entry while a structure
    change waits for it was listed by the verses' order before the change: the
    change, seeing it once it waited, has its chapters listed again, so a later
    change to one of the chapters it now reaches keeps it."""
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2, 3]})
    v = b.audio_version(db, "A", b.language(db))
    other = b.media_file(db, v, chapter=A.chapter("GEN", 1))
    b.drain(db)
    with connect(dsn) as writer, connect(dsn) as editor:
        writer.execute("BEGIN")
        b.media_file(writer, v, start=A.verse("GEN", 1, 3), end=A.verse("GEN", 2, 2))
        # EXO 1:1 moves inside the range: the editor's structure change waits for v's entry
        thread, result = run_in_thread(
            lambda: editor.execute(
                "UPDATE verses SET global_order = %s WHERE id = %s", [b.order_of(1, 1, 500), A.verse("EXO", 1, 1)]
            )
        )
        wait_for(db, editor.info.backend_pid, lambda event: event[0] == "Lock")
        writer.execute("COMMIT")
        finish(thread, result)
    b.drain(db)
    b.assert_read_models_match(db)

    b.mapping(db, other, A.verse("EXO", 1, 2))  # a change scoped to EXO 1 alone
    assert b.chapter_scopes(db) == {("audio", v): [A.chapter("EXO", 1)]}
    b.drain(db)
    b.assert_read_models_match(db)
    assert b.verse_ids(db, "audio", v) >= {A.verse("EXO", 1, 1), A.verse("EXO", 1, 2)}


def test_a_dead_letter_written_during_a_rebuild_outlives_it(db, dsn):
    """A worker's last attempt fails on the locks of a concurrent rebuild while a
    change the rebuild has not seen is queued: the rebuild clears the dead
    letters it started with, not that one, so the change is not lost."""
    A = b.bible(db, "A", {"GEN": [3, 3]})
    v = b.text_version(db, "A", b.language(db))
    b.verse_texts(db, v, [A.verse("GEN", 1, 1)])
    b.drain(db)
    db.execute("UPDATE progress_refresh_settings SET value = '1' WHERE key = 'max_attempts'")
    db.execute(
        f"""CREATE FUNCTION test_hold_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF current_setting('application_name') = 'test_rebuild' THEN
                   PERFORM pg_advisory_lock({GATE_KEY});
                   PERFORM pg_advisory_unlock({GATE_KEY});
               END IF;
               RETURN NULL;
           END $$;
           CREATE TRIGGER test_hold_rebuild BEFORE INSERT ON mv_text_version_progress_summary
               FOR EACH STATEMENT EXECUTE FUNCTION test_hold_rebuild();"""
    )
    b.verse_texts(db, v, [A.verse("GEN", 1, 2)])
    with connect(dsn) as worker, connect(dsn) as writer, connect(dsn) as rebuilder:
        gateway.configure_refresh_session(worker, "500ms", "300s")
        [claim] = gateway.claim_batch(worker, "test-worker", 10, 300)
        rebuilder.execute("SET application_name = 'test_rebuild'")
        db.execute("SELECT pg_advisory_lock(%s)", [GATE_KEY])
        thread, result = run_in_thread(
            lambda: rebuilder.execute("SELECT refresh_progress_materialized_views_concurrently()")
        )
        # the rebuild has written the verse rows and waits at the summary
        wait_for(db, rebuilder.info.backend_pid, lambda event: event == ("Lock", "advisory"))
        b.verse_texts(writer, v, [A.verse("GEN", 2, 1)])  # after the rebuild's snapshot
        outcome = gateway.refresh_claimed(worker, claim, "test-worker")
        assert outcome.error is not None and "lock timeout" in outcome.error
        db.execute("SELECT pg_advisory_unlock(%s)", [GATE_KEY])
        finish(thread, result)

    assert [r[0] for r in db.execute("SELECT version_id FROM progress_refresh_dead_letter")] == [v]
    gateway.requeue_dead_letters(db)
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verse("GEN", 2, 1) in b.verse_ids(db, "text", v)


def _waits_or_done(db: psycopg.Connection, pid: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        row = db.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.01)
    assert not thread.is_alive(), f"backend {pid} neither waited nor finished"


@pytest.mark.parametrize("entry", ["worker", "refresh --version"])
def test_a_full_rebuild_and_a_refresh_under_way_never_deadlock(db, dsn, entry):
    """A full rebuild empties every read model in one statement. A refresh
    starting meanwhile reads where its version is the best (one read model)
    before it writes the others: were it to hold that read while waiting for
    the rebuild, and the rebuild then wait for it, PostgreSQL would cancel one
    of the two. Both succeed: a worker gives its claim back to the rebuild
    (uncounted), refresh --version waits for the rebuild and then refreshes."""
    A, _, v = small_world(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    with connect(dsn) as blocker, connect(dsn) as refresher, connect(dsn) as rebuilder:
        gateway.configure_refresh_session(refresher, "5s", "300s")
        claims = gateway.claim_batch(refresher, "test-worker", 10, 300) if entry == "worker" else []
        # A reader holds the first read model the rebuild empties: the
        # rebuild waits there, having locked none of them yet.
        blocker.execute("BEGIN")
        blocker.execute("SELECT count(*) FROM mv_audio_verse_coverage")
        rebuild, rebuilt = run_in_thread(lambda: rebuilder.execute("SELECT refresh_progress_materialized_views_full()"))
        wait_for(db, rebuilder.info.backend_pid, lambda event: event == ("Lock", "relation"))
        if entry == "worker":
            refresh, refreshed = run_in_thread(lambda: gateway.refresh_claimed(refresher, claims[0], "test-worker"))
        else:
            refresh, refreshed = run_in_thread(lambda: gateway.refresh_version(refresher, "audio", v))
        _waits_or_done(db, refresher.info.backend_pid, refresh)
        blocker.execute("COMMIT")
        finish(rebuild, rebuilt)
        outcome = finish(refresh, refreshed)
    assert outcome.error is None
    assert b.fetch(db, "SELECT count(*) FROM progress_refresh_dead_letter") == [(0,)]
    assert b.fetch(db, "SELECT attempts FROM progress_refresh_queue") in ([], [(0,)])
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verse("GEN", 2, 1) in b.verse_ids(db, "audio", v)


def test_the_safe_rebuild_after_sql_drains_alone_keeps_readers_reading(db, dsn):
    """Read models filled by SQL drains alone (pg_cron, no rebuild) count as
    populated: the safe rebuild then goes concurrent, and a reader whose
    snapshot is older than the rebuild still reads every row."""
    A = b.bible(db, "A", {"GEN": [3, 2]})
    le = b.language(db)
    for _ in range(3):
        b.media_file(db, b.audio_version(db, "A", le), chapter=A.chapter("GEN", 1))
    b.drain(db)
    with connect(dsn) as reader:
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM audio_versions")  # the snapshot, no read model touched
        db.execute("SELECT refresh_progress_materialized_views_safe()")
        [(rows,)] = reader.execute("SELECT count(*) FROM mv_audio_version_progress_summary").fetchall()
        reader.execute("COMMIT")
    assert rows == 3
    b.assert_read_models_match(db)


def test_a_sql_drain_cancelled_on_request_leaves_its_batch_queued_as_it_was(db, dsn):
    """pg_cancel_backend of a drain is no failure of the version it was
    refreshing: the call fails, its work is rolled back, and the entry stays
    queued untouched, ready for the next drain (no attempt, no backoff)."""
    A, _, v = small_world(db)
    gate = Gate(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    with connect(dsn) as refresher:
        thread, result = start_held_sql_drain(gate, refresher)
        db.execute("SELECT pg_cancel_backend(%s)", [refresher.info.backend_pid])
        gate.open()
        thread.join(30)
        assert isinstance(result.get("error"), psycopg.errors.QueryCanceled)
    assert b.fetch(db, "SELECT attempts, not_before, last_error FROM progress_refresh_queue") == [(0, None, None)]
    assert b.drain(db) == [("audio", v)]
    b.assert_read_models_match(db)


def test_a_worker_cancelled_on_request_gives_its_claim_back_uncounted(db, dsn):
    A, _, v = small_world(db)
    gate = Gate(db)
    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    with connect(dsn) as worker:
        gateway.configure_refresh_session(worker, "5s", "300s")
        [claim] = gateway.claim_batch(worker, "test-worker", 10, 300)
        gate.arm(worker)
        gate.close()
        thread, result = run_in_thread(lambda: gateway.refresh_claimed(worker, claim, "test-worker"))
        gate.wait_until_held(worker)
        db.execute("SELECT pg_cancel_backend(%s)", [worker.info.backend_pid])
        gate.open()
        outcome = finish(thread, result)
    assert outcome.error is not None and "cancelled on request" in outcome.error
    assert b.fetch(db, "SELECT attempts, not_before, claimed_by FROM progress_refresh_queue") == [(0, None, None)]
    assert b.drain(db) == [("audio", v)]
    b.assert_read_models_match(db)
