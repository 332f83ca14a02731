"""The base tables the apps write (SPEC section 2): what must exist before the
product installs on a database that already has them."""

from __future__ import annotations

import psycopg

from orchestration.errors import ProgressError

REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "language_entities": ("id", "name"),
    "bible_versions": ("id", "name"),
    "books": ("id", "bible_version_id", "book_number", "name"),
    "chapters": ("id", "book_id", "chapter_number", "total_verses"),
    "verses": ("id", "chapter_id", "verse_number", "global_order"),
    "audio_versions": ("id", "language_entity_id", "bible_version_id", "name", "created_at", "deleted_at"),
    "text_versions": ("id", "language_entity_id", "bible_version_id", "name", "created_at", "deleted_at"),
    "media_files": (
        "id",
        "audio_version_id",
        "media_type",
        "is_bible_audio",
        "upload_status",
        "publish_status",
        "chapter_id",
        "start_verse_id",
        "end_verse_id",
        "deleted_at",
    ),
    "media_files_verses": ("id", "media_file_id", "verse_id", "deleted_at"),
    "verse_texts": ("id", "text_version_id", "verse_id", "verse_text", "deleted_at"),
}


# The type family of each required column (SPEC section 2): what the product's
# SQL compares it with. Within a family any type does (varchar for text, an enum
# for a status, bigint for int).
UUID, TEXT, INTEGER, BOOLEAN, TIMESTAMP = "a uuid", "text", "an integer", "a boolean", "a timestamp"
FAMILIES: dict[str, set[str]] = {
    UUID: {"uuid"},
    TEXT: {"text", "character varying", "character", "USER-DEFINED", "citext"},
    INTEGER: {"smallint", "integer", "bigint", "numeric"},
    BOOLEAN: {"boolean"},
    TIMESTAMP: {"timestamp with time zone", "timestamp without time zone", "date"},
}
_UUID_COLUMNS = {"language_entity_id", "audio_version_id", "text_version_id", "media_file_id"}
_UUID_KEYED = {
    "language_entities",
    "audio_versions",
    "text_versions",
    "media_files",
    "media_files_verses",
    "verse_texts",
}
_INTEGER_COLUMNS = {"book_number", "chapter_number", "total_verses", "verse_number", "global_order"}


def expected_family(table: str, column: str) -> str:
    if column in _UUID_COLUMNS or (column == "id" and table in _UUID_KEYED):
        return UUID
    if column in _INTEGER_COLUMNS:
        return INTEGER
    if column == "is_bible_audio":
        return BOOLEAN
    if column in ("created_at", "deleted_at"):
        return TIMESTAMP
    return TEXT


def existing_columns(conn: psycopg.Connection) -> dict[str, dict[str, str]]:
    """Per base table, its columns and their types (information_schema's data_type;
    an enum's is USER-DEFINED, a domain's is its base type's)."""
    rows = conn.execute(
        """
        SELECT c.table_name, c.column_name,
               CASE WHEN c.data_type = 'USER-DEFINED' AND t.typtype <> 'e' THEN t.typname::text
                    ELSE c.data_type END
          FROM information_schema.columns c
          LEFT JOIN pg_namespace n ON n.nspname = c.udt_schema
          LEFT JOIN pg_type t ON t.typname = c.udt_name AND t.typnamespace = n.oid
         WHERE c.table_schema = current_schema() AND c.table_name = ANY(%s)
        """,
        [list(REQUIRED_COLUMNS)],
    ).fetchall()
    found: dict[str, dict[str, str]] = {}
    for table, column, data_type in rows:
        found.setdefault(table, {})[column] = data_type
    return found


def base_tables_present(conn: psycopg.Connection) -> bool:
    """True when the base tables exist with every required column; False when
    none exist (the product installs them); otherwise ProgressError naming what is missing."""
    found = existing_columns(conn)
    if not found:
        return False
    missing_tables = [table for table in REQUIRED_COLUMNS if table not in found]
    if missing_tables:
        raise ProgressError("the database has some base tables but is missing: " + ", ".join(missing_tables))
    missing_columns = [
        f"{table}.{column}"
        for table, columns in REQUIRED_COLUMNS.items()
        for column in columns
        if column not in found[table]
    ]
    if missing_columns:
        raise ProgressError("base tables are missing required columns: " + ", ".join(missing_columns))
    mistyped = [
        f"{table}.{column} is {found[table][column]}, not {expected_family(table, column)}"
        for table, columns in REQUIRED_COLUMNS.items()
        for column in columns
        if found[table][column] not in FAMILIES[expected_family(table, column)]
    ]
    if mistyped:
        raise ProgressError("base table columns of another type than the product reads: " + "; ".join(mistyped))
    return True
