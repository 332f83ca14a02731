"""Guarantee 1 (SPEC 8): after a drain, every read model equals its logical
view, for any seeded random mix of writes on a small structure.

Each workload runs several rounds of random writes (some grouped in one
transaction, some multi-row), draining after some rounds and not others; after
every drain every mv_* must equal its logical view row for row and the queue
must be empty. A failing seed reproduces exactly: ids come from the seed too.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import psycopg
import pytest

import builders as b
from orchestration.refresh import RefreshPolicy, drain_queue

SPEC = {"GEN": [3, 2], "EXO": [2, 3]}
CREATED = [datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 6, 1, tzinfo=UTC), None]


class Workload:
    def __init__(self, db: psycopg.Connection, seed: int, weights: dict[str, int] | None = None) -> None:
        self.db = db
        self.rng = random.Random(seed)
        self.weights = {**dict(self.OPS), **(weights or {})}
        self.counter = 0
        self.log: list[str] = []

    # helpers ---------------------------------------------------------------------

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128))

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, query: str, params=None):
        rows = self.db.execute(query + " ORDER BY 1", params).fetchall()
        return self.rng.choice(rows)[0] if rows else None

    def pick_some(self, query: str, k: int) -> list:
        rows = [r[0] for r in self.db.execute(query + " ORDER BY 1").fetchall()]
        return self.rng.sample(rows, min(k, len(rows)))

    def verse(self):
        return self.pick("SELECT id FROM verses")

    def chapter(self):
        return self.pick("SELECT id FROM chapters")

    def audio_version(self, allow_null: bool = False):
        if allow_null and self.chance(0.05):
            return None
        return self.pick("SELECT id FROM audio_versions")

    def text_version(self):
        return self.pick("SELECT id FROM text_versions")

    def language(self):
        return None if self.chance(0.1) else self.pick("SELECT id FROM language_entities")

    def bible_version(self):
        return self.rng.choice(["A", "A", "B", "B", "EMPTY"])

    def created_at(self):
        value = self.rng.choice(CREATED)
        return value if value is None else value + timedelta(days=self.rng.choice([0, 0, 1]))

    def file_status(self) -> dict:
        live = self.chance(0.8)
        return {
            "media_type": "audio" if live or self.chance(0.5) else "video",
            "is_bible_audio": True if live else self.rng.choice([True, False, None]),
            "upload_status": "completed" if live else self.rng.choice(["pending", "uploading", "completed", "failed"]),
            "publish_status": "published" if live else self.rng.choice(["pending", "published", "archived"]),
            "deleted_at": None if live or self.chance(0.5) else datetime(2024, 1, 1, tzinfo=UTC),
        }

    # setup -------------------------------------------------------------------------

    def setup(self) -> None:
        b.bible(self.db, "A", SPEC)
        b.bible(self.db, "B", SPEC)
        b.bible(self.db, "EMPTY", {})
        for i in range(3):
            b.language(self.db, f"language {i}", id=self.uuid())
        for _ in range(5):
            self.op_insert_version("audio")
        for _ in range(4):
            self.op_insert_version("text")
        for _ in range(8):
            self.op_insert_file()
        for _ in range(5):
            self.op_insert_texts()

    # operations -------------------------------------------------------------------

    def op_insert_version(self, kind: str | None = None) -> None:
        kind = kind or self.rng.choice(["audio", "text"])
        make = b.audio_version if kind == "audio" else b.text_version
        make(
            self.db,
            self.bible_version(),
            self.language(),
            created_at=self.created_at(),
            deleted_at=datetime(2024, 1, 1, tzinfo=UTC) if self.chance(0.15) else None,
            id=self.uuid(),
        )

    def op_version_change(self) -> None:
        table = self.rng.choice(["audio_versions", "text_versions"])
        version = self.pick(f"SELECT id FROM {table}")
        if version is None:
            return
        column, value = self.rng.choice(
            [
                ("deleted_at", datetime(2024, 2, 1, tzinfo=UTC)),
                ("deleted_at", None),
                ("deleted_at", None),
                ("deleted_at", None),
                ("language_entity_id", self.language()),
                ("created_at", self.created_at()),
                ("bible_version_id", self.bible_version()),
                ("name", f"renamed {self.counter}"),
            ]
        )
        self.db.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [value, version])

    def op_version_hard_delete(self) -> None:
        table = self.rng.choice(["audio_versions", "text_versions"])
        version = self.pick(f"SELECT id FROM {table}")
        if version is not None:
            self.db.execute(f"DELETE FROM {table} WHERE id = %s", [version])

    def op_insert_file(self) -> None:
        status = self.file_status()
        coverage = self.rng.choice(["chapter", "chapter", "range", "open_range", "mappings", "mixed", "book"])
        chapter = start = end = None
        verses: list[str] = []
        if coverage in ("chapter", "mixed"):
            chapter = self.chapter()
        if coverage in ("range", "open_range", "mixed"):
            start = self.verse()
            end = self.verse() if coverage != "open_range" else None
        if coverage == "book":  # a range over a whole book, start to end
            book = self.pick("SELECT id FROM books")
            row = self.db.execute(
                "SELECT (array_agg(v.id ORDER BY v.global_order))[1],"
                "       (array_agg(v.id ORDER BY v.global_order DESC))[1]"
                "  FROM verses v JOIN chapters c ON c.id = v.chapter_id WHERE c.book_id = %s",
                [book],
            ).fetchone()
            start, end = row if row else (None, None)
        if coverage in ("mappings", "mixed"):
            verses = self.pick_some("SELECT id FROM verses", self.rng.randint(1, 4))
        b.media_file(
            self.db,
            self.audio_version(allow_null=True),
            chapter=chapter,
            start=start,
            end=end,
            verses=verses,
            id=self.uuid(),
            **status,
        )

    def op_file_status(self) -> None:
        f = self.pick("SELECT id FROM media_files")
        if f is None:
            return
        column, value = self.rng.choice(
            [
                ("upload_status", self.rng.choice(["pending", "uploading", "completed", "completed", "failed"])),
                ("publish_status", self.rng.choice(["pending", "published", "published", "archived"])),
                ("media_type", self.rng.choice(["audio", "audio", "video"])),
                ("is_bible_audio", self.rng.choice([True, True, False, None])),
                ("deleted_at", self.rng.choice([None, None, datetime(2024, 3, 1, tzinfo=UTC)])),
            ]
        )
        self.db.execute(f"UPDATE media_files SET {column} = %s WHERE id = %s", [value, f])

    def op_file_make_live(self) -> None:
        f = self.pick("SELECT id FROM media_files")
        if f is not None:
            self.db.execute(
                "UPDATE media_files SET media_type = 'audio', is_bible_audio = true,"
                " upload_status = 'completed', publish_status = 'published', deleted_at = NULL"
                " WHERE id = %s",
                [f],
            )

    def op_file_move(self) -> None:
        f = self.pick("SELECT id FROM media_files")
        if f is not None:
            self.db.execute(
                "UPDATE media_files SET audio_version_id = %s WHERE id = %s", [self.audio_version(allow_null=True), f]
            )

    def op_file_coverage(self) -> None:
        f = self.pick("SELECT id FROM media_files")
        if f is None:
            return
        column = self.rng.choice(["chapter_id", "start_verse_id", "end_verse_id"])
        value = None if self.chance(0.25) else (self.chapter() if column == "chapter_id" else self.verse())
        self.db.execute(f"UPDATE media_files SET {column} = %s WHERE id = %s", [value, f])

    def op_file_delete(self) -> None:
        f = self.pick("SELECT id FROM media_files")
        if f is not None:
            self.db.execute("DELETE FROM media_files WHERE id = %s", [f])

    def op_files_bulk(self) -> None:
        """One statement touching the files of several versions."""
        value = self.rng.choice(["published", "archived", "pending"])
        bible = self.rng.choice(["A", "B"])
        self.db.execute(
            "UPDATE media_files SET publish_status = %s WHERE audio_version_id IN"
            " (SELECT id FROM audio_versions WHERE bible_version_id = %s)",
            [value, bible],
        )

    def op_mapping(self) -> None:
        action = self.rng.choice(["insert", "insert", "soft", "undelete", "delete", "verse", "file"])
        if action == "insert":
            f = self.pick("SELECT id FROM media_files")
            if f is not None:
                self.db.execute(
                    "INSERT INTO media_files_verses (id, media_file_id, verse_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT (media_file_id, verse_id) DO NOTHING",
                    [self.uuid(), f, self.verse()],
                )
            return
        m = self.pick("SELECT id FROM media_files_verses")
        if m is None:
            return
        if action == "soft":
            self.db.execute("UPDATE media_files_verses SET deleted_at = now() WHERE id = %s", [m])
        elif action == "undelete":
            self.db.execute("UPDATE media_files_verses SET deleted_at = NULL WHERE id = %s", [m])
        elif action == "delete":
            self.db.execute("DELETE FROM media_files_verses WHERE id = %s", [m])
        elif action == "verse":
            self.db.execute("UPDATE media_files_verses SET verse_id = %s WHERE id = %s", [self.verse(), m])
        else:
            self.db.execute(
                "UPDATE media_files_verses SET media_file_id = %s WHERE id = %s",
                [self.pick("SELECT id FROM media_files"), m],
            )

    def op_insert_texts(self) -> None:
        t = self.text_version()
        if t is None:
            return
        verses = self.pick_some("SELECT id FROM verses", self.rng.randint(1, 6))
        self.db.execute(
            "INSERT INTO verse_texts (id, text_version_id, verse_id, verse_text)"
            " SELECT gen_random_uuid(), %s, v, 'text' FROM unnest(%s::text[]) AS v"
            " ON CONFLICT (verse_id, text_version_id) DO UPDATE SET deleted_at = NULL",
            [t, verses],
        )

    def op_verse_text(self) -> None:
        vt = self.pick("SELECT id FROM verse_texts")
        if vt is None:
            return
        action = self.rng.choice(["soft", "undelete", "delete", "move", "verse", "text", "bulk_soft"])
        if action == "soft":
            self.db.execute("UPDATE verse_texts SET deleted_at = now() WHERE id = %s", [vt])
        elif action == "undelete":
            self.db.execute("UPDATE verse_texts SET deleted_at = NULL WHERE id = %s", [vt])
        elif action == "delete":
            self.db.execute("DELETE FROM verse_texts WHERE id = %s", [vt])
        elif action == "move":
            self.db.execute("UPDATE verse_texts SET text_version_id = %s WHERE id = %s", [self.text_version(), vt])
        elif action == "verse":
            self.db.execute("UPDATE verse_texts SET verse_id = %s WHERE id = %s", [self.verse(), vt])
        elif action == "text":
            self.db.execute("UPDATE verse_texts SET verse_text = 'revised' WHERE id = %s", [vt])
        else:
            self.db.execute(
                "UPDATE verse_texts SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END"
                " WHERE verse_id IN (SELECT id FROM verses WHERE chapter_id = %s)",
                [self.chapter()],
            )

    def op_structure(self) -> None:
        self.counter += 1
        action = self.rng.choice(
            [
                "insert_verse",
                "insert_verse",
                "delete_verse",
                "total_verses",
                "total_verses",
                "move_chapter",
                "move_verse",
                "reorder_verse",
                "insert_chapter",
                "delete_chapter",
                "insert_book",
                "delete_book",
                "move_book",
            ]
        )
        db = self.db
        if action == "insert_verse":
            c = self.chapter()
            if c is None:
                return
            row = db.execute(
                "SELECT coalesce(max(v.global_order), b.book_number * 1000000 + c.chapter_number * 1000),"
                "       coalesce(max(v.verse_number), 0)"
                "  FROM chapters c JOIN books b ON b.id = c.book_id"
                "  LEFT JOIN verses v ON v.chapter_id = c.id WHERE c.id = %s"
                " GROUP BY b.book_number, c.chapter_number",
                [c],
            ).fetchone()
            order, number = row if row else (self.counter * 1000, 0)
            db.execute(
                "INSERT INTO verses (id, chapter_id, verse_number, global_order) VALUES (%s, %s, %s, %s)",
                [f"{c}-n{self.counter}", c, number + 1, order + self.rng.choice([-1, 1, 2])],
            )
        elif action == "delete_verse":
            db.execute("DELETE FROM verses WHERE id = %s", [self.verse()])
        elif action == "total_verses":
            db.execute("UPDATE chapters SET total_verses = %s WHERE id = %s", [self.rng.randint(0, 4), self.chapter()])
        elif action == "move_chapter":
            db.execute(
                "UPDATE chapters SET book_id = %s WHERE id = %s", [self.pick("SELECT id FROM books"), self.chapter()]
            )
        elif action == "move_verse":
            db.execute("UPDATE verses SET chapter_id = %s WHERE id = %s", [self.chapter(), self.verse()])
        elif action == "reorder_verse":
            db.execute(
                "UPDATE verses SET global_order = global_order + %s WHERE id = %s",
                [self.rng.choice([-1500, -2, 2, 1500]), self.verse()],
            )
        elif action == "insert_chapter":
            book = self.pick("SELECT id FROM books")
            if book is None:
                return
            cid = f"{book}-c{self.counter}"
            n = self.rng.randint(0, 3)
            with db.transaction():
                db.execute(
                    "INSERT INTO chapters (id, book_id, chapter_number, total_verses) VALUES (%s, %s, %s, %s)",
                    [cid, book, 50 + self.counter, self.rng.randint(n, n + 1)],
                )
                db.execute(
                    "INSERT INTO verses (id, chapter_id, verse_number, global_order)"
                    " SELECT %s || '-' || i, %s, i, 900000000 + %s * 100 + i FROM generate_series(1, %s) i",
                    [cid, cid, self.counter, n],
                )
        elif action == "delete_chapter":
            if self.chance(0.5):
                db.execute("DELETE FROM chapters WHERE id = %s", [self.chapter()])
        elif action == "insert_book":
            db.execute(
                "INSERT INTO books (id, bible_version_id, book_number, name) VALUES (%s, %s, %s, 'new')",
                [f"book{self.counter}", self.rng.choice(["A", "B", "EMPTY"]), 10 + self.counter],
            )
        elif action == "delete_book":
            if self.chance(0.3):
                db.execute("DELETE FROM books WHERE id = %s", [self.pick("SELECT id FROM books")])
        else:
            db.execute(
                "UPDATE books SET bible_version_id = %s WHERE id = %s",
                [self.rng.choice(["A", "B", "EMPTY"]), self.pick("SELECT id FROM books")],
            )

    OPS: ClassVar[list[tuple[str, int]]] = [
        ("op_insert_file", 7),
        ("op_file_status", 7),
        ("op_file_make_live", 4),
        ("op_file_move", 4),
        ("op_file_coverage", 4),
        ("op_file_delete", 2),
        ("op_files_bulk", 1),
        ("op_mapping", 6),
        ("op_insert_texts", 5),
        ("op_verse_text", 6),
        ("op_insert_version", 2),
        ("op_version_change", 6),
        ("op_version_hard_delete", 1),
        ("op_structure", 7),
    ]

    def random_op(self) -> None:
        names = list(self.weights)
        weights = [self.weights[n] for n in names]
        name = self.rng.choices(names, weights)[0]
        self.log.append(name)
        try:
            with self.db.transaction():  # a savepoint inside an outer transaction
                getattr(self, name)()
        except (psycopg.errors.IntegrityError, psycopg.errors.NotNullViolation) as exc:
            self.log.append(f"  rejected: {type(exc).__name__}")

    def round(self) -> None:
        ops = self.rng.randint(6, 14)
        if self.chance(0.4):
            with self.db.transaction():
                for _ in range(ops):
                    self.random_op()
        else:
            for _ in range(ops):
                self.random_op()


def check(db: psycopg.Connection, workload: Workload) -> None:
    try:
        b.assert_read_models_match(db)
        b.assert_queue_empty(db)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperations: {workload.log}") from None


def sql_drain(db: psycopg.Connection) -> None:
    b.drain(db)


def python_drain(db: psycopg.Connection) -> None:
    report = drain_queue(db, RefreshPolicy(batch_size=3))
    assert report.failed == []


def concurrent_rebuild(db: psycopg.Connection) -> None:
    db.execute("SELECT refresh_progress_materialized_views_concurrently()")


def full_rebuild(db: psycopg.Connection) -> None:
    db.execute("SELECT refresh_progress_materialized_views_full()")


def run_workload(
    db: psycopg.Connection,
    seed: int,
    final: Callable[[psycopg.Connection], None],
    rounds: int = 5,
    weights: dict[str, int] | None = None,
) -> None:
    workload = Workload(db, seed, weights)
    workload.setup()
    b.drain(db)
    check(db, workload)
    for r in range(rounds):
        workload.round()
        if r < rounds - 1 and workload.chance(0.5):
            workload.log.append("-- drain")
            sql_drain(db)
            check(db, workload)
    workload.log.append("-- final")
    final(db)
    check(db, workload)


@pytest.mark.parametrize("seed", range(25))
def test_random_workload_sql_drain(db, seed):
    run_workload(db, seed, sql_drain)


@pytest.mark.parametrize("seed", [401, 402, 403])
def test_random_workload_structure_heavy(db, seed):
    run_workload(db, seed, sql_drain, rounds=6, weights={"op_structure": 25, "op_version_change": 10})


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_random_workload_python_drain(db, seed):
    run_workload(db, seed, python_drain)


@pytest.mark.parametrize("seed", [201, 202])
def test_random_workload_concurrent_rebuild(db, seed):
    run_workload(db, seed, concurrent_rebuild)


@pytest.mark.parametrize("seed", [301, 302])
def test_random_workload_full_rebuild(db, seed):
    run_workload(db, seed, full_rebuild)


# The materialized-view strategy passes the same correctness suite: its drain
# refreshes every view, its rebuilds are REFRESH [CONCURRENTLY].
@pytest.mark.parametrize("seed", range(8))
def test_matview_strategy_random_workload_sql_drain(matview_db, seed):
    run_workload(matview_db, seed, sql_drain)


@pytest.mark.parametrize("seed", [111, 112])
def test_matview_strategy_random_workload_python_drain(matview_db, seed):
    run_workload(matview_db, seed, python_drain)


@pytest.mark.parametrize("seed", [411])
def test_matview_strategy_random_workload_structure_heavy(matview_db, seed):
    run_workload(matview_db, seed, sql_drain, rounds=6, weights={"op_structure": 25, "op_version_change": 10})


@pytest.mark.parametrize(("seed", "final"), [(211, concurrent_rebuild), (311, full_rebuild)])
def test_matview_strategy_random_workload_rebuilds(matview_db, seed, final):
    run_workload(matview_db, seed, final)


# Chapter-scoped refreshes: file, mapping and text edits only (no version or
# structure change), a drain after every few edits, so most drains refresh
# chapters rather than whole versions; both strategies must match the views.
CHAPTER_EDITS = {
    "op_insert_version": 0,
    "op_version_change": 0,
    "op_version_hard_delete": 0,
    "op_structure": 0,
    "op_files_bulk": 0,
}


def run_chapter_edits(db: psycopg.Connection, seed: int, drain: Callable[[psycopg.Connection], None]) -> None:
    workload = Workload(db, seed, CHAPTER_EDITS)
    workload.setup()
    b.drain(db)
    check(db, workload)
    chapter_scoped = 0
    for _ in range(10):
        for _ in range(workload.rng.randint(1, 3)):
            workload.random_op()
        chapter_scoped += b.chapter_scoped_entries(db)
        workload.log.append("-- drain")
        drain(db)
        check(db, workload)
    assert chapter_scoped > 0, "no drain refreshed a chapter scope"


@pytest.mark.parametrize("seed", range(500, 508))
def test_random_chapter_edits_sql_drain(db, seed):
    run_chapter_edits(db, seed, sql_drain)


@pytest.mark.parametrize("seed", [510, 511, 512])
def test_random_chapter_edits_python_drain(db, seed):
    run_chapter_edits(db, seed, python_drain)


@pytest.mark.parametrize("seed", [520, 521])
def test_matview_strategy_random_chapter_edits(matview_db, seed):
    run_chapter_edits(matview_db, seed, sql_drain)
