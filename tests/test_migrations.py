"""Migrations: applied from zero they produce exactly the schema this release
expects (tests/schema.txt), re-applying them changes nothing, and a second
migrate is a no-op."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from orchestration.db.connection import connect
from orchestration.db.migrations import load_migrations, migrate

SNAPSHOT = Path(__file__).with_name("schema.txt")
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
