"""SPEC section 8 under faults: kills, concurrent drains and writers, readers
during refreshes, poisoned versions, bad input. Each test would catch the
violation of its guarantee."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

import builders as b
from orchestration.db import gateway
from orchestration.db.connection import connect
from orchestration.read_models import READ_MODELS
from orchestration.refresh import RefreshPolicy, drain_queue

VERSES = [f"b-1-{c}-{v}" for c in (1, 2, 3) for v in (1, 2, 3)]


def build_structure(conn: psycopg.Connection) -> uuid.UUID:
    """One bible (3 chapters of 3 verses) and a language; returns the language id."""
    conn.execute("INSERT INTO bible_versions VALUES ('b', 'B')")
    conn.execute("INSERT INTO books VALUES ('b-1', 'b', 1, 'One')")
    conn.execute("INSERT INTO chapters SELECT 'b-1-' || c, 'b-1', c, 3 FROM generate_series(1, 3) c")
    conn.execute(
        "INSERT INTO verses SELECT 'b-1-' || c || '-' || v, 'b-1-' || c, v, c * 10 + v"
        "  FROM generate_series(1, 3) c, generate_series(1, 3) v"
    )
    language = uuid.uuid4()
    conn.execute("INSERT INTO language_entities VALUES (%s, 'L')", [language])
    return language


def add_text_versions(conn: psycopg.Connection, language: uuid.UUID, count: int) -> list[uuid.UUID]:
    versions = [uuid.uuid4() for _ in range(count)]
    for version in versions:
        conn.execute(
            "INSERT INTO text_versions (id, language_entity_id, bible_version_id, name) VALUES (%s, %s, 'b', 'T')",
            [version, language],
        )
    return versions


def add_texts(conn: psycopg.Connection, version: uuid.UUID, verses: list[str]) -> None:
    # Sorted, as any app inserting many rows must: two writers inserting the same
    # keys in different orders deadlock on the unique index, triggers or not.
    conn.execute(
        "INSERT INTO verse_texts (text_version_id, verse_id, verse_text)"
        " SELECT %s, v, 'text' FROM unnest(%s::text[]) v ON CONFLICT DO NOTHING",
        [version, sorted(verses)],
    )


def total_mismatches(conn: psycopg.Connection, versions: list[uuid.UUID] | None = None) -> int:
    total = 0
    for model in READ_MODELS:
        if versions is not None and model.level == "best":
            continue
        scope = model.key_columns[0] if versions is not None else None
        total += gateway.mismatches(conn, model.name, model.logical_view, scope, versions)
    return total


def summary_rows(conn: psycopg.Connection, versions: list[uuid.UUID]) -> list[tuple]:
    return conn.execute(
        "SELECT * FROM mv_text_version_progress_summary WHERE text_version_id = ANY(%s) ORDER BY 1", [versions]
    ).fetchall()


def drain_all(conn: psycopg.Connection) -> None:
    while gateway.drain_sql_batch(conn):
        pass


def cli_env(dsn: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PROGRESS_DATABASE_URL=dsn)
    env.update(extra)
    return env


def test_killed_refresh_leaves_versions_old_or_new_and_the_rest_queued(db, dsn) -> None:
    language = build_structure(db)
    versions = add_text_versions(db, language, 6)
    for version in versions:
        add_texts(db, version, VERSES[:3])
    drain_all(db)
    old = summary_rows(db, versions)
    for version in versions:
        add_texts(db, version, VERSES)  # every version changes
    slow = versions[3]  # queued in creation order: the fourth one hangs
    db.execute(f"""
        CREATE FUNCTION test_hang() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.text_version_id = '{slow}' THEN PERFORM pg_sleep(60); END IF; RETURN NEW; END $$;
        CREATE TRIGGER test_hang BEFORE INSERT ON mv_text_verse_coverage
            FOR EACH ROW EXECUTE FUNCTION test_hang();""")
    worker = subprocess.Popen(
        [sys.executable, "-m", "orchestration", "refresh"],
        env=cli_env(dsn, PROGRESS_BATCH_SIZE="10"),  # the default lease: 300 s
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queued = {v for (v,) in db.execute("SELECT version_id FROM progress_refresh_queue")}
            hanging = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
            ).fetchone()[0]
            if queued == set(versions[3:]) and hanging:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached the hanging version")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()

    # Finished versions are new, the others untouched and still queued.
    assert total_mismatches(db, versions[:3]) == 0
    assert summary_rows(db, versions[3:]) == [row for row in old if row[0] in versions[3:]]
    assert {v for (v,) in db.execute("SELECT version_id FROM progress_refresh_queue")} == set(versions[3:])

    db.execute("DROP TRIGGER test_hang ON mv_text_verse_coverage")
    report = drain_queue(db)  # the dead worker's claims are taken over at once; no human needed
    assert sorted(o.version_id for o in report.refreshed) == sorted(versions[3:])
    assert total_mismatches(db) == 0
    assert gateway.queue_state(db)["depth"] == 0


def _writer(dsn: str, versions: list[uuid.UUID], stop: threading.Event, errors: list[BaseException], seed: int) -> None:
    rng = random.Random(seed)
    try:
        with connect(dsn) as conn:
            while not stop.is_set():
                version = rng.choice(versions)
                action = rng.random()
                if action < 0.4:
                    add_texts(conn, version, rng.sample(VERSES, rng.randint(1, 4)))
                elif action < 0.7:
                    conn.execute(
                        "UPDATE verse_texts SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END"
                        " WHERE text_version_id = %s AND verse_id = %s",
                        [version, rng.choice(VERSES)],
                    )
                elif action < 0.85:
                    conn.execute(
                        "DELETE FROM verse_texts WHERE text_version_id = %s AND verse_id = %s",
                        [version, rng.choice(VERSES)],
                    )
                else:
                    conn.execute(
                        "UPDATE text_versions SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END,"
                        " created_at = now() WHERE id = %s",
                        [version],
                    )
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


def _drainer(dsn: str, stop: threading.Event, errors: list[BaseException], use_sql: bool) -> None:
    try:
        with connect(dsn) as conn:
            while not stop.is_set():
                if use_sql:
                    drain_all(conn)
                else:
                    report = drain_queue(conn, RefreshPolicy(batch_size=5, lease_seconds=30))
                    if report.failed:
                        raise AssertionError(f"refresh failed: {report.failed[0].error}")
                time.sleep(0.01)
    except BaseException as exc:
        errors.append(exc)


# Long enough for every writer/drainer interleaving to occur many times over;
# a soak sets PROGRESS_CONCURRENCY_SECONDS higher.
CONCURRENCY_SECONDS = float(os.environ.get("PROGRESS_CONCURRENCY_SECONDS", "20"))


def test_concurrent_writers_and_two_drains_neither_deadlock_nor_corrupt(db, dsn) -> None:
    language = build_structure(db)
    other_language = uuid.uuid4()
    db.execute("INSERT INTO language_entities VALUES (%s, 'M')", [other_language])
    versions = add_text_versions(db, language, 4) + add_text_versions(db, other_language, 4)
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(dsn, versions, stop, errors, seed)) for seed in range(3)]
    threads += [threading.Thread(target=_drainer, args=(dsn, stop, errors, use_sql)) for use_sql in (True, False)]
    for thread in threads:
        thread.start()
    time.sleep(CONCURRENCY_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0
    drain_all(db)
    assert total_mismatches(db) == 0
    assert gateway.queue_state(db)["depth"] == 0


def test_readers_never_see_a_summary_missing_nor_wait(db, dsn) -> None:
    language = build_structure(db)
    versions = add_text_versions(db, language, 3)
    for version in versions:
        add_texts(db, version, VERSES[:5])
    drain_all(db)
    watched = versions[0]
    stop = threading.Event()
    observations: list[tuple[int, float]] = []

    def read() -> None:
        with connect(dsn) as reader:
            while not stop.is_set():
                started = time.perf_counter()
                rows = reader.execute(
                    "SELECT covered_verses FROM mv_text_version_progress_summary WHERE text_version_id = %s", [watched]
                ).fetchall()
                observations.append((len(rows), time.perf_counter() - started))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        rng = random.Random(3)
        for round_ in range(30):
            add_texts(db, watched, rng.sample(VERSES, 3))
            db.execute(
                "UPDATE verse_texts SET deleted_at = now() WHERE text_version_id = %s AND verse_id = %s",
                [watched, rng.choice(VERSES)],
            )
            if round_ % 3 == 0:
                db.execute("SELECT refresh_progress_materialized_views_concurrently()")
            else:
                drain_all(db)
    finally:
        stop.set()
        reader.join()
    assert len(observations) > 100
    assert all(count == 1 for count, _ in observations), "the summary row went missing"
    assert max(seconds for _, seconds in observations) < 0.5


def trouble_refreshing(db: psycopg.Connection, version: uuid.UUID, statement: str, backoff_seconds: float) -> None:
    """Writing the version's summary row runs `statement` (an error, a stall);
    failed refreshes back off for backoff_seconds (doubled per attempt)."""
    db.execute(
        "UPDATE progress_refresh_settings SET value = %s WHERE key = 'retry_backoff_seconds'", [str(backoff_seconds)]
    )
    db.execute(f"""
        CREATE FUNCTION test_trouble() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.text_version_id = '{version}' THEN {statement}; END IF; RETURN NEW; END $$;
        CREATE TRIGGER test_trouble BEFORE INSERT ON mv_text_version_progress_summary
            FOR EACH ROW EXECUTE FUNCTION test_trouble();""")


def test_poisoned_version_is_isolated_retried_and_dead_lettered(db) -> None:
    language = build_structure(db)
    versions = add_text_versions(db, language, 3)
    poisoned = versions[1]
    trouble_refreshing(db, poisoned, "RAISE EXCEPTION 'poisoned version'", backoff_seconds=0.2)
    for version in versions:
        add_texts(db, version, VERSES[:2])

    first = drain_queue(db)
    assert sorted(o.version_id for o in first.refreshed) == sorted(v for v in versions if v != poisoned)
    assert [(o.version_id, "poisoned version" in (o.error or "")) for o in first.failed] == [(poisoned, True)]
    attempts, not_before_in_future = db.execute(
        "SELECT attempts, not_before > now() FROM progress_refresh_queue WHERE version_id = %s", [poisoned]
    ).fetchone()
    assert (attempts, not_before_in_future) == (1, True)
    assert drain_queue(db).outcomes == []  # backing off: not retried at once

    deadline = time.monotonic() + 10
    while db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] and time.monotonic() < deadline:
        time.sleep(0.1)
        drain_queue(db)
    dead = db.execute("SELECT kind, version_id, attempts, last_error FROM progress_refresh_dead_letter").fetchall()
    assert dead == [("text", poisoned, 3, "poisoned version")]
    assert gateway.queue_state(db)["depth"] == 0
    assert total_mismatches(db, [v for v in versions if v != poisoned]) == 0

    # A later change queues it again; once healthy it leaves the dead letters.
    db.execute("DROP TRIGGER test_trouble ON mv_text_version_progress_summary")
    add_texts(db, poisoned, VERSES[2:4])
    assert gateway.queue_state(db)["depth"] == 1
    drain_queue(db)
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0
    assert total_mismatches(db) == 0


def test_a_version_slower_than_the_statement_timeout_holds_up_no_other(db) -> None:
    """SQL drains under a statement_timeout (pg_cron, an API call): a version
    whose refresh outlasts it is recorded as failed each time, retried with
    backoff and dead-lettered, and the versions queued behind it are refreshed
    meanwhile; none of it leaves a drain call failing for good."""
    language = build_structure(db)
    versions = add_text_versions(db, language, 4)
    slow = versions[0]
    trouble_refreshing(db, slow, "PERFORM pg_sleep(5)", backoff_seconds=1)
    for version in versions:  # the slow one queued first
        add_texts(db, version, VERSES[:2])
    db.execute("SET statement_timeout = '300ms'")

    assert db.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall() == []  # the slow one, cancelled
    attempts, error = db.execute(
        "SELECT attempts, last_error FROM progress_refresh_queue WHERE version_id = %s", [slow]
    ).fetchone()
    assert (attempts, "statement timeout" in error) == (1, True)
    assert {v for _, v in b.drain(db)} == set(versions[1:])  # the slow one backs off meanwhile
    deadline = time.monotonic() + 30
    while gateway.queue_state(db)["depth"] and time.monotonic() < deadline:
        time.sleep(0.1)
        b.drain(db)
    db.execute("RESET statement_timeout")
    assert db.execute("SELECT version_id, attempts FROM progress_refresh_dead_letter").fetchall() == [(slow, 3)]
    assert gateway.queue_state(db)["depth"] == 0
    assert total_mismatches(db, versions[1:]) == 0


def test_requeue_dead_letters_puts_them_back(db) -> None:
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    db.execute("DELETE FROM progress_refresh_queue")
    db.execute(
        "INSERT INTO progress_refresh_dead_letter (kind, version_id, attempts, last_error, first_queued_at)"
        " VALUES ('text', %s, 3, 'boom', now())",
        [version],
    )
    assert gateway.requeue_dead_letters(db) == [("text", version)]
    assert db.execute("SELECT kind, version_id, attempts FROM progress_refresh_queue").fetchall() == [
        ("text", version, 0)
    ]
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("call", "args", "message"),
    [
        ("SELECT enqueue_progress_refresh(%s, %s)", ("video", uuid.uuid4()), "unknown version kind"),
        ("SELECT enqueue_progress_refresh(%s, %s)", ("audio", None), "must not be NULL"),
        ("SELECT enqueue_progress_refresh(%s, %s)", ("audio", uuid.uuid4()), "unknown audio version"),
        ("SELECT * FROM refresh_progress_version(%s, %s)", ("text", uuid.uuid4()), "unknown text version"),
        ("SELECT * FROM refresh_progress_version(%s, %s)", (None, uuid.uuid4()), "unknown version kind"),
    ],
)
def test_bad_input_is_refused_clearly_and_loses_nothing(db, call, args, message) -> None:
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    before = db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue").fetchall()
    with pytest.raises(psycopg.Error) as raised:
        db.execute(call, args)
    assert message in raised.value.diag.message_primary
    assert db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue").fetchall() == before
    assert before == [("text", version, 1)]


def _drain(db, path: str) -> None:
    """Drains until nothing is ready, through the SQL API or the Python workers."""
    if path == "sql":
        drain_all(db)
    else:
        drain_queue(db)


def _dead_letter(db, version: uuid.UUID, table: str, column: str) -> None:
    """Makes the version's refresh fail (a trigger on a read model) until it is dead-lettered."""
    db.execute("UPDATE progress_refresh_settings SET value = '0' WHERE key = 'retry_backoff_seconds'")
    db.execute(f"""
        CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.{column} = '{version}' THEN RAISE EXCEPTION 'poisoned version'; END IF;
              RETURN NEW; END $$;
        CREATE TRIGGER test_poison BEFORE INSERT OR UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION test_poison();""")


@pytest.mark.parametrize("path", ["sql", "python"])
def test_a_version_back_from_the_dead_letters_gets_the_changes_that_failed(db, path) -> None:
    """The change that brings it back touches another chapter: the chapter
    whose change failed is refreshed too, not only the new one."""
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    drain_all(db)
    _dead_letter(db, version, "mv_text_verse_coverage", "text_version_id")
    add_texts(db, version, ["b-1-1-1"])
    for _ in range(3):
        _drain(db, path)
    assert db.execute("SELECT version_id, attempts FROM progress_refresh_dead_letter").fetchall() == [(version, 3)]

    db.execute("DROP TRIGGER test_poison ON mv_text_verse_coverage")
    add_texts(db, version, ["b-1-2-1"])
    _drain(db, path)

    assert gateway.queue_state(db)["depth"] == 0
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0
    assert db.execute(
        "SELECT verse_id FROM mv_text_verse_coverage WHERE text_version_id = %s ORDER BY 1", [version]
    ).fetchall() == [("b-1-1-1",), ("b-1-2-1",)]
    assert total_mismatches(db) == 0


@pytest.mark.parametrize("path", ["sql", "python"])
def test_a_chapter_entry_of_a_dead_lettered_version_is_followed_by_a_whole_refresh(db, path) -> None:
    """A writer that could not see the dead letter yet (it was written while
    the writer waited) queues only its chapter: settling that refresh queues
    the version whole, so the changes that failed still arrive."""
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    drain_all(db)
    # A change that never reached the read models (its entry failed), and the
    # chapter entry of the writer that came back.
    db.execute("ALTER TABLE verse_texts DISABLE TRIGGER USER")
    add_texts(db, version, ["b-1-1-1", "b-1-2-1"])
    db.execute("ALTER TABLE verse_texts ENABLE TRIGGER USER")
    db.execute(
        "INSERT INTO progress_refresh_dead_letter (kind, version_id, attempts, last_error, first_queued_at)"
        " VALUES ('text', %s, 3, 'poisoned version', now())",
        [version],
    )
    db.execute(
        "INSERT INTO progress_refresh_queue (kind, version_id, chapter_ids) VALUES ('text', %s, '{b-1-2}')", [version]
    )

    _drain(db, path)

    assert gateway.queue_state(db)["depth"] == 0
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone()[0] == 0
    assert total_mismatches(db) == 0


def test_a_failing_language_entity_refresh_fails_only_its_version(db) -> None:
    """The SQL drain refreshes a batch's language entities together, at the end:
    when one entity's refresh fails, the others' versions are still refreshed,
    and the failing one is retried and dead-lettered like any failing version."""
    build_structure(db)
    languages = [uuid.uuid4(), uuid.uuid4()]
    db.execute("INSERT INTO language_entities VALUES (%s, 'bad'), (%s, 'good')", languages)
    bad, good = (add_text_versions(db, language, 1)[0] for language in languages)
    _dead_letter(db, languages[0], "language_entity_best_text_version", "language_entity_id")
    for version in (bad, good):
        add_texts(db, version, VERSES[:4])

    refreshed = gateway.drain_sql_batch(db)
    assert refreshed == [("text", good)]
    assert db.execute("SELECT version_id, attempts FROM progress_refresh_queue").fetchall() == [(bad, 1)]
    assert total_mismatches(db, [good]) == 0
    assert db.execute("SELECT text_version_id FROM language_entity_best_text_version").fetchall() == [(good,)]
    drain_all(db)
    drain_all(db)
    assert db.execute("SELECT version_id, attempts FROM progress_refresh_dead_letter").fetchall() == [(bad, 3)]
    assert gateway.queue_state(db)["depth"] == 0


def test_a_drain_never_waits_for_a_summary_another_session_holds(db, dsn) -> None:
    """Someone holds a summary locked (a long report, a maintenance job): a
    drain of another kind still refreshes and reports, and once the read models
    are populated its bookkeeping does not wait for that lock either."""
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    drain_queue(db)
    assert gateway.mark_populated_if_complete(db) is not None
    add_texts(db, version, VERSES[:1])
    with connect(dsn) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE mv_audio_version_progress_summary IN ACCESS EXCLUSIVE MODE")
        report = drain_queue(db, RefreshPolicy(lock_timeout="300ms"))
        holder.execute("ROLLBACK")
    assert [o.version_id for o in report.refreshed] == [version]
    assert report.failed == []


def test_requeued_dead_letters_come_back_whole(db) -> None:
    """An entry holding only the chapters changed since the failure is widened
    to the whole version when its dead letter is put back."""
    language = build_structure(db)
    (version,) = add_text_versions(db, language, 1)
    drain_all(db)
    db.execute(
        "INSERT INTO progress_refresh_dead_letter (kind, version_id, attempts, last_error, first_queued_at)"
        " VALUES ('text', %s, 3, 'boom', now())",
        [version],
    )
    db.execute(
        "INSERT INTO progress_refresh_queue (kind, version_id, chapter_ids) VALUES ('text', %s, '{b-1-2}')", [version]
    )
    assert gateway.requeue_dead_letters(db) == [("text", version)]
    assert db.execute("SELECT chapter_ids FROM progress_refresh_queue").fetchall() == [(None,)]


def _rebuilder(dsn: str, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        with connect(dsn) as conn:
            while not stop.is_set():
                conn.execute("SELECT refresh_progress_materialized_views_concurrently()")
                time.sleep(0.05)
    except BaseException as exc:
        errors.append(exc)


def test_a_concurrent_rebuild_beside_drains_and_writers_never_deadlocks(db, dsn) -> None:
    """A concurrent rebuild writes every version's rows while SQL drains lock
    batches of several versions: they take turns, neither deadlocks, and
    nothing a drain held is lost."""
    language = build_structure(db)
    versions = add_text_versions(db, language, 8)
    drain_all(db)
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    before = db.execute(deadlocks).fetchone()[0]
    stop = threading.Event()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(dsn, versions, stop, errors, seed)) for seed in range(3)]
    threads += [threading.Thread(target=_drainer, args=(dsn, stop, errors, True)) for _ in range(2)]
    threads.append(threading.Thread(target=_rebuilder, args=(dsn, stop, errors)))
    for thread in threads:
        thread.start()
    time.sleep(min(CONCURRENCY_SECONDS, 10))
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors[0]
    failed = db.execute("SELECT last_error FROM progress_refresh_queue WHERE last_error IS NOT NULL").fetchall()
    assert failed == []
    time.sleep(1)  # the statistics of the sessions that ended
    db.execute("SELECT pg_stat_clear_snapshot()")
    assert db.execute(deadlocks).fetchone()[0] == before
    drain_all(db)
    assert total_mismatches(db) == 0
