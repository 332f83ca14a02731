"""Draining with several workers, and following a stream of changes, on a real queue."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import replace

import psycopg
import pytest

from builders import assert_read_models_match
from orchestration.db.connection import connect
from orchestration.refresh import RefreshPolicy, drain_queue
from orchestration.structure import chapter_id, load_bible_structure

POLICY = RefreshPolicy(lock_timeout="30s", batch_size=1, workers=2, idle_seconds=0, max_run_seconds=60)


def audio_versions(conn: psycopg.Connection, count: int) -> list[uuid.UUID]:
    """`count` audio versions with one published chapter each, queued oldest first."""
    load_bible_structure(conn, "kjv", chapters_limit=2)
    language = uuid.uuid4()
    conn.execute("INSERT INTO language_entities (id, name) VALUES (%s, 'Parallel')", [language])
    versions = [uuid.uuid4() for _ in range(count)]
    for version in versions:
        conn.execute(
            "INSERT INTO audio_versions (id, language_entity_id, bible_version_id, name) VALUES (%s, %s, 'kjv', 'v')",
            [version, language],
        )
        publish(conn, version)
    return versions


def publish(conn: psycopg.Connection, version: uuid.UUID, chapter: int = 1) -> None:
    conn.execute(
        "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status, publish_status,"
        " chapter_id) VALUES (%s, 'audio', true, 'completed', 'published', %s)",
        [version, chapter_id("kjv", "Gen", chapter)],
    )


def test_two_workers_drain_at_once_and_refresh_each_version_once(db, dsn):
    versions = audio_versions(db, 8)
    first = versions[0]
    done: list[uuid.UUID] = []
    with connect(dsn) as holder:
        # The oldest version's refresh waits for this lock: whichever worker claimed it
        # is stuck until every other version is done, which only another worker can do.
        holder.execute("SELECT pg_advisory_lock(1, hashtext(%s))", [str(first)])

        def on_version(outcome) -> None:
            done.append(outcome.version_id)
            if len(done) == len(versions) - 1:
                holder.execute("SELECT pg_advisory_unlock(1, hashtext(%s))", [str(first)])

        report = drain_queue(db, POLICY, connect=lambda: connect(dsn), on_version=on_version)

    assert not report.failed, report.failed
    assert done[-1] == first  # refreshed after the seven others, which another worker did meanwhile
    assert Counter(done) == Counter(versions)  # each exactly once
    assert report.versions_of("audio") and len(report.refreshed) == 8
    assert report.totals()["mv_audio_verse_coverage"].inserted == 8 * 31
    assert_read_models_match(db)


def test_one_worker_cannot_get_past_a_stuck_version(db, dsn):
    """The counterpart of the test above: with one worker the stuck version fails
    (lock timeout) before anything else is refreshed."""
    versions = audio_versions(db, 3)
    with connect(dsn) as holder:
        holder.execute("SELECT pg_advisory_lock(1, hashtext(%s))", [str(versions[0])])
        policy = replace(POLICY, lock_timeout="300ms")
        order = []
        drain_queue(db, policy, connect=lambda: connect(dsn), workers=1, on_version=order.append)
    assert [o.version_id for o in order] == versions
    assert order[0].error is not None and all(o.ok for o in order[1:])


def test_workers_split_max_versions_without_exceeding_it(db, dsn):
    audio_versions(db, 6)
    report = drain_queue(db, POLICY, connect=lambda: connect(dsn), max_versions=4)
    assert len(report.outcomes) == 4
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 2


def test_following_drain_picks_up_a_change_committed_after_the_queue_went_empty(db, dsn):
    (first,) = audio_versions(db, 1)
    emptied = threading.Event()
    later: list[uuid.UUID] = []

    def commit_later() -> None:
        emptied.wait()
        with connect(dsn) as writer:
            # Only once the drain found the queue empty (it polls, it is not done).
            while writer.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0]:
                time.sleep(0.05)
            later.extend(audio_versions(writer, 1))

    writer = threading.Thread(target=commit_later)
    writer.start()
    refreshed: list[uuid.UUID] = []

    def on_version(outcome) -> None:
        refreshed.append(outcome.version_id)
        emptied.set()

    policy = replace(POLICY, idle_seconds=10)
    report = drain_queue(db, policy, connect=lambda: connect(dsn), follow=True, on_version=on_version)
    writer.join()

    assert refreshed == [first, *later] and len(later) == 1
    assert not report.failed
    assert_read_models_match(db)


def test_without_follow_the_drain_ends_when_the_queue_is_empty(db, dsn):
    audio_versions(db, 1)
    report = drain_queue(db, replace(POLICY, idle_seconds=600), connect=lambda: connect(dsn))
    assert len(report.refreshed) == 1  # and it returned: idle_seconds applies to following drains only


def test_following_drain_claims_nothing_new_after_its_time_limit(db, dsn):
    audio_versions(db, 4)

    def slow_first(outcome) -> None:
        if not slow_first.called:  # type: ignore[attr-defined]
            slow_first.called = True  # type: ignore[attr-defined]
            time.sleep(1.2)

    slow_first.called = False  # type: ignore[attr-defined]
    policy = replace(POLICY, workers=1, idle_seconds=60, max_run_seconds=1)
    report = drain_queue(db, policy, connect=lambda: connect(dsn), follow=True, on_version=slow_first)
    assert len(report.outcomes) == 1
    assert db.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 3  # the next run's


def test_a_worker_that_cannot_connect_fails_the_drain_clearly(db, dsn):
    audio_versions(db, 2)
    from orchestration.errors import ProgressError

    def broken() -> psycopg.Connection:
        raise ProgressError("cannot reach PostgreSQL at somewhere")

    with pytest.raises(ProgressError, match="cannot reach PostgreSQL"):
        drain_queue(db, POLICY, connect=broken)


def test_workers_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("PROGRESS_REFRESH_WORKERS", "3")
    monkeypatch.setenv("PROGRESS_RUN_IDLE_SECONDS", "4")
    monkeypatch.setenv("PROGRESS_RUN_MAX_SECONDS", "90")
    policy = RefreshPolicy.from_env()
    assert (policy.workers, policy.idle_seconds, policy.max_run_seconds) == (3, 4.0, 90.0)
    monkeypatch.delenv("PROGRESS_REFRESH_WORKERS")
    assert RefreshPolicy.from_env().workers == 2
