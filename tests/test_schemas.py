"""The column schemas Dagster shows are the database's: every column of every
read model and base table, its type and nullability, as a fresh migrate creates them."""

from __future__ import annotations

import dagster as dg

from orchestration.definitions import defs
from orchestration.read_models import READ_MODELS
from orchestration.schemas import BASE_TABLE_COLUMNS, READ_MODEL_COLUMNS


def columns_in_database(conn, table: str) -> list[tuple[str, str, bool]]:
    return conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [table],
    ).fetchall()


def test_column_schemas_match_the_migrated_database(db):
    assert set(READ_MODEL_COLUMNS) == {model.name for model in READ_MODELS}
    for table, columns in {**READ_MODEL_COLUMNS, **BASE_TABLE_COLUMNS}.items():
        declared = [(name, type_, not_null) for name, type_, not_null, _ in columns]
        assert declared == columns_in_database(db, table), table


def test_every_table_asset_carries_its_column_schema():
    graph = defs.get_repository_def().asset_graph
    for table, columns in {**READ_MODEL_COLUMNS, **BASE_TABLE_COLUMNS}.items():
        schema = graph.get(dg.AssetKey(table)).metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == [c[0] for c in columns], table
    summary = graph.get(dg.AssetKey("mv_text_version_progress_summary")).metadata["dagster/column_schema"]
    fraction = next(c for c in summary.columns if c.name == "chapter_fraction")
    assert fraction.type == "numeric" and "complete_chapters / total_chapters" in (fraction.description or "")
