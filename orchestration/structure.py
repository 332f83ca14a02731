"""Bible structure (books, chapters, verses) from the shipped KJV versification.

The loader writes one statement per table so the statement-level change-capture
triggers fire once per table, not once per row, and a whole bible loads in well
under a second.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import psycopg

from orchestration.errors import ProgressError

VERSIFICATION_FILE = "versification_kjv.csv"
KJV_BIBLE_VERSION_ID = "kjv"
KJV_NAME = "King James Version"


@dataclass(frozen=True)
class VersificationRow:
    """One chapter of the versification: how many verses it has, and where it sits."""

    book_number: int
    osis_code: str
    book_name: str
    testament: str
    chapter_number: int
    verse_count: int


@dataclass(frozen=True)
class StructureCounts:
    books: int
    chapters: int
    verses: int


def book_id(bible_version_id: str, osis_code: str) -> str:
    return f"{bible_version_id}-{osis_code}"


def chapter_id(bible_version_id: str, osis_code: str, chapter_number: int) -> str:
    return f"{book_id(bible_version_id, osis_code)}-{chapter_number}"


def verse_id(bible_version_id: str, osis_code: str, chapter_number: int, verse_number: int) -> str:
    return f"{chapter_id(bible_version_id, osis_code, chapter_number)}-{verse_number}"


def global_order(book_number: int, chapter_number: int, verse_number: int) -> int:
    """Increasing across a bible in canonical order (no book has 1,000 chapters or verses)."""
    return book_number * 1_000_000 + chapter_number * 1_000 + verse_number


@functools.cache
def _versification() -> tuple[VersificationRow, ...]:
    text = resources.files("orchestration").joinpath("data", VERSIFICATION_FILE).read_text(encoding="utf-8")
    return tuple(
        VersificationRow(
            book_number=int(record["book_number"]),
            osis_code=record["osis_code"],
            book_name=record["book_name"],
            testament=record["testament"],
            chapter_number=int(record["chapter_number"]),
            verse_count=int(record["verse_count"]),
        )
        for record in csv.DictReader(text.splitlines())
    )


def read_versification() -> list[VersificationRow]:
    """The KJV chapters in canonical order (parsed once; each caller gets its own list)."""
    return list(_versification())


def _default_name(bible_version_id: str) -> str:
    if bible_version_id == KJV_BIBLE_VERSION_ID:
        return KJV_NAME
    return f"{bible_version_id} (KJV versification)"


def structure_counts(conn: psycopg.Connection, bible_version_id: str) -> StructureCounts:
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM books b WHERE b.bible_version_id = %(bv)s),
               (SELECT count(*) FROM books b JOIN chapters c ON c.book_id = b.id
                 WHERE b.bible_version_id = %(bv)s),
               (SELECT count(*) FROM books b JOIN chapters c ON c.book_id = b.id
                  JOIN verses v ON v.chapter_id = c.id WHERE b.bible_version_id = %(bv)s)
        """,
        {"bv": bible_version_id},
    ).fetchone()
    assert row is not None
    return StructureCounts(books=row[0], chapters=row[1], verses=row[2])


def load_bible_structure(
    conn: psycopg.Connection,
    bible_version_id: str = KJV_BIBLE_VERSION_ID,
    name: str | None = None,
    chapters_limit: int | None = None,
    *,
    rows: Sequence[VersificationRow] | None = None,
) -> StructureCounts:
    """Inserts a bible version with its books, chapters and verses; a no-op when it exists.

    `chapters_limit` keeps only the first N chapters (small, fast tests); `rows`
    replaces the KJV chapters altogether (the demo's mini bible picks its own).
    """
    chosen = list(rows) if rows is not None else read_versification()
    if chapters_limit is not None:
        chosen = chosen[: max(chapters_limit, 0)]
    with conn.transaction():
        try:
            created = conn.execute(
                "INSERT INTO bible_versions (id, name) VALUES (%s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
                [bible_version_id, name or _default_name(bible_version_id)],
            ).fetchone()
        except psycopg.errors.UniqueViolation as exc:
            raise ProgressError(
                f"cannot create bible version {bible_version_id!r}: another bible version already has "
                f"the name {name or _default_name(bible_version_id)!r}"
            ) from exc
        if created is not None:
            _insert_books(conn, bible_version_id, chosen)
            _insert_chapters(conn, bible_version_id, chosen)
            _insert_verses(conn, bible_version_id)
    return structure_counts(conn, bible_version_id)


def _insert_books(conn: psycopg.Connection, bible_version_id: str, rows: Sequence[VersificationRow]) -> None:
    books = {row.osis_code: row for row in rows}  # first chapter of each book, canonical order kept
    conn.execute(
        """
        INSERT INTO books (id, bible_version_id, book_number, name)
        SELECT b.id, %s, b.book_number, b.name
          FROM unnest(%s::text[], %s::int[], %s::text[]) AS b (id, book_number, name)
        """,
        [
            bible_version_id,
            [book_id(bible_version_id, osis) for osis in books],
            [row.book_number for row in books.values()],
            [row.book_name for row in books.values()],
        ],
    )


def _insert_chapters(conn: psycopg.Connection, bible_version_id: str, rows: Sequence[VersificationRow]) -> None:
    conn.execute(
        """
        INSERT INTO chapters (id, book_id, chapter_number, total_verses)
        SELECT c.id, c.book_id, c.chapter_number, c.total_verses
          FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[])
               AS c (id, book_id, chapter_number, total_verses)
        """,
        [
            [chapter_id(bible_version_id, row.osis_code, row.chapter_number) for row in rows],
            [book_id(bible_version_id, row.osis_code) for row in rows],
            [row.chapter_number for row in rows],
            [row.verse_count for row in rows],
        ],
    )


def _insert_verses(conn: psycopg.Connection, bible_version_id: str) -> None:
    # Verses follow from the chapters just written: generating them server-side
    # keeps 31k rows off the wire. Ids and order match verse_id()/global_order().
    conn.execute(
        """
        INSERT INTO verses (id, chapter_id, verse_number, global_order)
        SELECT c.id || '-' || n, c.id, n,
               b.book_number::bigint * 1000000 + c.chapter_number * 1000 + n
          FROM books b
          JOIN chapters c ON c.book_id = b.id
         CROSS JOIN LATERAL generate_series(1, c.total_verses) AS n
         WHERE b.bible_version_id = %s
         ORDER BY b.book_number, c.chapter_number, n
        """,
        [bible_version_id],
    )
