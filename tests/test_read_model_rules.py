"""One test per rule of SPEC section 3, on small hand-built data, with the
expected read-model rows written out; every test also checks that each mv_*
equals its logical view after the drain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

import builders as b
from orchestration.read_models import BY_NAME

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def frac(db: psycopg.Connection, numerator: int, denominator: int) -> Decimal | None:
    """numerator / denominator as the spec defines fractions (unrounded numeric, NULL on 0)."""
    row = db.execute("SELECT %s::numeric / nullif(%s, 0)", [numerator, denominator]).fetchone()
    assert row is not None
    return row[0]


def refresh(db: psycopg.Connection) -> None:
    b.drain(db)
    b.assert_read_models_match(db)
    b.assert_queue_empty(db)


def uid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def cover(db: psycopg.Connection, kind: str, version: uuid.UUID, verses: list[str]) -> None:
    """Coverage of exactly these verses: a file with mappings (audio) or verse texts (text)."""
    if kind == "audio":
        b.media_file(db, version, verses=verses)
    else:
        b.verse_texts(db, version, verses)


def new_version(
    db: psycopg.Connection, kind: str, bible_version_id: str | None, language_entity_id: uuid.UUID | None, **kwargs
) -> uuid.UUID:
    make = b.audio_version if kind == "audio" else b.text_version
    return make(db, bible_version_id, language_entity_id, **kwargs)


def audio_summary(
    db, version, covered, total_verses, chapters_with_audio, total_chapters, books_complete, total_books
) -> dict:
    return {
        "audio_version_id": version,
        "covered_verses": covered,
        "total_verses": total_verses,
        "verse_fraction": frac(db, covered, total_verses),
        "chapters_with_audio": chapters_with_audio,
        "total_chapters": total_chapters,
        "chapter_fraction": frac(db, chapters_with_audio, total_chapters),
        "books_complete": books_complete,
        "total_books": total_books,
        "book_fraction": frac(db, books_complete, total_books),
    }


def text_summary(
    db, version, covered, total_verses, complete_chapters, total_chapters, books_complete, total_books
) -> dict:
    return {
        "text_version_id": version,
        "covered_verses": covered,
        "total_verses": total_verses,
        "verse_fraction": frac(db, covered, total_verses),
        "complete_chapters": complete_chapters,
        "total_chapters": total_chapters,
        "chapter_fraction": frac(db, complete_chapters, total_chapters),
        "books_complete": books_complete,
        "total_books": total_books,
        "book_fraction": frac(db, books_complete, total_books),
    }


# Audio coverage of one file ------------------------------------------------------


def test_chapter_file_covers_all_verses_of_its_chapter(db):
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    le = b.language(db)
    v = b.audio_version(db, "A", le)
    b.media_file(db, v, chapter=A.chapter("GEN", 1))
    refresh(db)

    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-1-3"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (3, 3, True, True)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (1, 2, False), "A-EXO": (0, 1, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 7, 1, 3, 0, 2)
    assert b.best(db, "audio", le) == v

    b.media_file(db, v, chapter=A.chapter("GEN", 2))
    refresh(db)
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (3, 3, True, True), "A-GEN-2": (2, 2, True, True)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (2, 2, True), "A-EXO": (0, 1, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 5, 7, 2, 3, 1, 2)


def test_verse_range_within_a_chapter(db):
    A = b.bible(db, "A", {"GEN": [5]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, start=A.verse("GEN", 1, 2), end=A.verse("GEN", 1, 4))
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-2", "A-GEN-1-3", "A-GEN-1-4"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (3, 5, True, False)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (0, 1, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 5, 1, 1, 0, 1)


def test_range_across_a_book_boundary(db):
    A = b.bible(db, "A", {"GEN": [2, 3], "EXO": [2, 2]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, start=A.verse("GEN", 2, 2), end=A.verse("EXO", 1, 1))
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-2-2", "A-GEN-2-3", "A-EXO-1-1"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-2": (2, 3, True, False), "A-EXO-1": (1, 2, True, False)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (0, 2, False), "A-EXO": (0, 2, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 9, 2, 4, 0, 2)


def test_range_with_null_end_covers_the_start_verse_alone(db):
    A = b.bible(db, "A", {"GEN": [3]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, start=A.verse("GEN", 1, 2), end=None)
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-2"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (1, 3, True, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 1, 3, 1, 1, 0, 1)


def test_reversed_range_covers_nothing(db):
    A = b.bible(db, "A", {"GEN": [3], "EXO": [2]})
    le = b.language(db)
    v = b.audio_version(db, "A", le)
    b.media_file(db, v, start=A.verse("GEN", 1, 3), end=A.verse("GEN", 1, 1))
    b.media_file(db, v, start=A.verse("EXO", 1, 1), end=A.verse("GEN", 1, 3))
    refresh(db)
    assert b.verse_ids(db, "audio", v) == set()
    assert b.chapter_rows(db, "audio", v) == {}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (0, 1, False), "A-EXO": (0, 1, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 0, 5, 0, 2, 0, 2)
    assert b.best(db, "audio", le) == v


def test_range_starting_in_another_bible_version_takes_the_start_verses_bible(db):
    # Same versification and global orders in both bibles.
    A = b.bible(db, "A", {"GEN": [3], "EXO": [2]})
    B = b.bible(db, "B", {"GEN": [3], "EXO": [2]})
    v = b.audio_version(db, "A")
    # start and end in B: B's verses between the two orders
    b.media_file(db, v, start=B.verse("GEN", 1, 2), end=B.verse("GEN", 1, 3))
    # start in B, end in A: still B's verses between the two orders
    w = b.audio_version(db, "A")
    b.media_file(db, w, start=B.verse("GEN", 1, 3), end=A.verse("EXO", 1, 2))
    refresh(db)

    assert b.verse_ids(db, "audio", v) == {"B-GEN-1-2", "B-GEN-1-3"}
    assert b.chapter_rows(db, "audio", v) == {"B-GEN-1": (2, 3, True, False)}
    # book rows: only the books of the version's own bible version, untouched
    assert b.book_rows(db, "audio", v) == {"A-GEN": (0, 1, False), "A-EXO": (0, 1, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 0, 5, 0, 2, 0, 2)

    assert b.verse_ids(db, "audio", w) == {"B-GEN-1-3", "B-EXO-1-1", "B-EXO-1-2"}
    # a complete chapter in the other bible is complete in the chapter rows...
    assert b.chapter_rows(db, "audio", w) == {"B-GEN-1": (1, 3, True, False), "B-EXO-1": (2, 2, True, True)}
    # ...but neither the book rows nor the summary count it
    assert b.book_rows(db, "audio", w) == {"A-GEN": (0, 1, False), "A-EXO": (0, 1, False)}
    assert b.summary(db, "audio", w) == audio_summary(db, w, 0, 5, 0, 2, 0, 2)


def test_range_whose_end_lies_in_another_bible_version(db):
    A = b.bible(db, "A", {"GEN": [3], "EXO": [2]})
    B = b.bible(db, "B", {"GEN": [3], "EXO": [2]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, start=A.verse("GEN", 1, 2), end=B.verse("EXO", 1, 1))
    w = b.audio_version(db, "A")  # the end's order lies before the start's: nothing
    b.media_file(db, w, start=A.verse("EXO", 1, 1), end=B.verse("GEN", 1, 1))
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-2", "A-GEN-1-3", "A-EXO-1-1"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (2, 3, True, False), "A-EXO-1": (1, 2, True, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 5, 2, 2, 0, 2)
    assert b.verse_ids(db, "audio", w) == set()
    assert b.summary(db, "audio", w) == audio_summary(db, w, 0, 5, 0, 2, 0, 2)


def test_mappings_count_unless_soft_deleted_and_may_point_into_another_bible(db):
    A = b.bible(db, "A", {"GEN": [3]})
    B = b.bible(db, "B", {"GEN": [2]})
    v = b.audio_version(db, "A")
    f = b.media_file(db, v, verses=[A.verse("GEN", 1, 1), A.verse("GEN", 1, 3), B.verse("GEN", 1, 1)])
    b.mapping(db, f, A.verse("GEN", 1, 2), deleted_at=NOW)
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-1", "A-GEN-1-3", "B-GEN-1-1"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (2, 3, True, False), "B-GEN-1": (1, 2, True, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 2, 3, 1, 1, 0, 1)

    db.execute(
        "UPDATE media_files_verses SET deleted_at = NULL WHERE media_file_id = %s AND verse_id = %s",
        [f, A.verse("GEN", 1, 2)],
    )
    db.execute(
        "UPDATE media_files_verses SET deleted_at = now() WHERE media_file_id = %s AND verse_id = %s",
        [f, B.verse("GEN", 1, 1)],
    )
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-1-3"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (3, 3, True, True)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 3, 1, 1, 1, 1)


def test_coverage_of_several_files_is_a_union_of_distinct_verses(db):
    A = b.bible(db, "A", {"GEN": [4, 1]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, start=A.verse("GEN", 1, 1), end=A.verse("GEN", 1, 2))
    b.media_file(db, v, verses=[A.verse("GEN", 1, 2), A.verse("GEN", 1, 3)])
    b.media_file(db, v, chapter=A.chapter("GEN", 2), verses=[A.verse("GEN", 2, 1)])
    refresh(db)
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (3, 4, True, False), "A-GEN-2": (1, 1, True, True)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (1, 2, False)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 4, 5, 2, 2, 0, 1)

    b.media_file(db, v, start=A.verse("GEN", 1, 4))
    refresh(db)
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-1": (4, 4, True, True), "A-GEN-2": (1, 1, True, True)}
    assert b.book_rows(db, "audio", v) == {"A-GEN": (2, 2, True)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 5, 5, 2, 2, 1, 1)


NOT_LIVE = [
    ("publish_status", "pending"),
    ("publish_status", "archived"),
    ("upload_status", "pending"),
    ("upload_status", "uploading"),
    ("upload_status", "failed"),
    ("media_type", "video"),
    ("is_bible_audio", None),
    ("is_bible_audio", False),
    ("deleted_at", NOW),
]


@pytest.mark.parametrize(("column", "value"), NOT_LIVE, ids=[f"{c}={v}" for c, v in NOT_LIVE])
def test_only_live_bible_audio_counts(db, column, value):
    A = b.bible(db, "A", {"GEN": [2, 1]})
    v = b.audio_version(db, "A")
    b.media_file(db, v, chapter=A.chapter("GEN", 2))  # always live
    f = b.media_file(db, v, chapter=A.chapter("GEN", 1), verses=[A.verse("GEN", 2, 1)])
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-2-1"}
    live = db.execute(f"SELECT {column} FROM media_files WHERE id = %s", [f]).fetchone()[0]

    db.execute(f"UPDATE media_files SET {column} = %s WHERE id = %s", [value, f])
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-2-1"}
    assert b.chapter_rows(db, "audio", v) == {"A-GEN-2": (1, 1, True, True)}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 1, 3, 1, 2, 0, 1)

    db.execute(f"UPDATE media_files SET {column} = %s WHERE id = %s", [live, f])
    refresh(db)
    assert b.verse_ids(db, "audio", v) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-2-1"}
    assert b.summary(db, "audio", v) == audio_summary(db, v, 3, 3, 2, 2, 1, 1)

    # inserted not live in the first place
    w = b.audio_version(db, "A")
    b.media_file(db, w, chapter=A.chapter("GEN", 1), **{column: value})
    refresh(db)
    assert b.verse_ids(db, "audio", w) == set()
    assert b.summary(db, "audio", w) == audio_summary(db, w, 0, 3, 0, 2, 0, 1)


def test_file_moved_to_another_audio_version_refreshes_both(db):
    A = b.bible(db, "A", {"GEN": [3, 1]})
    le = b.language(db)
    v1 = b.audio_version(db, "A", le, created_at=NOW)
    v2 = b.audio_version(db, "A", le, created_at=NOW)
    f = b.media_file(db, v1, chapter=A.chapter("GEN", 1))
    b.media_file(db, v2, chapter=A.chapter("GEN", 2))
    refresh(db)
    assert b.summary(db, "audio", v1) == audio_summary(db, v1, 3, 4, 1, 2, 0, 1)
    assert b.summary(db, "audio", v2) == audio_summary(db, v2, 1, 4, 1, 2, 0, 1)
    assert b.best(db, "audio", le) == v1

    db.execute("UPDATE media_files SET audio_version_id = %s WHERE id = %s", [v2, f])
    refresh(db)
    assert b.verse_ids(db, "audio", v1) == set()
    assert b.chapter_rows(db, "audio", v1) == {}
    assert b.book_rows(db, "audio", v1) == {"A-GEN": (0, 2, False)}
    assert b.summary(db, "audio", v1) == audio_summary(db, v1, 0, 4, 0, 2, 0, 1)
    assert b.verse_ids(db, "audio", v2) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-1-3", "A-GEN-2-1"}
    assert b.book_rows(db, "audio", v2) == {"A-GEN": (2, 2, True)}
    assert b.summary(db, "audio", v2) == audio_summary(db, v2, 4, 4, 2, 2, 1, 1)
    assert b.best(db, "audio", le) == v2

    db.execute("UPDATE media_files SET audio_version_id = NULL WHERE id = %s", [f])
    refresh(db)
    assert b.summary(db, "audio", v2) == audio_summary(db, v2, 1, 4, 1, 2, 0, 1)


# Versions -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_deleted_versions_have_no_rows(db, kind):
    A = b.bible(db, "A", {"GEN": [2]})
    le = b.language(db)
    v = new_version(db, kind, "A", le)
    cover(db, kind, v, A.all_verses())
    born_deleted = new_version(db, kind, "A", le, deleted_at=NOW)
    cover(db, kind, born_deleted, A.all_verses())
    refresh(db)
    expected = {"verse": 2, "chapter": 1, "book": 1, "summary": 1, "best": 1}

    def counts(version):
        return {BY_NAME[name].level: n for name, n in b.rows_of_version(db, kind, version).items()}

    assert counts(v) == expected
    assert counts(born_deleted) == dict.fromkeys(expected, 0)

    db.execute(f"UPDATE {kind}_versions SET deleted_at = now() WHERE id = %s", [v])
    refresh(db)
    assert counts(v) == dict.fromkeys(expected, 0)
    assert b.best(db, kind, le) is None

    db.execute(f"UPDATE {kind}_versions SET deleted_at = NULL WHERE id = %s", [v])
    refresh(db)
    assert counts(v) == expected
    assert b.best(db, kind, le) == v

    db.execute(f"DELETE FROM {kind}_versions WHERE id = %s", [v])
    refresh(db)
    assert counts(v) == dict.fromkeys(expected, 0)
    assert b.best(db, kind, le) is None


def test_book_without_coverage_or_chapters_still_has_a_row(db):
    A = b.bible(db, "A", {"GEN": [2], "EXO": [1, 1], "LEV": []})
    v = b.audio_version(db, "A")
    t = b.text_version(db, "A")
    b.media_file(db, v, chapter=A.chapter("GEN", 1))
    b.verse_texts(db, t, A.chapter_verses("GEN", 1))
    refresh(db)
    books = {"A-GEN": (1, 1, True), "A-EXO": (0, 2, False), "A-LEV": (0, 0, False)}
    assert b.book_rows(db, "audio", v) == books
    assert b.book_rows(db, "text", t) == books
    assert b.summary(db, "audio", v) == audio_summary(db, v, 2, 4, 1, 3, 1, 3)
    assert b.summary(db, "text", t) == text_summary(db, t, 2, 4, 1, 3, 1, 3)


@pytest.mark.parametrize(
    ("spec", "totals"),
    [
        ({}, (0, 0, 0)),
        ({"GEN": []}, (0, 0, 1)),
        ({"GEN": [0, 0]}, (0, 2, 1)),
    ],
    ids=["no-books", "no-chapters", "no-verses"],
)
@pytest.mark.parametrize("kind", ["audio", "text"])
def test_bible_version_without_structure_gives_null_fractions(db, kind, spec, totals):
    b.bible(db, "E", spec)
    le = b.language(db)
    v = new_version(db, kind, "E", le)
    refresh(db)
    verses, chapters, books = totals
    s = b.summary(db, kind, v)
    assert s is not None
    middle = "chapters_with_audio" if kind == "audio" else "complete_chapters"
    assert (
        s["covered_verses"],
        s["total_verses"],
        s[middle],
        s["total_chapters"],
        s["books_complete"],
        s["total_books"],
    ) == (0, verses, 0, chapters, 0, books)
    assert s["verse_fraction"] is None
    assert s["chapter_fraction"] == (None if chapters == 0 else 0)
    assert s["book_fraction"] == (None if books == 0 else 0)
    assert b.best(db, kind, le) == v
    assert len(b.book_rows(db, kind, v)) == books


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_summary_totals_count_rows_not_chapters_total_verses(db, kind):
    # GEN-1 claims 5 verses but has 3; GEN-2 claims 1 but has 2
    A = b.bible(db, "A", {"GEN": [3, 2]}, total_verses={("GEN", 1): 5, ("GEN", 2): 1})
    v = new_version(db, kind, "A", None)
    cover(db, kind, v, A.all_verses())
    refresh(db)
    if kind == "audio":
        assert b.chapter_rows(db, kind, v) == {"A-GEN-1": (3, 5, True, False), "A-GEN-2": (2, 1, True, False)}
        assert b.summary(db, kind, v) == audio_summary(db, v, 5, 5, 2, 2, 0, 1)
    else:
        assert b.chapter_rows(db, kind, v) == {"A-GEN-1": (3, 5, False), "A-GEN-2": (2, 1, False)}
        assert b.summary(db, kind, v) == text_summary(db, v, 5, 5, 0, 2, 0, 1)
    assert b.book_rows(db, kind, v) == {"A-GEN": (0, 2, False)}
    s = b.summary(db, kind, v)
    assert s["verse_fraction"] == 1

    # when total_verses is made to agree, the chapters complete
    db.execute("UPDATE chapters SET total_verses = 3 WHERE id = 'A-GEN-1'")
    db.execute("UPDATE chapters SET total_verses = 2 WHERE id = 'A-GEN-2'")
    refresh(db)
    assert b.book_rows(db, kind, v) == {"A-GEN": (2, 2, True)}
    s = b.summary(db, kind, v)
    assert (s["books_complete"], s["book_fraction"]) == (1, 1)


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_a_text_or_mapping_without_a_verse_covers_nothing(db, kind):
    """verse_id is nullable in the base tables: such a row covers no verse, and
    the version's other rows are refreshed as usual (its refresh never fails)."""
    A = b.bible(db, "A", {"GEN": [2]})
    v = new_version(db, kind, "A", b.language(db))
    if kind == "audio":
        f = b.media_file(db, v, verses=[A.verse("GEN", 1, 1)])
        b.mapping(db, f, None)
    else:
        db.execute(
            "INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, %s, 'x'), (%s, NULL, 'y')",
            [v, A.verse("GEN", 1, 1), v],
        )
    refresh(db)
    assert b.verse_ids(db, kind, v) == {A.verse("GEN", 1, 1)}
    assert db.execute("SELECT count(*) FROM progress_refresh_dead_letter").fetchone() == (0,)


def test_text_rules(db):
    b.bible(db, "A", {"GEN": [2, 3], "EXO": [2]})
    b.bible(db, "B", {"GEN": [2]})
    le = b.language(db)
    t = b.text_version(db, "A", le)
    t2 = b.text_version(db, "A", le)
    b.verse_texts(db, t, ["A-GEN-1-1", "A-GEN-1-2", "A-GEN-2-1", "B-GEN-1-1"])
    b.verse_texts(db, t, ["A-GEN-2-2"], deleted_at=NOW)
    refresh(db)
    assert b.verse_ids(db, "text", t) == {"A-GEN-1-1", "A-GEN-1-2", "A-GEN-2-1", "B-GEN-1-1"}
    assert b.chapter_rows(db, "text", t) == {
        "A-GEN-1": (2, 2, True),
        "A-GEN-2": (1, 3, False),
        "B-GEN-1": (1, 2, False),
    }
    assert b.book_rows(db, "text", t) == {"A-GEN": (1, 2, False), "A-EXO": (0, 1, False)}
    # complete_chapters replaces chapters_with_audio: 1 complete of 3, though 2 have text
    assert b.summary(db, "text", t) == text_summary(db, t, 3, 7, 1, 3, 0, 2)
    assert b.best(db, "text", le) == t

    db.execute("UPDATE verse_texts SET deleted_at = NULL WHERE text_version_id = %s AND verse_id = 'A-GEN-2-2'", [t])
    b.verse_texts(db, t, ["A-GEN-2-3"])
    refresh(db)
    assert b.chapter_rows(db, "text", t)["A-GEN-2"] == (3, 3, True)
    assert b.book_rows(db, "text", t) == {"A-GEN": (2, 2, True), "A-EXO": (0, 1, False)}
    assert b.summary(db, "text", t) == text_summary(db, t, 5, 7, 2, 3, 1, 2)

    # texts moved to another text version, and a soft delete
    db.execute(
        "UPDATE verse_texts SET text_version_id = %s WHERE text_version_id = %s AND verse_id LIKE 'A-GEN-1-%%'", [t2, t]
    )
    db.execute("UPDATE verse_texts SET deleted_at = now() WHERE verse_id = 'A-GEN-2-3'")
    refresh(db)
    assert b.chapter_rows(db, "text", t) == {"A-GEN-2": (2, 3, False), "B-GEN-1": (1, 2, False)}
    assert b.summary(db, "text", t) == text_summary(db, t, 2, 7, 0, 3, 0, 2)
    assert b.chapter_rows(db, "text", t2) == {"A-GEN-1": (2, 2, True)}
    assert b.summary(db, "text", t2) == text_summary(db, t2, 2, 7, 1, 3, 0, 2)
    assert b.best(db, "text", le) == t2  # equal verse fraction, higher chapter fraction


# Best version ---------------------------------------------------------------------

OLD = datetime(2020, 1, 1, tzinfo=UTC)
NEW = datetime(2023, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_best_version_ordering(db, kind):
    """Each step decides against every later tie-breaker: the winner is older and
    has the larger id, and loses the later fraction steps where it can."""
    P = b.bible(db, "P", {"GEN": [1, 1, 4]})
    Q = b.bible(db, "Q", {"GEN": [2], "EXO": [1, 1, 1, 1]})
    R = b.bible(db, "R", {"GEN": [1], "EXO": [1, 1]})
    b.bible(db, "EMPTY", {})
    ents = {
        name: b.language(db, name)
        for name in [
            "verse",
            "chapter",
            "book",
            "nulls",
            "created",
            "created_null",
            "uuid",
            "uuid_null_created",
            "created_infinity",
        ]
    }

    def version(entity, bible, n, created_at):
        return new_version(db, kind, bible, ents[entity], created_at=created_at, id=uid(n))

    # 1. verse fraction: y 3/6 beats x 2/6 (x has the better chapter fraction, for audio and text)
    x = version("verse", "P", 0x10, NEW)
    y = version("verse", "P", 0x90, OLD)
    cover(db, kind, x, [P.verse("GEN", 1, 1), P.verse("GEN", 2, 1)])
    cover(db, kind, y, P.chapter_verses("GEN", 3)[:3])
    # 2. chapter fraction: equal verses (2/6); y has 2 chapters, x 1 but a complete book
    x2 = version("chapter", "Q", 0x11, NEW)
    y2 = version("chapter", "Q", 0x91, OLD)
    cover(db, kind, x2, Q.chapter_verses("GEN", 1))
    cover(db, kind, y2, [Q.verse("EXO", 1, 1), Q.verse("EXO", 2, 1)])
    # 3. book fraction: equal verses (1/3) and chapters (1/3); x3 completes GEN
    x3 = version("book", "R", 0x92, OLD)
    y3 = version("book", "R", 0x12, NEW)
    cover(db, kind, x3, [R.verse("GEN", 1, 1)])
    cover(db, kind, y3, [R.verse("EXO", 1, 1)])
    # 4. NULL fractions last: a version of an empty bible loses to one at 0
    x4 = version("nulls", "R", 0x93, OLD)
    version("nulls", "EMPTY", 0x13, NEW)
    # 5. newest created_at, NULL last
    x5 = version("created", "R", 0x94, NEW)
    version("created", "R", 0x14, OLD)
    version("created", "R", 0x04, None)
    x6 = version("created_null", "R", 0x95, OLD)
    version("created_null", "R", 0x05, None)
    # 6. smallest uuid in PostgreSQL's order
    version("uuid", "R", 0x8000_0000 << 96, NEW)
    x7 = version("uuid", "R", 0x7FFF_FFFF << 96, NEW)
    version("uuid", "R", 0xFFFF_FFFF << 96, NEW)
    x8 = version("uuid_null_created", "R", 0x16, None)
    version("uuid_null_created", "R", 0x96, None)
    x9 = version("created_infinity", "R", 0x97, "-infinity")  # known, if as old as can be: before NULL
    version("created_infinity", "R", 0x07, None)
    refresh(db)

    middle = "chapters_with_audio" if kind == "audio" else "complete_chapters"
    s = {v: b.summary(db, kind, v) for v in (x, y, x2, y2, x3, y3)}
    assert (s[x]["covered_verses"], s[x][middle], s[y]["covered_verses"], s[y][middle]) == (
        2,
        2,
        3,
        1 if kind == "audio" else 0,
    )
    assert (s[x2]["covered_verses"], s[x2][middle], s[x2]["books_complete"]) == (2, 1, 1)
    assert (s[y2]["covered_verses"], s[y2][middle], s[y2]["books_complete"]) == (2, 2, 0)
    assert (s[x3]["verse_fraction"], s[x3]["chapter_fraction"], s[x3]["book_fraction"]) == (
        frac(db, 1, 3),
        frac(db, 1, 3),
        frac(db, 1, 2),
    )
    assert (s[y3]["verse_fraction"], s[y3]["chapter_fraction"], s[y3]["book_fraction"]) == (
        frac(db, 1, 3),
        frac(db, 1, 3),
        0,
    )

    assert {name: b.best(db, kind, e) for name, e in ents.items()} == {
        "verse": y,
        "chapter": y2,
        "book": x3,
        "nulls": x4,
        "created": x5,
        "created_null": x6,
        "uuid": x7,
        "uuid_null_created": x8,
        "created_infinity": x9,
    }


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_best_version_moves_when_the_best_is_deleted_or_moves(db, kind):
    A = b.bible(db, "A", {"GEN": [2, 2]})
    e1, e2 = b.language(db, "one"), b.language(db, "two")
    v1 = new_version(db, kind, "A", e1)
    v2 = new_version(db, kind, "A", e1)
    cover(db, kind, v1, A.all_verses())
    cover(db, kind, v2, A.chapter_verses("GEN", 1))
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v1, None)

    db.execute(f"UPDATE {kind}_versions SET deleted_at = now() WHERE id = %s", [v1])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v2, None)

    db.execute(f"UPDATE {kind}_versions SET deleted_at = NULL WHERE id = %s", [v1])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v1, None)

    db.execute(f"UPDATE {kind}_versions SET language_entity_id = %s WHERE id = %s", [e2, v1])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v2, v1)

    # the better version moves in: it becomes the best of its new entity
    db.execute(f"UPDATE {kind}_versions SET language_entity_id = %s WHERE id = %s", [e1, v1])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v1, None)

    db.execute(f"DELETE FROM {kind}_versions WHERE id = %s", [v1])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (v2, None)

    db.execute(f"UPDATE {kind}_versions SET language_entity_id = NULL WHERE id = %s", [v2])
    refresh(db)
    assert (b.best(db, kind, e1), b.best(db, kind, e2)) == (None, None)
    assert b.summary(db, kind, v2) is not None  # still a live version, without a language


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_language_entity_without_live_version_has_no_row(db, kind):
    b.bible(db, "A", {"GEN": [1]})
    only_deleted = b.language(db, "only deleted")
    no_versions = b.language(db, "none")
    with_live = b.language(db, "live")
    new_version(db, kind, "A", only_deleted, deleted_at=NOW)
    live = new_version(db, kind, "A", with_live)
    new_version(db, kind, "A", None)
    refresh(db)
    table = f"language_entity_best_{kind}_version"
    assert b.fetch(db, f"SELECT * FROM {table}") == [(with_live, live)]
    assert b.best(db, kind, only_deleted) is None
    assert b.best(db, kind, no_versions) is None
