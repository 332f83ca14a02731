"""Only the roles the product grants may refresh; writers still capture changes."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from orchestration.db.base_schema import REQUIRED_COLUMNS
from orchestration.db.connection import connect


@pytest.fixture
def roles(db: psycopg.Connection) -> dict[str, str]:
    """Two login roles: an app writer without refresh rights, and a refresher."""
    suffix = uuid.uuid4().hex[:8]
    writer, refresher = f"app_writer_{suffix}", f"refresher_{suffix}"
    db.execute(f"CREATE ROLE {writer} LOGIN")
    db.execute(f"CREATE ROLE {refresher} LOGIN IN ROLE progress_refresher")
    db.execute(f"GRANT USAGE ON SCHEMA public TO {writer}, {refresher}")
    base_tables = ", ".join(REQUIRED_COLUMNS)
    db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {base_tables} TO {writer}")
    # Supabase's default privileges give its API roles everything; migrate takes writes back.
    db.execute("DO $$ BEGIN CREATE ROLE anon NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    db.execute(f"GRANT anon TO {writer}")
    db.execute("GRANT ALL ON mv_text_verse_coverage, progress_refresh_queue TO anon")
    db.execute("SELECT progress_apply_grants()")
    yield {"writer": writer, "refresher": refresher}
    for role in (writer, refresher):
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def as_role(dsn: str, role: str) -> psycopg.Connection:
    return connect(make_conninfo(dsn, user=role))


def seed_text_version(conn: psycopg.Connection) -> uuid.UUID:
    conn.execute("INSERT INTO bible_versions VALUES ('b', 'B')")
    conn.execute("INSERT INTO books VALUES ('b-1', 'b', 1, 'One')")
    conn.execute("INSERT INTO chapters VALUES ('b-1-1', 'b-1', 1, 1)")
    conn.execute("INSERT INTO verses VALUES ('b-1-1-1', 'b-1-1', 1, 1)")
    version = uuid.uuid4()
    conn.execute("INSERT INTO text_versions (id, bible_version_id, name) VALUES (%s, 'b', 'T')", [version])
    return version


def test_writer_changes_are_captured_but_writer_cannot_refresh(db, dsn, roles) -> None:
    version = seed_text_version(db)
    db.execute("DELETE FROM progress_refresh_queue")
    with as_role(dsn, roles["writer"]) as writer:
        writer.execute(
            "INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, 'b-1-1-1', 'x')", [version]
        )
        for call in (
            "SELECT * FROM drain_progress_refresh_queue()",
            "SELECT refresh_progress_materialized_views_concurrently()",
            "SELECT refresh_progress_materialized_views_full()",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute(call)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("SELECT * FROM refresh_progress_version('text', %s)", [version])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("INSERT INTO progress_refresh_queue (kind, version_id) VALUES ('text', %s)", [version])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            writer.execute("DELETE FROM mv_text_verse_coverage")
    assert db.execute("SELECT kind, version_id FROM progress_refresh_queue").fetchall() == [("text", version)]


def test_refresher_can_drain_but_not_rebuild_from_scratch(db, dsn, roles) -> None:
    version = seed_text_version(db)
    db.execute("INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, 'b-1-1-1', 'x')", [version])
    with as_role(dsn, roles["refresher"]) as refresher:
        drained = refresher.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall()
        assert drained == [("text", version)]
        refresher.execute("SELECT refresh_progress_materialized_views_concurrently()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            refresher.execute("SELECT refresh_progress_materialized_views_full()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            refresher.execute("INSERT INTO progress_refresh_queue (kind, version_id) VALUES ('text', %s)", [version])
    assert db.execute("SELECT covered_verses FROM mv_text_version_progress_summary").fetchall() == [(1,)]


def test_writing_functions_are_security_definer_with_fixed_search_path(db) -> None:
    loose = db.execute(
        """
        SELECT p.proname FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND (p.proname LIKE 'progress\\_sync\\_%' OR p.proname LIKE 'progress\\_rebuild\\_%'
                OR p.proname LIKE 'refresh\\_progress\\_%' OR p.proname LIKE '%drain%'
                OR p.proname LIKE 'progress\\_capture\\_%' OR p.proname = 'enqueue_progress_refresh')
           AND NOT (p.prosecdef AND EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%'))
        """
    ).fetchall()
    assert loose == []


def test_refresher_cannot_reach_the_full_rebuild_another_way(db, dsn, roles) -> None:
    with as_role(dsn, roles["refresher"]) as refresher:
        for call in ("SELECT progress_rebuild_all(false)", "SELECT progress_install_storage('table')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                refresher.execute(call)


def test_a_reader_granted_the_logical_views_reads_them(db, dsn) -> None:
    """Views read tables with their owner's rights but call functions with
    their reader's: a dashboard role given SELECT on the logical views (as
    the previous design's readers had) reads them, rows and all, and still
    cannot call a refresh."""
    version = seed_text_version(db)
    db.execute("INSERT INTO audio_versions (id, bible_version_id, name) VALUES (%s, 'b', 'A')", [uuid.uuid4()])
    db.execute("INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, 'b-1-1-1', 't')", [version])
    reader = f"dashboard_{uuid.uuid4().hex[:8]}"
    views = [r[0] for r in db.execute("SELECT logical_view FROM progress_read_model_definitions ORDER BY 1")]
    db.execute(f"CREATE ROLE {reader} LOGIN")
    try:
        db.execute(f"GRANT USAGE ON SCHEMA public TO {reader}")
        db.execute(f"GRANT SELECT ON {', '.join(views)} TO {reader}")
        with as_role(dsn, reader) as conn:
            rows = {view: conn.execute(f"SELECT count(*) FROM {view}").fetchone()[0] for view in views}
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT * FROM drain_progress_refresh_queue()")
        assert rows["text_version_progress_summary"] == 1
        assert rows["audio_version_progress_summary"] == 1
        assert rows["text_verse_coverage"] == 1
    finally:
        db.execute(f"DROP OWNED BY {reader}")
        db.execute(f"DROP ROLE {reader}")
