"""The refresh log: every finished refresh, whoever ran it, with its source and
the lag of what it made visible; read in order by transaction horizon, pruned
past its retention."""

from __future__ import annotations

import uuid
from dataclasses import replace

import psycopg
import pytest

import builders as b
from orchestration.db import gateway
from orchestration.db.connection import connect
from orchestration.refresh import RefreshPolicy, drain_queue

# They read the refresh log up to the server's snapshot horizon (see conftest.Copies).
pytestmark = pytest.mark.quiet_server


def log(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return list(cur.execute("SELECT * FROM progress_refresh_log ORDER BY id"))


@pytest.fixture
def texts(db: psycopg.Connection) -> list[uuid.UUID]:
    """Three text versions of one small bible, of three languages (so refreshes never
    wait for each other's language), each with a verse typed (so queued)."""
    bible = b.bible(db, "kjv", {"Gen": [3, 3]})
    versions = [b.text_version(db, "kjv", b.language(db, f"Language {n}"), name=f"Text {n}") for n in range(3)]
    for version in versions:
        b.verse_texts(db, version, [bible.verse("Gen", 1, 1)])
    return versions


def age_queue(conn: psycopg.Connection, version: uuid.UUID, seconds: float) -> None:
    conn.execute(
        "UPDATE progress_refresh_queue SET enqueued_at = now() - make_interval(secs => %s) WHERE version_id = %s",
        [seconds, version],
    )


def test_each_refresh_path_logs_its_source_and_rows(db, dsn, texts):
    first, second, third = texts
    with connect(dsn) as cli:
        drain_queue(cli, max_versions=1)  # the Python drain outside Dagster: the command line's
    b.drain(db)  # the SQL API, as pg_cron calls it
    db.execute("SELECT * FROM refresh_progress_version('text', %s)", [first])  # by name, not queued
    b.verse_texts(db, second, ["kjv-Gen-1-2"])
    with connect(dsn) as dagster:
        drain_queue(dagster, replace(RefreshPolicy.from_env(), source="dagster:run-1"))

    rows = log(db)
    assert [(r["version_id"], r["source"]) for r in rows] == [
        (first, "cli"),
        (second, "sql"),
        (third, "sql"),
        (first, "sql"),
        (second, "dagster:run-1"),
    ]
    assert all(r["rows_written"] > 0 for r in rows[:3])
    assert rows[3]["rows_written"] == 0 and rows[3]["first_enqueued_at"] is None  # nothing queued, nothing changed
    assert all(r["first_enqueued_at"] is not None for r in rows if r is not rows[3])


def test_lag_runs_from_the_first_enqueue_to_the_refresh(db, texts):
    for version, seconds in zip(texts, (10, 20, 30), strict=True):
        age_queue(db, version, seconds)
    drain_queue(db)

    lag = gateway.refresh_lag(db, "text", "cli")
    assert lag.refreshes == 3
    assert lag.p50 is not None and lag.p95 is not None and lag.max is not None
    # Ages of 10, 20 and 30 s, plus the time until each refresh committed.
    assert 20 <= lag.p50 < 30
    assert (lag.p95 - lag.p50, lag.max - lag.p50) == (pytest.approx(9, abs=1), pytest.approx(10, abs=1))
    assert lag.oldest_queued_age_seconds == 0
    assert gateway.refresh_lag(db, "audio").refreshes == 0
    assert gateway.refresh_lag(db, "text", "dagster:elsewhere").p95 is None


def test_a_change_during_a_refresh_keeps_the_lag_of_what_each_refresh_made_visible(db, texts):
    version = texts[0]
    age_queue(db, version, 50)
    claim = next(c for c in gateway.claim_batch(db, "w", 10, 300, ["text"]) if c.version_id == version)
    b.verse_texts(db, version, ["kjv-Gen-1-3"])  # arrives after the claim: the entry stays queued
    assert gateway.refresh_claimed(db, claim, "w").ok
    released = db.execute("SELECT enqueued_at FROM progress_refresh_queue WHERE version_id = %s", [version]).fetchone()
    assert released is not None
    drain_queue(db)

    first, second = (r for r in log(db) if r["version_id"] == version)
    # The first refresh made the 50-second-old change visible; the second, the change after the claim.
    assert (first["refreshed_at"] - first["first_enqueued_at"]).total_seconds() == pytest.approx(50, abs=3)
    assert second["first_enqueued_at"] == released[0]
    assert (second["refreshed_at"] - second["first_enqueued_at"]).total_seconds() < 5


def test_rows_past_the_retention_are_pruned_by_later_refreshes(db, texts):
    db.execute(
        "INSERT INTO progress_refresh_log (kind, version_id, refreshed_at, source)"
        " SELECT 'text', gen_random_uuid(), now() - make_interval(days => d), 'sql' FROM unnest('{8, 9, 6}'::int[]) d"
    )
    drain_queue(db)
    ages = [r["refreshed_at"] for r in log(db)]
    assert len(ages) == 4  # the 6-day-old row and this drain's three
    db.execute("UPDATE progress_refresh_settings SET value = '5' WHERE key = 'refresh_log_keep_days'")
    b.verse_texts(db, texts[0], ["kjv-Gen-2-1"])
    drain_queue(db)
    assert len(log(db)) == 4  # the 6-day-old row went, this drain's row came


def test_reading_by_horizon_sees_every_row_once_whatever_the_commit_order(db, dsn, texts):
    start = gateway.refresh_log_horizon(db)
    with connect(dsn) as slow:
        # A refresh that started first and commits last.
        slow.execute("BEGIN")
        slow.execute("SELECT * FROM refresh_progress_version('text', %s)", [texts[0]])
        drain_queue(db, max_versions=1)  # refreshes another version, committed at once
        middle = gateway.refresh_log_horizon(db)
        early = gateway.refreshes_between(db, start, middle)
        slow.execute("COMMIT")
    end = gateway.refresh_log_horizon(db)
    late = gateway.refreshes_between(db, middle, end)

    # Nothing is read past the open transaction, so nothing it wrote is skipped.
    assert early == []
    assert sorted((r.source, r.refreshes) for r in late) == [("cli", 1), ("sql", 1)]
    assert gateway.refreshes_between(db, end, gateway.refresh_log_horizon(db)) == []
