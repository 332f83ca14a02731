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


def existing_columns(conn: psycopg.Connection) -> dict[str, set[str]]:
    rows = conn.execute(
        """
        SELECT c.table_name, c.column_name
          FROM information_schema.columns c
         WHERE c.table_schema = current_schema() AND c.table_name = ANY(%s)
        """,
        [list(REQUIRED_COLUMNS)],
    ).fetchall()
    found: dict[str, set[str]] = {}
    for table, column in rows:
        found.setdefault(table, set()).add(column)
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
    return True
