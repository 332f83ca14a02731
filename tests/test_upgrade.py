"""Upgrades between our own releases: a database migrated by release 0.1.0
or by the release before this one (both built from this repository's
history), with data and queued changes, upgrades with today's migrate and
drains to read models equal to the logical views; a new read model is one new file; a changed definition is rebuilt
beside the old one and swapped in, and nothing else is touched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from builders import assert_read_models_match, drain
from orchestration.db.connection import connect
from orchestration.db.migrations import migrate
from orchestration.demo_data import seed_demo
from orchestration.errors import ProgressError
from orchestration.read_models import READ_MODELS

ROOT = Path(__file__).resolve().parents[1]
RELEASE_0_1_0 = "39e72c6"
# The release before this one: chapter-scoped queue entries, migrations 003-007.
PREVIOUS_RELEASE = "d1d9cc4"
LOCK_KEY = 7_370_214_001


def release_files(commit: str) -> list[tuple[str, str]]:
    """(file name, text) of the sql/ folder at a commit of this repository."""
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "sql/"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        pytest.fail(f"the upgrade test needs this repository's history (commit {commit}): {listing.stderr.strip()}")
    return [
        (
            Path(name).name,
            subprocess.run(
                ["git", "show", f"{commit}:{name}"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout,
        )
        for name in listing.stdout.split()
    ]


def migrate_as_release_0_1_0(conn: psycopg.Connection, strategy: str = "table") -> None:
    """What `progress-refresh migrate` of release 0.1.0 did on an empty database."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        conn.execute("SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)")
        conn.execute("SELECT set_config('progress.initial_strategy', %s, true)", [strategy])
        conn.execute(
            "CREATE TABLE progress_schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for file_name, sql in release_files(RELEASE_0_1_0):
            conn.execute(sql)
            conn.execute(
                "INSERT INTO progress_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                [int(file_name[:3]), file_name[4:-4], hashlib.sha256(sql.encode()).hexdigest()],
            )
        conn.execute("SELECT progress_install_refresh_functions()")
        conn.execute(
            "INSERT INTO progress_read_models (name, kind, level, logical_view)"
            " SELECT stored_name, kind, 'level', logical_view FROM progress_read_model_definitions"
        )
        conn.execute("SELECT progress_apply_grants()")


def relfilenodes(conn: psycopg.Connection) -> dict[str, int]:
    rows = conn.execute(
        "SELECT relname, relfilenode FROM pg_class WHERE relname = ANY (%s)", [[m.name for m in READ_MODELS]]
    )
    return dict(rows.fetchall())


@pytest.fixture
def release_0_1_0_dsn(empty_dsn: str) -> str:
    """Release 0.1.0's schema with the demo data, populated, and changes queued."""
    with connect(empty_dsn) as conn:
        migrate_as_release_0_1_0(conn)
        seed_demo(conn, audio_versions=3, text_versions=3)
        conn.execute("SELECT refresh_progress_materialized_views_full()")
        conn.execute("UPDATE verse_texts SET deleted_at = now() WHERE id IN (SELECT id FROM verse_texts LIMIT 5)")
        conn.execute("UPDATE media_files SET deleted_at = now() WHERE id IN (SELECT id FROM media_files LIMIT 2)")
        assert conn.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0] > 0  # type: ignore[index]
    return empty_dsn


@pytest.mark.parametrize("strategy", ["table", "matview"])
def test_a_release_0_1_0_database_upgrades_and_drains_to_equal_views(empty_dsn: str, strategy: str) -> None:
    with connect(empty_dsn) as conn:
        migrate_as_release_0_1_0(conn, strategy)
        seed_demo(conn, audio_versions=3, text_versions=3)
        conn.execute("SELECT refresh_progress_materialized_views_full()")
        conn.execute("UPDATE verse_texts SET deleted_at = now() WHERE id IN (SELECT id FROM verse_texts LIMIT 5)")
        queued = set(conn.execute("SELECT kind, version_id FROM progress_refresh_queue").fetchall())
        assert queued
        before = relfilenodes(conn)

        changes = migrate(conn)

        assert "003_product_tables" in changes
        # Every definition changed since (the verse levels leave texts and
        # mappings without a verse out, the summaries declare additive counts),
        # so every read model is rebuilt beside and swapped in, its downstreams
        # with it. The queued changes wait for a drain either way.
        after = relfilenodes(conn)
        rebuilt = {name for name in before if after[name] != before[name]}
        assert rebuilt == set(before)
        assert set(conn.execute("SELECT kind, version_id FROM progress_refresh_queue").fetchall()) == queued
        assert conn.execute("SELECT to_regclass('progress_read_models')").fetchone() == (None,)
        drain(conn)
        assert_read_models_match(conn)
        assert migrate(conn) == []


def test_the_previous_release_upgrades_with_chapter_scoped_changes_queued(empty_dsn: str, tmp_path: Path) -> None:
    """Release d1d9cc4 migrates and populates, then changes queue chapter scopes;
    today's migrate keeps every queued entry and its scope, and a drain ends
    with read models equal to their views."""
    release = tmp_path / "release"
    release.mkdir()
    archive = subprocess.run(
        ["git", "archive", PREVIOUS_RELEASE, "orchestration", "sql"], cwd=ROOT, capture_output=True
    )
    if archive.returncode != 0:
        pytest.fail(f"the upgrade test needs this repository's history (commit {PREVIOUS_RELEASE})")
    subprocess.run(["tar", "-x", "-C", str(release)], input=archive.stdout, check=True)
    assert migrate_with(release, empty_dsn).returncode == 0
    with connect(empty_dsn) as conn:
        seed_demo(conn, audio_versions=3, text_versions=3)
        conn.execute("SELECT refresh_progress_materialized_views_full()")
        conn.execute("DELETE FROM verse_texts WHERE id IN (SELECT id FROM verse_texts ORDER BY id LIMIT 3)")
        conn.execute(
            "UPDATE media_files SET publish_status = 'pending'"
            " WHERE id = (SELECT id FROM media_files WHERE chapter_id IS NOT NULL ORDER BY id LIMIT 1)"
        )
        queued = conn.execute(
            "SELECT kind, version_id, generation, chapter_ids FROM progress_refresh_queue ORDER BY 1, 2"
        ).fetchall()
        assert any(scope for *_, scope in queued), "the release queued chapter scopes"

        changes = migrate(conn)

        assert "009_additive_counts" in changes
        assert (
            conn.execute(
                "SELECT kind, version_id, generation, chapter_ids FROM progress_refresh_queue ORDER BY 1, 2"
            ).fetchall()
            == queued
        )
        drain(conn)
        assert_read_models_match(conn)
        assert migrate(conn) == []


def copy_of_release(tmp_path: Path) -> Path:
    """This release's code and SQL in a folder of its own, to edit."""
    for folder in ("orchestration", "sql"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def migrate_with(copy: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration", "migrate"],
        cwd=copy,
        env={**os.environ, "PROGRESS_DATABASE_URL": dsn, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        timeout=300,
    )


NEW_READ_MODEL = """-- Per text version and book: how many of its chapters have any text.
--
-- kind: text
-- level: book
-- logical view: text_book_chapters_started
-- key: text_version_id, book_id
-- upstreams: mv_text_chapter_coverage
-- base tables: chapters
SELECT cc.text_version_id, c.book_id, count(*) AS chapters_started
  FROM mv_text_chapter_coverage cc
  JOIN chapters c ON c.id = cc.chapter_id
 GROUP BY cc.text_version_id, c.book_id
"""


def test_adding_a_read_model_is_one_file_and_touches_nothing_else(release_0_1_0_dsn: str, tmp_path: Path) -> None:
    with connect(release_0_1_0_dsn) as conn:
        migrate(conn)
        drain(conn)
        before = relfilenodes(conn)
    copy = copy_of_release(tmp_path)
    (copy / "sql" / "read_models" / "mv_text_book_chapters_started.sql").write_text(NEW_READ_MODEL)

    result = migrate_with(copy, release_0_1_0_dsn)

    assert result.returncode == 0, result.stderr
    assert "added mv_text_book_chapters_started, populated" in result.stdout
    with connect(release_0_1_0_dsn) as conn:
        assert relfilenodes(conn) == before
        differing = conn.execute(
            "SELECT count(*) FROM ((TABLE mv_text_book_chapters_started EXCEPT TABLE text_book_chapters_started)"
            " UNION ALL (TABLE text_book_chapters_started EXCEPT TABLE mv_text_book_chapters_started)) d"
        ).fetchone()
        assert differing == (0,)
        assert conn.execute("SELECT count(*) FROM mv_text_book_chapters_started").fetchone()[0] > 0  # type: ignore[index]
        # Its refresh is generated like every other's: a text change reaches it through a drain.
        assert conn.execute("SELECT to_regprocedure('progress_sync_text_book_chapters_started(uuid)')").fetchone()[0]


def test_a_changed_definition_is_rebuilt_beside_and_swapped_in_with_its_downstreams(
    release_0_1_0_dsn: str, tmp_path: Path
) -> None:
    with connect(release_0_1_0_dsn) as conn:
        migrate(conn)
        drain(conn)
        before = relfilenodes(conn)
    copy = copy_of_release(tmp_path)
    path = copy / "sql" / "read_models" / "mv_text_chapter_coverage.sql"
    # Chapters count as complete once all but one verse have text.
    path.write_text(
        path.read_text().replace(
            "count(*) = c.total_verses AS is_complete", "count(*) >= c.total_verses - 1 AS is_complete"
        )
    )

    result = migrate_with(copy, release_0_1_0_dsn)

    assert result.returncode == 0, result.stderr
    with connect(release_0_1_0_dsn) as conn:
        after = relfilenodes(conn)
        rebuilt = {name for name in before if after[name] != before[name]}
        assert rebuilt == {
            "mv_text_chapter_coverage",
            "mv_text_book_coverage",
            "mv_text_version_progress_summary",
            "language_entity_best_text_version",
        }
        assert_read_models_match(conn)


def test_an_edited_released_migration_is_named(release_0_1_0_dsn: str) -> None:
    with connect(release_0_1_0_dsn) as conn:
        migrate(conn)
        conn.execute("UPDATE progress_schema_migrations SET checksum = 'edited' WHERE version = 3")
        with pytest.raises(ProgressError, match=r"sql/migrations/003_product_tables\.sql changed after it was applied"):
            migrate(conn)


def test_a_database_of_a_newer_release_is_refused(release_0_1_0_dsn: str) -> None:
    with connect(release_0_1_0_dsn) as conn:
        migrate(conn)
        conn.execute("INSERT INTO progress_schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')")
        with pytest.raises(ProgressError, match="newer release"):
            migrate(conn)
