"""The KJV structure loader and the demo seed, against a real PostgreSQL."""

from __future__ import annotations

import random

import psycopg

from orchestration.demo_data import (
    LANGUAGE_NAMES,
    MINI_BIBLE_VERSION_ID,
    Bible,
    DemoCounts,
    LanguageRow,
    mini_bible_rows,
    new_id,
    plan_versions,
    seed_demo,
)
from orchestration.structure import StructureCounts, load_bible_structure, read_versification

KJV = StructureCounts(books=66, chapters=1189, verses=31102)


def scalar(conn: psycopg.Connection, query: str, params: object = None) -> object:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def table_sizes(conn: psycopg.Connection) -> dict[str, int]:
    tables = (
        "language_entities",
        "bible_versions",
        "books",
        "chapters",
        "verses",
        "audio_versions",
        "text_versions",
        "media_files",
        "media_files_verses",
        "verse_texts",
    )
    return {table: int(scalar(conn, f"SELECT count(*) FROM {table}")) for table in tables}  # type: ignore[arg-type]


def test_versification_is_the_kjv_canon() -> None:
    rows = read_versification()
    assert len(rows) == 1189
    assert len({row.osis_code for row in rows}) == 66
    assert sum(row.verse_count for row in rows) == 31102
    rows.clear()  # callers get their own list: the cache stays intact
    assert len(read_versification()) == 1189


def test_kjv_load_counts_and_is_idempotent(db: psycopg.Connection) -> None:
    assert load_bible_structure(db) == KJV
    assert load_bible_structure(db) == KJV
    assert scalar(db, "SELECT count(*) FROM bible_versions") == 1
    assert scalar(db, "SELECT count(*) FROM books") == 66
    assert scalar(db, "SELECT count(*) FROM chapters") == 1189
    assert scalar(db, "SELECT count(*) FROM verses") == 31102
    assert scalar(db, "SELECT sum(total_verses) FROM chapters") == 31102
    assert scalar(db, "SELECT count(*) FROM verses WHERE id IN ('kjv-Gen-1-1', 'kjv-Ps-119-176', 'kjv-Rev-22-21')") == 3


def test_kjv_global_order_increases_in_canonical_order(db: psycopg.Connection) -> None:
    load_bible_structure(db)
    out_of_order = scalar(
        db,
        """
        SELECT count(*) FROM (
            SELECT v.global_order,
                   lag(v.global_order) OVER (ORDER BY b.book_number, c.chapter_number, v.verse_number) AS previous
              FROM verses v JOIN chapters c ON c.id = v.chapter_id JOIN books b ON b.id = c.book_id
        ) ordered
         WHERE ordered.previous >= ordered.global_order
        """,
    )
    assert out_of_order == 0


def test_chapters_limit_loads_a_small_bible(db: psycopg.Connection) -> None:
    counts = load_bible_structure(db, "kjv-small", chapters_limit=3)
    assert counts == StructureCounts(books=1, chapters=3, verses=31 + 25 + 24)
    assert scalar(db, "SELECT count(*) FROM chapters WHERE id = 'kjv-small-Gen-3'") == 1


def test_version_plans_are_deterministic() -> None:
    def plan() -> list:
        rng = random.Random(7)
        languages = [LanguageRow(new_id(rng), name) for name in LANGUAGE_NAMES]
        kjv = Bible.of("kjv", read_versification())
        mini = Bible.of(MINI_BIBLE_VERSION_ID, mini_bible_rows())
        return [version.row for version in plan_versions(rng, "Audio", 12, ("chapter files",), languages, kjv, mini)]

    assert plan() == plan()


def test_seed_demo_creates_the_advertised_mix_and_is_idempotent(db: psycopg.Connection) -> None:
    reported: list[tuple[int, int]] = []
    counts = seed_demo(db, progress=lambda done, total: reported.append((done, total)))

    assert counts.languages == 5 and counts.audio_versions == 12 and counts.text_versions == 12
    assert counts.media_files > 0 and counts.mappings > 0 and counts.verse_texts > 0
    assert reported[-1] == (24, 24)
    assert [done for done, _ in reported] == sorted(done for done, _ in reported)

    assert scalar(db, "SELECT count(*) FROM bible_versions WHERE id IN ('kjv', %s)", [MINI_BIBLE_VERSION_ID]) == 2
    mix = {
        "chapter file": "SELECT count(*) FROM media_files WHERE chapter_id IS NOT NULL",
        "range": "SELECT count(*) FROM media_files WHERE start_verse_id IS NOT NULL AND end_verse_id IS NOT NULL",
        "range without end": (
            "SELECT count(*) FROM media_files WHERE start_verse_id IS NOT NULL AND end_verse_id IS NULL"
        ),
        "reversed range": """SELECT count(*) FROM media_files f JOIN verses s ON s.id = f.start_verse_id
                             JOIN verses e ON e.id = f.end_verse_id WHERE e.global_order < s.global_order""",
        "range across books": """SELECT count(*) FROM media_files f JOIN verses s ON s.id = f.start_verse_id
                                 JOIN chapters sc ON sc.id = s.chapter_id JOIN verses e ON e.id = f.end_verse_id
                                 JOIN chapters ec ON ec.id = e.chapter_id WHERE sc.book_id <> ec.book_id""",
        "live mapping": "SELECT count(*) FROM media_files_verses WHERE deleted_at IS NULL",
        "soft-deleted mapping": "SELECT count(*) FROM media_files_verses WHERE deleted_at IS NOT NULL",
        "unpublished file": "SELECT count(*) FROM media_files WHERE publish_status = 'pending'",
        "failed upload": "SELECT count(*) FROM media_files WHERE upload_status = 'failed'",
        "video": "SELECT count(*) FROM media_files WHERE media_type = 'video'",
        "not bible audio": "SELECT count(*) FROM media_files WHERE is_bible_audio IS NOT TRUE",
        "soft-deleted file": "SELECT count(*) FROM media_files WHERE deleted_at IS NOT NULL",
        "deleted audio version": "SELECT count(*) FROM audio_versions WHERE deleted_at IS NOT NULL",
        "deleted text version": "SELECT count(*) FROM text_versions WHERE deleted_at IS NOT NULL",
        "soft-deleted verse text": "SELECT count(*) FROM verse_texts WHERE deleted_at IS NOT NULL",
        "mini bible version": "SELECT count(*) FROM audio_versions WHERE bible_version_id = 'demo-mini'",
    }
    missing = [case for case, query in mix.items() if not scalar(db, query)]
    assert missing == []

    before = table_sizes(db)
    assert seed_demo(db) == counts
    assert table_sizes(db) == before


def test_seed_demo_progress_after_full_refresh(db: psycopg.Connection) -> None:
    seed_demo(db)
    db.execute("SELECT refresh_progress_materialized_views_full()")

    assert scalar(db, "SELECT count(*) FROM mv_audio_chapter_coverage WHERE is_complete") > 0  # type: ignore[operator]
    assert scalar(db, "SELECT count(*) FROM mv_text_chapter_coverage WHERE is_complete") > 0  # type: ignore[operator]
    partial = "SELECT count(*) FROM {} WHERE verse_fraction > 0 AND verse_fraction < 1"
    assert scalar(db, partial.format("mv_audio_version_progress_summary")) > 0  # type: ignore[operator]
    assert scalar(db, partial.format("mv_text_version_progress_summary")) > 0  # type: ignore[operator]
    # Deleted versions have no summary rows; every live one has.
    assert scalar(db, "SELECT count(*) FROM mv_audio_version_progress_summary") == 11
    assert scalar(db, "SELECT count(*) FROM mv_text_version_progress_summary") == 11


def test_small_seed_fits_its_arguments(db: psycopg.Connection) -> None:
    counts = seed_demo(db, audio_versions=2, text_versions=1, seed=3)
    assert counts == DemoCounts(
        languages=5,
        audio_versions=2,
        text_versions=1,
        media_files=counts.media_files,
        mappings=counts.mappings,
        verse_texts=31102,  # a single text version is the complete bible
    )
