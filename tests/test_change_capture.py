"""Which writes queue which versions (SPEC section 4): the queue is inspected
right after the writes, before any drain."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest

import builders as b
from orchestration.db import gateway

NOW = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class World:
    A: b.Bible
    B: b.Bible
    le1: uuid.UUID
    le2: uuid.UUID
    a1: uuid.UUID  # audio, bible A
    a2: uuid.UUID  # audio, bible A
    a_deleted: uuid.UUID  # audio, bible A, soft deleted
    b1: uuid.UUID  # audio, bible B
    t1: uuid.UUID  # text, bible A
    t2: uuid.UUID  # text, bible A
    t_deleted: uuid.UUID  # text, bible A, soft deleted
    tb: uuid.UUID  # text, bible B
    f1: uuid.UUID  # live file of a1 (chapter A-GEN-1, mapping A-GEN-2-1)
    f_pending: uuid.UUID  # not live (upload pending) file of a2


@pytest.fixture
def w(db: psycopg.Connection) -> World:
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    B = b.bible(db, "B", {"GEN": [3, 2], "EXO": [2]})
    le1, le2 = b.language(db, "one"), b.language(db, "two")
    a1 = b.audio_version(db, "A", le1)
    a2 = b.audio_version(db, "A", le1)
    a_deleted = b.audio_version(db, "A", le1, deleted_at=NOW)
    b1 = b.audio_version(db, "B", le2)
    t1 = b.text_version(db, "A", le1)
    t2 = b.text_version(db, "A", le1)
    t_deleted = b.text_version(db, "A", le1, deleted_at=NOW)
    tb = b.text_version(db, "B", le2)
    f1 = b.media_file(db, a1, chapter=A.chapter("GEN", 1), verses=[A.verse("GEN", 2, 1)])
    f_pending = b.media_file(db, a2, chapter=A.chapter("GEN", 1), upload_status="pending")
    b.media_file(db, b1, chapter=B.chapter("GEN", 1))
    b.verse_texts(db, t1, A.chapter_verses("GEN", 1))
    b.verse_texts(db, tb, B.chapter_verses("GEN", 1))
    b.drain(db)
    b.assert_queue_empty(db)
    return World(A, B, le1, le2, a1, a2, a_deleted, b1, t1, t2, t_deleted, tb, f1, f_pending)


def audio(*versions: uuid.UUID) -> set[tuple[str, uuid.UUID]]:
    return {("audio", v) for v in versions}


def text(*versions: uuid.UUID) -> set[tuple[str, uuid.UUID]]:
    return {("text", v) for v in versions}


def queue_after(db: psycopg.Connection, statement: str, params=None) -> set[tuple[str, uuid.UUID]]:
    b.clear_queue(db)
    db.execute(statement, params)
    return b.queued(db)


# media_files ------------------------------------------------------------------------


def test_media_file_insert_queues_its_version_when_live(db, w):
    b.media_file(db, w.a2, chapter=w.A.chapter("EXO", 1))
    assert b.queued(db) == audio(w.a2)
    b.clear_queue(db)
    for not_live in [
        {"upload_status": "failed"},
        {"publish_status": "pending"},
        {"media_type": "video"},
        {"is_bible_audio": None},
        {"is_bible_audio": False},
        {"deleted_at": NOW},
    ]:
        b.media_file(db, w.a2, chapter=w.A.chapter("EXO", 1), **not_live)
    assert b.queued(db) == set()


def test_media_file_delete_queues_its_version_when_it_was_live(db, w):
    assert queue_after(db, "DELETE FROM media_files WHERE id = %s", [w.f_pending]) == set()
    assert queue_after(db, "DELETE FROM media_files WHERE id = %s", [w.f1]) == audio(w.a1)


def test_media_file_delete_queues_its_chapters_unless_its_version_has_mapped_files(db, w):
    """A deleted file's mappings are gone before its trigger runs: a version with
    mapped files is queued whole; one that never had any, for the chapters the
    file reached."""
    A = w.A
    chapter_file = b.media_file(db, w.a2, chapter=A.chapter("EXO", 1))
    range_file = b.media_file(db, w.a2, start=A.verse("GEN", 1, 2), end=A.verse("GEN", 2, 1))
    b.media_file(db, w.a2, chapter=A.chapter("GEN", 2))
    b.drain(db)

    queue_after(db, "DELETE FROM media_files WHERE id = %s", [chapter_file])
    assert b.chapter_scopes(db) == {("audio", w.a2): [A.chapter("EXO", 1)]}
    db.execute("DELETE FROM media_files WHERE id = %s", [range_file])
    assert b.chapter_scopes(db) == {
        ("audio", w.a2): sorted([A.chapter("EXO", 1), A.chapter("GEN", 1), A.chapter("GEN", 2)])
    }
    b.drain(db)
    b.assert_read_models_match(db)
    assert b.summary(db, "audio", w.a2)["covered_verses"] == 2  # GEN 2 still has its chapter file

    # f1 maps a verse of GEN 2 besides its chapter GEN 1: its version is queued
    # whole, in the same statement as a2's file, queued for its chapter
    gen_2 = b.media_file(db, w.a2, chapter=A.chapter("GEN", 2))
    b.drain(db)
    queue_after(db, "DELETE FROM media_files WHERE id = ANY (%s)", [[w.f1, gen_2]])
    assert b.chapter_scopes(db) == {("audio", w.a1): None, ("audio", w.a2): [A.chapter("GEN", 2)]}
    b.drain(db)
    b.assert_read_models_match(db)
    assert b.summary(db, "audio", w.a1)["covered_verses"] == 0
    assert b.summary(db, "audio", w.a2)["covered_verses"] == 2  # its first GEN 2 file stays


def test_media_file_move_queues_old_and_new_version(db, w):
    assert queue_after(db, "UPDATE media_files SET audio_version_id = %s WHERE id = %s", [w.b1, w.f1]) == audio(
        w.a1, w.b1
    )
    assert queue_after(db, "UPDATE media_files SET audio_version_id = NULL WHERE id = %s", [w.f1]) == audio(w.b1)
    assert queue_after(db, "UPDATE media_files SET audio_version_id = %s WHERE id = %s", [w.a2, w.f1]) == audio(w.a2)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("upload_status", "failed"),
        ("publish_status", "archived"),
        ("media_type", "video"),
        ("is_bible_audio", None),
        ("is_bible_audio", False),
        ("deleted_at", NOW),
        ("chapter_id", "A-EXO-1"),
        ("chapter_id", None),
        ("start_verse_id", "A-GEN-2-1"),
        ("end_verse_id", "A-GEN-2-2"),
    ],
)
def test_media_file_relevant_change_queues_its_version(db, w, column, value):
    assert queue_after(db, f"UPDATE media_files SET {column} = %s WHERE id = %s", [value, w.f1]) == audio(w.a1)


def test_media_file_becoming_live_queues_its_version(db, w):
    assert queue_after(db, "UPDATE media_files SET upload_status = 'completed' WHERE id = %s", [w.f_pending]) == audio(
        w.a2
    )


def test_media_file_update_that_changes_nothing_relevant_queues_nothing(db, w):
    db.execute("ALTER TABLE media_files ADD COLUMN title text")  # extra nullable column (SPEC 2)
    assert queue_after(db, "UPDATE media_files SET upload_status = upload_status, chapter_id = chapter_id") == set()
    assert queue_after(db, "UPDATE media_files SET title = 'renamed'") == set()
    # a file that stays not live queues nothing either
    assert (
        queue_after(
            db,
            "UPDATE media_files SET upload_status = 'uploading', chapter_id = 'A-EXO-1' WHERE id = %s",
            [w.f_pending],
        )
        == set()
    )


def test_media_file_multi_row_update_queues_each_version_once(db, w):
    queued = queue_after(db, "UPDATE media_files SET publish_status = 'archived'")
    assert queued == audio(w.a1, w.b1)
    assert db.execute("SELECT count(*), max(generation) FROM progress_refresh_queue").fetchone() == (2, 1)


# media_files_verses -----------------------------------------------------------------


def test_mapping_writes_queue_the_parent_files_version(db, w):
    b.clear_queue(db)
    m = b.mapping(db, w.f1, w.A.verse("EXO", 1, 1))
    assert b.queued(db) == audio(w.a1)
    assert queue_after(db, "UPDATE media_files_verses SET deleted_at = now() WHERE id = %s", [m]) == audio(w.a1)
    assert queue_after(db, "UPDATE media_files_verses SET deleted_at = NULL WHERE id = %s", [m]) == audio(w.a1)
    assert queue_after(db, "UPDATE media_files_verses SET verse_id = 'A-EXO-1-2' WHERE id = %s", [m]) == audio(w.a1)
    assert queue_after(db, "DELETE FROM media_files_verses WHERE id = %s", [m]) == audio(w.a1)
    # a mapping moved to another file: both files' versions
    other = b.media_file(db, w.b1, start=w.B.verse("EXO", 1, 1))
    m2 = b.mapping(db, other, w.B.verse("EXO", 1, 2))
    assert queue_after(db, "UPDATE media_files_verses SET media_file_id = %s WHERE id = %s", [w.f1, m2]) == audio(
        w.a1, w.b1
    )


def test_mapping_update_that_changes_nothing_queues_nothing(db, w):
    assert queue_after(db, "UPDATE media_files_verses SET verse_id = verse_id, deleted_at = deleted_at") == set()


# verse_texts ----------------------------------------------------------------------


def test_verse_text_writes_queue_their_text_versions(db, w):
    b.clear_queue(db)
    [vt] = b.verse_texts(db, w.t2, [w.A.verse("EXO", 1, 1)])
    assert b.queued(db) == text(w.t2)
    assert queue_after(db, "UPDATE verse_texts SET deleted_at = now() WHERE id = %s", [vt]) == text(w.t2)
    assert queue_after(db, "UPDATE verse_texts SET deleted_at = NULL WHERE id = %s", [vt]) == text(w.t2)
    assert queue_after(db, "UPDATE verse_texts SET text_version_id = %s WHERE id = %s", [w.t1, vt]) == text(w.t1, w.t2)
    assert queue_after(db, "UPDATE verse_texts SET verse_id = 'A-EXO-1-2' WHERE id = %s", [vt]) == text(w.t1)
    assert queue_after(db, "DELETE FROM verse_texts WHERE id = %s", [vt]) == text(w.t1)


def test_single_row_writes_to_a_queued_version_bump_it_and_widen_its_scope_only_when_needed(db, w):
    def entry() -> tuple[int, list[str] | None]:
        return db.execute(
            "SELECT generation, chapter_ids FROM progress_refresh_queue WHERE kind = 'text' AND version_id = %s",
            [w.t2],
        ).fetchone()

    b.clear_queue(db)
    b.verse_texts(db, w.t2, [w.A.verse("GEN", 1, 1)])
    generation, scope = entry()
    assert scope == [w.A.chapter("GEN", 1)]
    b.verse_texts(db, w.t2, [w.A.verse("GEN", 1, 2)])  # same chapter: bumped, scope as it was
    assert entry() == (generation + 1, [w.A.chapter("GEN", 1)])
    b.verse_texts(db, w.t2, [w.A.verse("EXO", 1, 1)])  # another chapter: the scope widens (a set)
    widened_generation, widened = entry()
    assert (widened_generation, sorted(widened)) == (
        generation + 2,
        sorted([w.A.chapter("GEN", 1), w.A.chapter("EXO", 1)]),
    )
    db.execute(
        "UPDATE text_versions SET created_at = created_at + interval '1 second' WHERE id = %s", [w.t2]
    )  # a version-level change
    assert entry() == (generation + 3, None)
    b.verse_texts(db, w.t2, [w.A.verse("EXO", 1, 2)])  # the whole version holds every chapter
    assert entry() == (generation + 4, None)


def test_verse_text_change_of_the_text_only_queues_nothing(db, w):
    assert queue_after(db, "UPDATE verse_texts SET verse_text = 'revised'") == set()


def test_bulk_verse_text_insert_queues_once_and_bumps_generation_per_statement(db):
    spec = {"GEN": [100] * 40}
    A = b.bible(db, "A", spec)
    t = b.text_version(db, "A")
    b.clear_queue(db)
    verses = A.all_verses()
    assert len(verses) == 4000
    b.verse_texts(db, t, verses[:3000])
    rows = db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue").fetchall()
    assert rows == [("text", t, 1)]
    b.verse_texts(db, t, verses[3000:])  # a second statement: one more generation
    rows = db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue").fetchall()
    assert rows == [("text", t, 2)]
    db.execute("UPDATE verse_texts SET deleted_at = now() WHERE text_version_id = %s", [t])
    rows = db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue").fetchall()
    assert rows == [("text", t, 3)]


# audio_versions / text_versions --------------------------------------------------


@pytest.mark.parametrize("kind", ["audio", "text"])
def test_version_writes_queue_the_version(db, w, kind):
    mine = audio if kind == "audio" else text
    table = f"{kind}_versions"
    live = w.a1 if kind == "audio" else w.t1
    deleted = w.a_deleted if kind == "audio" else w.t_deleted
    b.clear_queue(db)
    new = (b.audio_version if kind == "audio" else b.text_version)(db, "A", w.le1)
    assert b.queued(db) == mine(new)
    for statement, params in [
        (f"UPDATE {table} SET deleted_at = now() WHERE id = %s", [live]),
        (f"UPDATE {table} SET deleted_at = NULL WHERE id = %s", [live]),
        (f"UPDATE {table} SET bible_version_id = 'B' WHERE id = %s", [live]),
        (f"UPDATE {table} SET language_entity_id = %s WHERE id = %s", [w.le2, live]),
        (f"UPDATE {table} SET language_entity_id = NULL WHERE id = %s", [live]),
        (f"UPDATE {table} SET created_at = '2001-01-01' WHERE id = %s", [live]),
        (f"UPDATE {table} SET created_at = NULL WHERE id = %s", [live]),
    ]:
        assert queue_after(db, statement, params) == mine(live), statement
    assert queue_after(db, f"UPDATE {table} SET deleted_at = NULL WHERE id = %s", [deleted]) == mine(deleted)
    assert queue_after(db, f"UPDATE {table} SET name = 'renamed'") == set()
    assert queue_after(db, f"UPDATE {table} SET created_at = created_at, deleted_at = deleted_at") == set()
    assert queue_after(db, f"DELETE FROM {table} WHERE id = %s", [new]) == mine(new)
    assert queue_after(db, f"DELETE FROM {table} WHERE id = %s", [live]) >= mine(live)


# books / chapters / verses --------------------------------------------------------

STRUCTURE_WRITES = [
    "INSERT INTO verses (id, chapter_id, verse_number, global_order) VALUES ('A-GEN-2-3', 'A-GEN-2', 3, 1002003)",
    "DELETE FROM verses WHERE id = 'A-EXO-1-2'",
    "UPDATE verses SET global_order = 1002500 WHERE id = 'A-GEN-2-2'",
    "UPDATE verses SET chapter_id = 'A-EXO-1' WHERE id = 'A-GEN-2-2'",
    "UPDATE chapters SET total_verses = 7 WHERE id = 'A-EXO-1'",
    "UPDATE chapters SET book_id = 'A-GEN' WHERE id = 'A-EXO-1'",
    "INSERT INTO chapters (id, book_id, chapter_number, total_verses) VALUES ('A-EXO-2', 'A-EXO', 2, 0)",
    "DELETE FROM chapters WHERE id = 'A-EXO-1'",
    "INSERT INTO books (id, bible_version_id, book_number, name) VALUES ('A-LEV', 'A', 3, 'LEV')",
    "DELETE FROM books WHERE id = 'A-EXO'",
]


@pytest.mark.parametrize("statement", STRUCTURE_WRITES)
def test_structure_change_queues_every_live_version_of_the_bible_version(db, w, statement):
    queued = queue_after(db, statement)
    assert queued >= audio(w.a1, w.a2) | text(w.t1, w.t2)
    assert not queued & (audio(w.b1, w.a_deleted) | text(w.tb, w.t_deleted))


def test_structure_change_queues_versions_whose_coverage_reaches_into_it(db, w):
    # versions of bible B covering verses of A's EXO-1
    b.media_file(db, w.b1, verses=[w.A.verse("EXO", 1, 1)])
    b.verse_texts(db, w.tb, [w.A.verse("EXO", 1, 1)])
    b.drain(db)
    for statement in [
        "UPDATE chapters SET total_verses = 7 WHERE id = 'A-EXO-1'",
        "INSERT INTO verses (id, chapter_id, verse_number, global_order) VALUES ('A-EXO-1-3', 'A-EXO-1', 3, 2001003)",
        "UPDATE chapters SET book_id = 'A-GEN' WHERE id = 'A-EXO-1'",
    ]:
        assert queue_after(db, statement) >= audio(w.b1) | text(w.tb), statement


def test_structure_change_reaching_a_range_from_another_bible_queues_it(db, w):
    # a1 (bible A) holds a range of B's verses; a verse inserted into B inside that range
    b.media_file(db, w.a1, start=w.B.verse("GEN", 2, 1), end=w.B.verse("EXO", 1, 1))
    b.drain(db)
    queued = queue_after(
        db,
        "INSERT INTO verses (id, chapter_id, verse_number, global_order) VALUES ('B-GEN-2-3', 'B-GEN-2', 3, 1002003)",
    )
    assert queued >= audio(w.a1, w.b1) | text(w.tb)
    b.drain(db)
    b.assert_read_models_match(db)
    assert "B-GEN-2-3" in b.verse_ids(db, "audio", w.a1)


def test_moving_a_ranges_end_verse_in_another_bible_requeues_the_range_version(db):
    """A range takes the verses of the start verse's bible version up to the END
    verse's global_order, and the end verse may lie in another bible version
    (SPEC 3). Moving that end verse changes the range's coverage, so the range's
    version is queued and the drain brings its read models up to date."""
    A = b.bible(db, "A", {"GEN": [3]})
    B = b.bible(db, "B", {"GEN": [3]})
    v = b.audio_version(db, "B")  # start in B, end in A
    b.media_file(db, v, start=B.verse("GEN", 1, 1), end=A.verse("GEN", 1, 3))
    b.drain(db)
    assert b.verse_ids(db, "audio", v) == {"B-GEN-1-1", "B-GEN-1-2", "B-GEN-1-3"}

    # A-GEN-1-3 moves from order 1001003 to 1001002: the range now ends before B-GEN-1-3
    queued = queue_after(db, "UPDATE verses SET global_order = 1001002 WHERE id = 'A-GEN-1-3'")
    b.drain(db)
    assert ("audio", v) in queued
    assert b.verse_ids(db, "audio", v) == {"B-GEN-1-1", "B-GEN-1-2"}
    assert gateway.mismatches_by_read_model(db)["mv_audio_verse_coverage"] == 0


# SQL API -------------------------------------------------------------------------


def test_enqueue_rejects_bad_input(db, w):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"unknown version kind 'bogus'"):
        db.execute("SELECT enqueue_progress_refresh('bogus', %s)", [w.a1])
    with pytest.raises(psycopg.Error, match=r"(?i)null"):
        db.execute("SELECT enqueue_progress_refresh('audio', NULL)")
    missing = uuid.uuid4()
    with pytest.raises(psycopg.Error, match=f"unknown audio version {missing}"):
        db.execute("SELECT enqueue_progress_refresh('audio', %s)", [missing])
    # a text id is not an audio version
    with pytest.raises(psycopg.Error, match=f"unknown audio version {w.t1}"):
        db.execute("SELECT enqueue_progress_refresh('audio', %s)", [w.t1])
    assert b.queued(db) == set()


def test_enqueue_queues_and_bumps_generation(db, w):
    db.execute("SELECT enqueue_progress_refresh('audio', %s)", [w.a1])
    db.execute("SELECT enqueue_progress_refresh('text', %s)", [w.t1])
    db.execute("SELECT enqueue_progress_refresh('audio', %s)", [w.a1])
    rows = db.execute("SELECT kind, version_id, generation FROM progress_refresh_queue ORDER BY kind").fetchall()
    assert rows == [("audio", w.a1, 2), ("text", w.t1, 1)]


def test_mapped_coverage_reaches_a_version_that_never_had_mappings(db):
    """A chapter-scoped refresh reads mappings only in versions listed as having
    them: a version's first mapped file, and a mapped file moved to a version
    that had none, still show in its read models after a drain."""
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    chapter_only = b.audio_version(db, "A", b.language(db, "one"))
    other = b.audio_version(db, "A", b.language(db, "two"))
    b.media_file(db, chapter_only, chapter=A.chapters[("GEN", 1)])
    b.media_file(db, other, chapter=A.chapters[("EXO", 1)])
    b.drain(db)
    assert b.verse_ids(db, "audio", chapter_only) == {A.verses[("GEN", 1, v)] for v in (1, 2, 3)}

    mapped = b.media_file(db, chapter_only, verses=[A.verses[("GEN", 2, 1)], A.verses[("EXO", 1, 2)]])
    assert b.chapter_scopes(db)[("audio", chapter_only)] == sorted([A.chapters[("GEN", 2)], A.chapters[("EXO", 1)]])
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verses[("GEN", 2, 1)] in b.verse_ids(db, "audio", chapter_only)

    db.execute("UPDATE media_files SET audio_version_id = %s WHERE id = %s", [other, mapped])
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verses[("GEN", 2, 1)] in b.verse_ids(db, "audio", other)
    assert A.verses[("GEN", 2, 1)] not in b.verse_ids(db, "audio", chapter_only)


@pytest.mark.parametrize(
    "with_mappings",
    [
        "DELETE FROM media_files_verses WHERE media_file_id = %(file)s",
        "UPDATE media_files_verses SET deleted_at = now() WHERE media_file_id = %(file)s",
        "UPDATE media_files_verses SET verse_id = %(verse)s WHERE media_file_id = %(file)s",
    ],
)
def test_a_file_moved_to_another_version_while_its_mappings_change_in_the_same_statement(db, with_mappings):
    """One statement (a data-modifying WITH) moves a mapped file to another
    version and removes or moves its mappings: the mapping's change is seen
    with the file's new version, so the version it left is refreshed whole."""
    A = b.bible(db, "A", {"GEN": [3, 2], "EXO": [2]})
    left, joined = b.audio_version(db, "A", b.language(db)), b.audio_version(db, "A", b.language(db))
    b.media_file(db, left, chapter=A.chapter("GEN", 1))
    mapped = b.media_file(db, left, verses=[A.verse("EXO", 1, 1)])
    b.drain(db)
    assert A.verse("EXO", 1, 1) in b.verse_ids(db, "audio", left)

    db.execute(
        f"WITH m AS ({with_mappings}) UPDATE media_files SET audio_version_id = %(to)s WHERE id = %(file)s",
        {"file": mapped, "to": joined, "verse": A.verse("GEN", 2, 1)},
    )
    b.drain(db)
    b.assert_read_models_match(db)
    assert A.verse("EXO", 1, 1) not in b.verse_ids(db, "audio", left)


@pytest.mark.parametrize(
    "statement",
    [
        # verses first, then their chapter; the chapter first, then its verses
        "WITH v AS (INSERT INTO verses (id, chapter_id, verse_number, global_order)"
        " VALUES ('A-GEN-9-1', 'A-GEN-9', 1, 1009001), ('A-GEN-9-2', 'A-GEN-9', 2, 1009002) RETURNING 1)"
        " INSERT INTO chapters (id, book_id, chapter_number, total_verses) VALUES ('A-GEN-9', 'A-GEN', 9, 2)",
        "WITH c AS (INSERT INTO chapters (id, book_id, chapter_number, total_verses)"
        " VALUES ('A-GEN-9', 'A-GEN', 9, 2) RETURNING 1)"
        " INSERT INTO verses (id, chapter_id, verse_number, global_order)"
        " VALUES ('A-GEN-9-1', 'A-GEN-9', 1, 1009001), ('A-GEN-9-2', 'A-GEN-9', 2, 1009002)",
        # a verse moves into a chapter that moves to another bible version
        "WITH v AS (UPDATE verses SET chapter_id = 'A-GEN-1' WHERE id = 'A-EXO-1-1' RETURNING 1)"
        " UPDATE chapters SET book_id = 'B-GEN' WHERE id = 'A-GEN-1'",
    ],
    ids=["verses-then-chapter", "chapter-then-verses", "verse-and-chapter-move"],
)
def test_one_statement_writing_verses_and_chapters_keeps_the_totals_exact(strategy_db, statement):
    """The summaries' totals count the verses, chapters and books rows of their
    bible version (SPEC 3) after a data-modifying WITH writes verses and
    chapters together, whichever of the two tables' triggers fires first."""
    db = strategy_db
    db.execute("SELECT refresh_progress_materialized_views_full()")
    b.bible(db, "A", {"GEN": [3, 2], "EXO": [2, 3]})
    b.bible(db, "B", {"GEN": [3, 2], "EXO": [2, 3]})
    le = b.language(db)
    versions = [("A", "audio", b.audio_version(db, "A", le)), ("B", "text", b.text_version(db, "B", le))]
    b.drain(db)
    db.execute(statement)
    b.drain(db)
    b.assert_read_models_match(db)
    for bible, kind, version in versions:
        [(verses, chapters)] = b.fetch(
            db,
            "SELECT count(v.id), count(DISTINCT c.id) FROM books bk JOIN chapters c ON c.book_id = bk.id"
            " LEFT JOIN verses v ON v.chapter_id = c.id WHERE bk.bible_version_id = %s",
            [bible],
        )
        summary = b.summary(db, kind, version)
        assert (summary["total_verses"], summary["total_chapters"]) == (verses, chapters), bible
