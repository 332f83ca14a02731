"""Migrations: applied from zero they produce exactly the schema this release
expects (tests/schema.txt), re-applying them changes nothing, and a second
migrate is a no-op."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg

from orchestration.db.connection import connect
from orchestration.db.migrations import load_migrations, migrate

SNAPSHOT = Path(__file__).with_name("schema.txt")
# One generated refresh function, checked in so a reviewer reads the real SQL a
# read-model file turns into (and sees it change when the generator changes).
GENERATED = Path(__file__).with_name("generated")
GENERATED_FUNCTIONS = ("progress_sync_text_chapter_coverage(uuid)", "progress_rows_text_chapter_coverage(uuid)")
UPDATE_ENV = "PROGRESS_UPDATE_SCHEMA_SNAPSHOT"

SCHEMA_QUERIES = {
    "columns": """
        SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'm')
           AND a.attnum > 0 AND NOT a.attisdropped""",
    "indexes": """
        SELECT regexp_replace(pg_get_indexdef(i.indexrelid), ' ON public\\.', ' ON ')
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace = 'public'::regnamespace""",
    "functions": """
        SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
               || CASE WHEN p.prosecdef THEN ' security definer' ELSE '' END
               || coalesce(' ' || array_to_string(p.proconfig, ' '), '')
          FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace""",
    "triggers": """
        SELECT c.relname || ' ' || t.tgname
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace""",
}


def schema_of(conn: psycopg.Connection) -> str:
    lines = []
    for section, query in SCHEMA_QUERIES.items():
        lines.append(f"# {section}")
        lines.extend(sorted(row[0] for row in conn.execute(query)))
    return "\n".join(lines) + "\n"


def test_migrations_from_zero_give_the_expected_schema(empty_dsn: str) -> None:
    with connect(empty_dsn) as conn:
        migrate(conn)
        actual = schema_of(conn)
    if os.environ.get(UPDATE_ENV):
        SNAPSHOT.write_text(actual)
    assert actual == SNAPSHOT.read_text(), (
        f"the schema changed: review the difference, then regenerate with {UPDATE_ENV}=1"
    )


def test_migrate_again_is_a_no_op_and_each_migration_is_idempotent(empty_dsn: str) -> None:
    with connect(empty_dsn) as conn:
        migrate(conn)
        before = schema_of(conn)
        assert migrate(conn) == []
        with conn.transaction():
            conn.execute("SELECT set_config('search_path', 'public, pg_temp', true)")
            for migration in load_migrations():
                conn.execute(migration.sql)  # every file runs again on a migrated database
            conn.execute("SELECT progress_apply_grants()")
        assert schema_of(conn) == before


def test_existing_base_tables_with_enum_statuses_work(empty_dsn: str) -> None:
    """Supabase projects often use enums for the status columns; extra columns with defaults are fine too."""
    base = load_migrations()[0].sql
    enums = {
        "media_type": ("media_type_enum", "'audio', 'video'"),
        "upload_status": ("upload_status_enum", "'pending', 'uploading', 'completed', 'failed'"),
        "publish_status": ("publish_status_enum", "'pending', 'published', 'archived'"),
    }
    with connect(empty_dsn) as conn:
        conn.execute(base)
        for column, (type_name, values) in enums.items():
            conn.execute(f"CREATE TYPE {type_name} AS ENUM ({values})")
            conn.execute(f"ALTER TABLE media_files DROP CONSTRAINT IF EXISTS media_files_{column}_check")
            conn.execute(f"ALTER TABLE media_files ALTER COLUMN {column} DROP DEFAULT")
            conn.execute(f"ALTER TABLE media_files ALTER COLUMN {column} TYPE {type_name} USING {column}::{type_name}")
        conn.execute("ALTER TABLE media_files ADD COLUMN duration_seconds int NOT NULL DEFAULT 0")
        migrate(conn)
        conn.execute("INSERT INTO bible_versions VALUES ('b', 'B')")
        conn.execute("INSERT INTO books VALUES ('b-1', 'b', 1, 'One')")
        conn.execute("INSERT INTO chapters VALUES ('b-1-1', 'b-1', 1, 2)")
        conn.execute("INSERT INTO verses VALUES ('b-1-1-1', 'b-1-1', 1, 1), ('b-1-1-2', 'b-1-1', 2, 2)")
        conn.execute("INSERT INTO audio_versions (id, bible_version_id, name) VALUES (gen_random_uuid(), 'b', 'A')")
        conn.execute(
            "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status, publish_status,"
            " chapter_id) SELECT id, 'audio', true, 'completed', 'published', 'b-1-1' FROM audio_versions"
        )
        assert conn.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] == 1
        while conn.execute("SELECT * FROM drain_progress_refresh_queue()").fetchall():
            pass
        assert conn.execute(
            "SELECT covered_verses, verse_fraction FROM mv_audio_version_progress_summary"
        ).fetchall() == [(2, 1)]


def test_generated_refresh_functions_match_their_checked_in_copies(db: psycopg.Connection) -> None:
    for signature in GENERATED_FUNCTIONS:
        path = GENERATED / f"{signature.split('(')[0]}.sql"
        actual = db.execute("SELECT pg_get_functiondef(%s::regprocedure)", [signature]).fetchone()[0]  # type: ignore[index]
        if os.environ.get(UPDATE_ENV):
            GENERATED.mkdir(exist_ok=True)
            path.write_text(actual)
        assert actual == path.read_text(), f"{signature} changed: review it, then regenerate with {UPDATE_ENV}=1"


def test_switching_the_storage_strategy_keeps_readers_grants(db) -> None:  # type: ignore[no-untyped-def]
    """The read models are dropped and made anew as materialized views (and back):
    a dashboard role's SELECT, on a whole read model or on some columns, stays."""
    role = f"dashboard_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role}")
    try:
        db.execute(f"GRANT SELECT ON mv_text_chapter_coverage TO {role}")
        db.execute(f"GRANT SELECT (audio_version_id, verse_fraction) ON mv_audio_version_progress_summary TO {role}")
        for strategy, kind in (("matview", "m"), ("table", "r")):
            assert "storage strategy " + strategy in migrate(db, strategy=strategy)
            assert db.execute(
                "SELECT relkind::text FROM pg_class WHERE relname = 'mv_text_chapter_coverage'"
            ).fetchone() == (kind,)
            granted = db.execute(
                "SELECT has_table_privilege(%(r)s, 'mv_text_chapter_coverage', 'SELECT'),"
                " has_column_privilege(%(r)s, 'mv_audio_version_progress_summary', 'verse_fraction', 'SELECT'),"
                " has_column_privilege(%(r)s, 'mv_audio_version_progress_summary', 'total_verses', 'SELECT')",
                {"r": role},
            ).fetchone()
            assert granted == (True, True, False), strategy
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")
