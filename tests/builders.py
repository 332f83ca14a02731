"""Hand-made base data for tests, built concisely, plus drain and equality helpers.

A bible is written as a compact spec: ``{"GEN": [3, 2], "EXO": [4]}`` is a
book GEN with chapter 1 of 3 verses and chapter 2 of 2 verses, then a book EXO
with one chapter of 4 verses. Ids are readable: ``A-GEN``, ``A-GEN-1``,
``A-GEN-1-3``. ``global_order`` is ``book_number * 1_000_000 + chapter * 1_000
+ verse`` in every bible version, so two bible versions built from similar specs
have overlapping global orders (which is what ranges reaching across bible
versions must cope with).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from orchestration.db import gateway
from orchestration.read_models import READ_MODELS

UNSET: Any = object()


def order_of(book_number: int, chapter_number: int, verse_number: int) -> int:
    return book_number * 1_000_000 + chapter_number * 1_000 + verse_number


@dataclass
class Bible:
    """Ids of one hand-built bible version."""

    id: str
    books: dict[str, str] = field(default_factory=dict)  # code -> book id
    chapters: dict[tuple[str, int], str] = field(default_factory=dict)  # (code, n) -> chapter id
    verses: dict[tuple[str, int, int], str] = field(default_factory=dict)  # (code, c, v) -> verse id

    def book(self, code: str) -> str:
        return self.books[code]

    def chapter(self, code: str, number: int) -> str:
        return self.chapters[(code, number)]

    def verse(self, code: str, chapter: int, verse: int) -> str:
        return self.verses[(code, chapter, verse)]

    def chapter_verses(self, code: str, number: int) -> list[str]:
        return [vid for (b, c, _), vid in sorted(self.verses.items()) if b == code and c == number]

    def all_verses(self) -> list[str]:
        return list(self.verses.values())


def bible(
    conn: psycopg.Connection,
    bible_version_id: str,
    spec: Mapping[str, Sequence[int]] | None = None,
    *,
    total_verses: Mapping[tuple[str, int], int] | None = None,
) -> Bible:
    """Inserts a bible version with books, chapters and verses from a compact spec.

    ``total_verses`` overrides ``chapters.total_verses`` for some chapters (by
    default it is the number of verses built)."""
    spec = spec or {}
    total_verses = total_verses or {}
    result = Bible(bible_version_id)
    conn.execute(
        "INSERT INTO bible_versions (id, name) VALUES (%s, %s)", [bible_version_id, f"Bible {bible_version_id}"]
    )
    books, chapters, verses = [], [], []
    for book_number, (code, chapter_sizes) in enumerate(spec.items(), start=1):
        book_id = f"{bible_version_id}-{code}"
        result.books[code] = book_id
        books.append((book_id, bible_version_id, book_number, code))
        for chapter_number, size in enumerate(chapter_sizes, start=1):
            chapter_id = f"{book_id}-{chapter_number}"
            result.chapters[(code, chapter_number)] = chapter_id
            chapters.append((chapter_id, book_id, chapter_number, total_verses.get((code, chapter_number), size)))
            for verse_number in range(1, size + 1):
                verse_id = f"{chapter_id}-{verse_number}"
                result.verses[(code, chapter_number, verse_number)] = verse_id
                verses.append((verse_id, chapter_id, verse_number, order_of(book_number, chapter_number, verse_number)))
    with conn.transaction():
        if books:
            conn.execute(
                "INSERT INTO books (id, bible_version_id, book_number, name)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[])",
                [list(col) for col in zip(*books, strict=True)],
            )
        if chapters:
            conn.execute(
                "INSERT INTO chapters (id, book_id, chapter_number, total_verses)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[])",
                [list(col) for col in zip(*chapters, strict=True)],
            )
        if verses:
            conn.execute(
                "INSERT INTO verses (id, chapter_id, verse_number, global_order)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::bigint[])",
                [list(col) for col in zip(*verses, strict=True)],
            )
    return result


def language(conn: psycopg.Connection, name: str | None = None, *, id: uuid.UUID | None = None) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO language_entities (id, name) VALUES (%s, %s) RETURNING id",
        [id or uuid.uuid4(), name or "language"],
    ).fetchone()
    assert row is not None
    return row[0]


def _version(
    conn: psycopg.Connection,
    table: str,
    bible_version_id: str | None,
    language_entity_id: uuid.UUID | None,
    name: str | None,
    created_at: Any,
    deleted_at: datetime | None,
    id: uuid.UUID | None,
) -> uuid.UUID:
    columns = ["id", "language_entity_id", "bible_version_id", "name", "deleted_at"]
    values: list[Any] = [id or uuid.uuid4(), language_entity_id, bible_version_id, name or table, deleted_at]
    if created_at is not UNSET:
        columns.append("created_at")
        values.append(created_at)
    row = conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        values,
    ).fetchone()
    assert row is not None
    return row[0]


def audio_version(
    conn: psycopg.Connection,
    bible_version_id: str | None,
    language_entity_id: uuid.UUID | None = None,
    *,
    name: str | None = None,
    created_at: Any = UNSET,
    deleted_at: datetime | None = None,
    id: uuid.UUID | None = None,
) -> uuid.UUID:
    return _version(conn, "audio_versions", bible_version_id, language_entity_id, name, created_at, deleted_at, id)


def text_version(
    conn: psycopg.Connection,
    bible_version_id: str | None,
    language_entity_id: uuid.UUID | None = None,
    *,
    name: str | None = None,
    created_at: Any = UNSET,
    deleted_at: datetime | None = None,
    id: uuid.UUID | None = None,
) -> uuid.UUID:
    return _version(conn, "text_versions", bible_version_id, language_entity_id, name, created_at, deleted_at, id)


def media_file(
    conn: psycopg.Connection,
    audio_version_id: uuid.UUID | None,
    *,
    chapter: str | None = None,
    start: str | None = None,
    end: str | None = None,
    verses: Iterable[str] = (),
    media_type: str = "audio",
    is_bible_audio: bool | None = True,
    upload_status: str = "completed",
    publish_status: str = "published",
    deleted_at: datetime | None = None,
    id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A media file; by default live bible audio. ``verses`` adds live mappings."""
    row = conn.execute(
        "INSERT INTO media_files (id, audio_version_id, media_type, is_bible_audio, upload_status,"
        " publish_status, chapter_id, start_verse_id, end_verse_id, deleted_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        [
            id or uuid.uuid4(),
            audio_version_id,
            media_type,
            is_bible_audio,
            upload_status,
            publish_status,
            chapter,
            start,
            end,
            deleted_at,
        ],
    ).fetchone()
    assert row is not None
    file_id = row[0]
    verse_list = list(verses)
    if verse_list:
        mappings(conn, file_id, verse_list)
    return file_id


def mapping(
    conn: psycopg.Connection, media_file_id: uuid.UUID, verse_id: str, *, deleted_at: datetime | None = None
) -> uuid.UUID:
    row = conn.execute(
        "INSERT INTO media_files_verses (id, media_file_id, verse_id, deleted_at)"
        " VALUES (gen_random_uuid(), %s, %s, %s) RETURNING id",
        [media_file_id, verse_id, deleted_at],
    ).fetchone()
    assert row is not None
    return row[0]


def mappings(conn: psycopg.Connection, media_file_id: uuid.UUID, verse_ids: Sequence[str]) -> list[uuid.UUID]:
    """Live mappings of one file, in one statement."""
    return [
        r[0]
        for r in conn.execute(
            "INSERT INTO media_files_verses (id, media_file_id, verse_id)"
            " SELECT gen_random_uuid(), %s, v FROM unnest(%s::text[]) AS v RETURNING id",
            [media_file_id, list(verse_ids)],
        )
    ]


def verse_texts(
    conn: psycopg.Connection,
    text_version_id: uuid.UUID,
    verse_ids: Sequence[str],
    *,
    deleted_at: datetime | None = None,
) -> list[uuid.UUID]:
    """Verse texts of one text version, in one statement."""
    return [
        r[0]
        for r in conn.execute(
            "INSERT INTO verse_texts (id, text_version_id, verse_id, verse_text, deleted_at)"
            " SELECT gen_random_uuid(), %s, v, 'text of ' || v, %s FROM unnest(%s::text[]) AS v RETURNING id",
            [text_version_id, deleted_at, list(verse_ids)],
        )
    ]


# Queue, drain and checks ------------------------------------------------------


def queued(conn: psycopg.Connection) -> set[tuple[str, uuid.UUID]]:
    return {(k, v) for k, v in conn.execute("SELECT kind, version_id FROM progress_refresh_queue")}


def chapter_scopes(conn: psycopg.Connection) -> dict[tuple[str, uuid.UUID], list[str] | None]:
    """Queued versions and the chapters each is queued for, sorted (a scope is a
    set; None: the whole version)."""
    return {
        (k, v): None if c is None else sorted(c)
        for k, v, c in conn.execute("SELECT kind, version_id, chapter_ids FROM progress_refresh_queue")
    }


def chapter_scoped_entries(conn: psycopg.Connection) -> int:
    """Queued versions that a drain refreshes by chapter rather than whole."""
    return sum(1 for scope in chapter_scopes(conn).values() if scope is not None)


def clear_queue(conn: psycopg.Connection) -> None:
    conn.execute("DELETE FROM progress_refresh_queue")


def drain(conn: psycopg.Connection, max_calls: int = 1000) -> list[tuple[str, uuid.UUID]]:
    """Calls the SQL API's drain until it returns no rows; returns every version refreshed."""
    refreshed: list[tuple[str, uuid.UUID]] = []
    for _ in range(max_calls):
        rows = [(k, v) for k, v in conn.execute("SELECT * FROM drain_progress_refresh_queue()")]
        if not rows:
            return refreshed
        refreshed.extend(rows)
    raise AssertionError(f"drain_progress_refresh_queue() still returned rows after {max_calls} calls")


def assert_read_models_match(conn: psycopg.Connection) -> None:
    """Every read model equals its logical view, row for row."""
    counts = gateway.mismatches_by_read_model(conn)
    bad = {name: n for name, n in counts.items() if n}
    if bad:
        details = []
        for m in READ_MODELS:
            if m.name not in bad:
                continue
            extra = conn.execute(
                sql.SQL("SELECT * FROM {} EXCEPT ALL SELECT * FROM {} LIMIT 5").format(
                    sql.Identifier(m.name), sql.Identifier(m.logical_view)
                )
            ).fetchall()
            missing = conn.execute(
                sql.SQL("SELECT * FROM {} EXCEPT ALL SELECT * FROM {} LIMIT 5").format(
                    sql.Identifier(m.logical_view), sql.Identifier(m.name)
                )
            ).fetchall()
            details.append(f"{m.name}: only stored {extra}, only in view {missing}")
        raise AssertionError("read models differ from their logical views: " + "; ".join(details))


def assert_queue_empty(conn: psycopg.Connection) -> None:
    rows = conn.execute("SELECT kind, version_id, attempts, last_error FROM progress_refresh_queue").fetchall()
    assert rows == [], f"queue not empty: {rows}"
    dead = conn.execute("SELECT kind, version_id, last_error FROM progress_refresh_dead_letter").fetchall()
    assert dead == [], f"dead letters: {dead}"


# Reading read models -------------------------------------------------------------


def fetch(conn: psycopg.Connection, query: str, params: Sequence[Any] | None = None) -> list[tuple]:
    return conn.execute(query, params).fetchall()


def verse_ids(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            sql.SQL("SELECT verse_id FROM {} WHERE {} = %s").format(
                sql.Identifier(f"mv_{kind}_verse_coverage"), sql.Identifier(f"{kind}_version_id")
            ),
            [version_id],
        )
    }


def chapter_rows(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> dict[str, tuple]:
    """chapter_id -> the remaining columns (audio: covered, total, has_any, complete;
    text: with_text, total, complete)."""
    rows = conn.execute(
        sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
            sql.Identifier(f"mv_{kind}_chapter_coverage"), sql.Identifier(f"{kind}_version_id")
        ),
        [version_id],
    ).fetchall()
    return {r[1]: tuple(r[2:]) for r in rows}


def book_rows(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> dict[str, tuple]:
    """book_id -> (complete_chapters, total_chapters, is_complete)."""
    rows = conn.execute(
        sql.SQL("SELECT book_id, complete_chapters, total_chapters, is_complete FROM {} WHERE {} = %s").format(
            sql.Identifier(f"mv_{kind}_book_coverage"), sql.Identifier(f"{kind}_version_id")
        ),
        [version_id],
    ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}


def summary(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> dict[str, Any] | None:
    cur = conn.execute(
        sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
            sql.Identifier(f"mv_{kind}_version_progress_summary"), sql.Identifier(f"{kind}_version_id")
        ),
        [version_id],
    )
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return {d.name: value for d, value in zip(cur.description, row, strict=True)}


def best(conn: psycopg.Connection, kind: str, language_entity_id: uuid.UUID) -> uuid.UUID | None:
    row = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE language_entity_id = %s").format(
            sql.Identifier(f"{kind}_version_id"), sql.Identifier(f"language_entity_best_{kind}_version")
        ),
        [language_entity_id],
    ).fetchone()
    return row[0] if row else None


def rows_of_version(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> dict[str, int]:
    """How many rows each read model of the kind holds for a version (best: rows naming it)."""
    counts = {}
    for m in READ_MODELS:
        if m.kind != kind:
            continue
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                sql.Identifier(m.name), sql.Identifier(f"{kind}_version_id")
            ),
            [version_id],
        ).fetchone()
        counts[m.name] = row[0] if row else 0
    return counts
