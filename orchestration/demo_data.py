"""A deterministic demo data set: the KJV, a tiny second bible, and audio and text
versions whose progress exercises every rule of SPEC section 3 (chapter files,
verse ranges, per-verse mappings, files that are not live bible audio, soft
deletes, coverage reaching into another bible version).

Demo rows are recognisable by names starting with "Demo "; the whole demo is
written in one transaction, so demo languages present means the demo is present.
Rows go in with COPY, one statement per table and version, so the statement-level
change-capture triggers fire a few dozen times in total, not once per row.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from orchestration.structure import (
    KJV_BIBLE_VERSION_ID,
    VersificationRow,
    chapter_id,
    load_bible_structure,
    read_versification,
    verse_id,
)

DEMO_PREFIX = "Demo "
DEMO_NAME_PATTERN = DEMO_PREFIX + "%"
MINI_BIBLE_VERSION_ID = "demo-mini"
MINI_BIBLE_NAME = "Demo Mini Bible"
# Serialises concurrent seeders so the second one finds the first one's demo.
SEED_LOCK_KEY = 7_370_214_002
LANGUAGE_NAMES = ("Swahili", "Quechua", "Tagalog", "Yoruba", "Nepali")
# Fixed timestamps keep the demo identical from run to run.
CREATED_BASE = datetime(2024, 1, 1, tzinfo=UTC)
DELETED_AT = datetime(2024, 6, 1, tzinfo=UTC)

AUDIO_STYLES = ("chapter files", "verse ranges", "verse mappings")
TEXT_STYLES = ("whole books", "scattered chapters", "partial chapters")
FULL_BIBLE_STYLE = "whole bible"

# Ways a media file fails to be live bible audio (SPEC section 3); each must
# leave the read models untouched.
NOT_LIVE_VARIANTS: dict[str, dict[str, Any]] = {
    "unpublished": {"publish_status": "pending"},
    "archived": {"publish_status": "archived"},
    "failed upload": {"upload_status": "failed"},
    "still uploading": {"upload_status": "uploading"},
    "video": {"media_type": "video"},
    "not bible audio": {"is_bible_audio": False},
    "bible audio unknown": {"is_bible_audio": None},
    "soft-deleted": {"deleted_at": DELETED_AT},
}

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class DemoCounts:
    languages: int
    audio_versions: int
    text_versions: int
    media_files: int
    mappings: int
    verse_texts: int

    def __str__(self) -> str:
        return (
            f"{self.languages:,} languages, {self.audio_versions:,} audio and {self.text_versions:,} text "
            f"versions, {self.media_files:,} media files, {self.mappings:,} verse mappings, "
            f"{self.verse_texts:,} verse texts"
        )


# Row shapes, field names = column names, so each COPY's column list comes from here.
class LanguageRow(NamedTuple):
    id: uuid.UUID
    name: str


class VersionRow(NamedTuple):
    id: uuid.UUID
    language_entity_id: uuid.UUID
    bible_version_id: str
    name: str
    created_at: datetime
    deleted_at: datetime | None


class MediaFileRow(NamedTuple):
    id: uuid.UUID
    audio_version_id: uuid.UUID
    media_type: str
    is_bible_audio: bool | None
    upload_status: str
    publish_status: str
    chapter_id: str | None
    start_verse_id: str | None
    end_verse_id: str | None
    deleted_at: datetime | None


class MappingRow(NamedTuple):
    id: uuid.UUID
    media_file_id: uuid.UUID
    verse_id: str
    deleted_at: datetime | None


class VerseTextRow(NamedTuple):
    id: uuid.UUID
    text_version_id: uuid.UUID
    verse_id: str
    verse_text: str
    deleted_at: datetime | None


@dataclass(frozen=True)
class Chapter:
    bible_version_id: str
    row: VersificationRow

    @property
    def id(self) -> str:
        return chapter_id(self.bible_version_id, self.row.osis_code, self.row.chapter_number)

    @property
    def verse_count(self) -> int:
        return self.row.verse_count

    def verse(self, number: int) -> str:
        return verse_id(self.bible_version_id, self.row.osis_code, self.row.chapter_number, number)

    def verse_numbers(self) -> range:
        return range(1, self.row.verse_count + 1)


@dataclass(frozen=True)
class Bible:
    id: str
    chapters: tuple[Chapter, ...]

    @classmethod
    def of(cls, bible_version_id: str, rows: Iterable[VersificationRow]) -> Bible:
        return cls(bible_version_id, tuple(Chapter(bible_version_id, row) for row in rows))

    def books(self) -> list[tuple[Chapter, ...]]:
        """Chapters grouped by book, canonical order."""
        grouped: dict[str, list[Chapter]] = {}
        for chapter in self.chapters:
            grouped.setdefault(chapter.row.osis_code, []).append(chapter)
        return [tuple(chapters) for chapters in grouped.values()]


def new_id(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def mini_bible_rows() -> list[VersificationRow]:
    """The first three chapters of the first three books: small, several books."""
    return [row for row in read_versification() if row.book_number <= 3 and row.chapter_number <= 3]


# ---------------------------------------------------------------------------
# Audio: one version's media files and per-verse mappings


class AudioVersionPlan:
    """Collects the files and mappings of one audio version."""

    def __init__(self, rng: random.Random, version: VersionRow, own: Bible, other: Bible) -> None:
        self.rng = rng
        self.version = version
        self.own = own
        self.other = other
        self.files: list[MediaFileRow] = []
        self.mappings: list[MappingRow] = []

    def add_file(
        self,
        *,
        chapter: str | None = None,
        start: str | None = None,
        end: str | None = None,
        **not_live: Any,
    ) -> uuid.UUID:
        live: dict[str, Any] = {
            "media_type": "audio",
            "is_bible_audio": True,
            "upload_status": "completed",
            "publish_status": "published",
            "deleted_at": None,
        }
        columns = live | not_live
        file = MediaFileRow(
            id=new_id(self.rng),
            audio_version_id=self.version.id,
            chapter_id=chapter,
            start_verse_id=start,
            end_verse_id=end,
            **columns,
        )
        self.files.append(file)
        return file.id

    def map_verses(self, file_id: uuid.UUID, verses: Iterable[str], deleted: Iterable[str] = ()) -> None:
        soft_deleted = set(deleted)
        for verse in verses:
            self.mappings.append(
                MappingRow(new_id(self.rng), file_id, verse, DELETED_AT if verse in soft_deleted else None)
            )

    def some_books(self, low: float, high: float) -> list[tuple[Chapter, ...]]:
        books = self.own.books()
        count = max(1, round(len(books) * self.rng.uniform(low, high)))
        return sorted(self.rng.sample(books, count), key=lambda book: book[0].row.book_number)

    def leading_chapters(self, book: tuple[Chapter, ...]) -> tuple[Chapter, ...]:
        """The whole book half the time, else its first few chapters."""
        if self.rng.random() < 0.5:
            return book
        return book[: self.rng.randint(1, len(book))]

    # Coverage styles -------------------------------------------------------

    def whole_bible(self) -> None:
        for chapter in self.own.chapters:
            self.add_file(chapter=chapter.id)

    def chapter_files(self) -> None:
        for book in self.some_books(0.1, 0.5):
            for chapter in self.leading_chapters(book):
                self.add_file(chapter=chapter.id)
        # Chapter rows keep coverage that points into another bible version.
        self.add_file(chapter=self.other.chapters[0].id)

    def verse_ranges(self) -> None:
        for book in self.some_books(0.1, 0.4):
            chapters = self.leading_chapters(book)
            if self.rng.random() < 0.3:
                # One recording spanning several chapters.
                self.add_file(start=chapters[0].verse(1), end=chapters[-1].verse(chapters[-1].verse_count))
                continue
            for chapter in chapters:
                last = chapter.verse_count if self.rng.random() < 0.7 else self.rng.randint(1, chapter.verse_count)
                self.add_file(start=chapter.verse(1), end=chapter.verse(last))
        books = self.own.books()
        if len(books) > 1:
            # Crosses a book boundary: the end of one book into the next.
            index = self.rng.randrange(len(books) - 1)
            before, after = books[index][-1], books[index + 1][0]
            self.add_file(
                start=before.verse(max(1, before.verse_count - 2)), end=after.verse(min(3, after.verse_count))
            )
        single = self.rng.choice(self.own.chapters)
        self.add_file(start=single.verse(1), end=None)  # no end: the start verse alone
        reversed_in = self.rng.choice(self.own.chapters)
        self.add_file(start=reversed_in.verse(min(5, reversed_in.verse_count)), end=reversed_in.verse(1))
        # Ends in the other bible: still covers the start verse's bible between the two orders.
        self.add_file(start=self.own.chapters[0].verse(1), end=self.other.chapters[0].verse(5))

    def verse_mappings(self) -> None:
        mapped_chapters = [chapter for book in self.some_books(0.05, 0.2) for chapter in self.leading_chapters(book)]
        for index, chapter in enumerate(mapped_chapters):
            verses = [chapter.verse(n) for n in chapter.verse_numbers()]
            if self.rng.random() < 0.3:
                verses = [verse for verse in verses if self.rng.random() < 0.8] or verses[:1]
            deleted: list[str] = []
            if index == 0 or self.rng.random() < 0.2:
                deleted = [verses[-1]]  # a soft-deleted mapping uncovers its verse
            # The last file is also a chapter file: both sources overlap, counted once.
            overlapping_chapter = chapter.id if index == len(mapped_chapters) - 1 else None
            file_id = self.add_file(chapter=overlapping_chapter)
            self.map_verses(file_id, verses, deleted)

    def not_live_files(self, variants: Sequence[str]) -> None:
        """Files that must not count, pointing at chapters that may be uncovered otherwise."""
        for variant in variants:
            chapter = self.rng.choice(self.own.chapters)
            file_id = self.add_file(chapter=chapter.id, **NOT_LIVE_VARIANTS[variant])
            if variant == "unpublished":
                # Mappings of a file that is not live do not count either.
                self.map_verses(file_id, [chapter.verse(n) for n in range(1, min(3, chapter.verse_count) + 1)])


def plan_audio_version(
    rng: random.Random, version: VersionRow, style: str, own: Bible, other: Bible, every_not_live: bool
) -> AudioVersionPlan:
    plan = AudioVersionPlan(rng, version, own, other)
    build = {
        FULL_BIBLE_STYLE: plan.whole_bible,
        "chapter files": plan.chapter_files,
        "verse ranges": plan.verse_ranges,
        "verse mappings": plan.verse_mappings,
    }[style]
    build()
    variants = list(NOT_LIVE_VARIANTS)
    plan.not_live_files(variants if every_not_live else rng.sample(variants, rng.randint(2, 4)))
    return plan


# ---------------------------------------------------------------------------
# Text: one version's verse texts


def choose_text_verses(rng: random.Random, style: str, own: Bible) -> list[tuple[Chapter, int]]:
    if style == FULL_BIBLE_STYLE:
        return [(chapter, n) for chapter in own.chapters for n in chapter.verse_numbers()]
    if style == "whole books":
        books = own.books()
        chosen = rng.sample(books, max(1, round(len(books) * rng.uniform(0.03, 0.2))))
        return [(chapter, n) for book in chosen for chapter in book for n in chapter.verse_numbers()]
    chapters = rng.sample(own.chapters, max(1, round(len(own.chapters) * rng.uniform(0.05, 0.35))))
    if style == "scattered chapters":
        return [(chapter, n) for chapter in chapters for n in chapter.verse_numbers()]
    # "partial chapters": most chapters lack some verses, a few are complete.
    keep = rng.uniform(0.6, 0.95)
    return [
        (chapter, n)
        for chapter in chapters
        for n in chapter.verse_numbers()
        if n == 1 or rng.random() < keep or chapter.verse_count < 3
    ]


def plan_verse_texts(
    rng: random.Random, version: VersionRow, style: str, own: Bible, other: Bible
) -> list[VerseTextRow]:
    chosen = choose_text_verses(rng, style, own)
    if style == "scattered chapters":
        # Text rows keep coverage wherever they point, even into another bible.
        chosen += [(other.chapters[0], n) for n in range(1, min(5, other.chapters[0].verse_count) + 1)]
    # A complete version stays complete; the others lose a few rows to soft deletes.
    delete_rate = 0.0 if style == FULL_BIBLE_STYLE else 0.015
    rows = [
        VerseTextRow(
            id=new_id(rng),
            text_version_id=version.id,
            verse_id=chapter.verse(n),
            verse_text=f"{chapter.row.book_name} {chapter.row.chapter_number}:{n} ({version.name})",
            deleted_at=DELETED_AT if rng.random() < delete_rate else None,
        )
        for chapter, n in chosen
    ]
    if delete_rate and rows and all(row.deleted_at is None for row in rows):
        rows[-1] = rows[-1]._replace(deleted_at=DELETED_AT)
    return rows


# ---------------------------------------------------------------------------
# Versions


@dataclass(frozen=True)
class PlannedVersion:
    row: VersionRow
    style: str
    bible: Bible
    other: Bible


def plan_versions(
    rng: random.Random,
    kind: str,
    count: int,
    styles: Sequence[str],
    languages: Sequence[LanguageRow],
    kjv: Bible,
    mini: Bible,
) -> list[PlannedVersion]:
    """The first version is a complete bible; styles cycle after it; every fifth version
    uses the mini bible; the last one is soft-deleted (when there are at least two)."""
    language_offset = rng.randrange(len(languages))
    planned = []
    for index in range(count):
        style = FULL_BIBLE_STYLE if index == 0 else styles[(index - 1) % len(styles)]
        own, other = (mini, kjv) if index % 5 == 4 else (kjv, mini)
        language = languages[(index + language_offset) % len(languages)]
        deleted = count > 1 and index == count - 1
        label = language.name.removeprefix(DEMO_PREFIX)
        on_mini = " (mini bible)" if own is mini else ""
        name = f"{DEMO_PREFIX}{kind} {index + 1:02d}: {label}, {style}{on_mini}" + (" [deleted]" if deleted else "")
        row = VersionRow(
            id=new_id(rng),
            language_entity_id=language.id,
            bible_version_id=own.id,
            name=name,
            created_at=CREATED_BASE + timedelta(days=index, hours=rng.randrange(24)),
            deleted_at=DELETED_AT if deleted else None,
        )
        planned.append(PlannedVersion(row, style, own, other))
    return planned


# ---------------------------------------------------------------------------
# Database


def copy_rows(conn: psycopg.Connection, table: str, rows: Sequence[Any]) -> None:
    """One COPY statement for all rows (so one statement-level trigger firing);
    rows are NamedTuples whose field names are the column names."""
    if not rows:
        return
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, rows[0]._fields))
    )
    with conn.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def demo_present(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM bible_versions WHERE id = %s)
           AND EXISTS (SELECT 1 FROM language_entities WHERE name LIKE %s)
        """,
        [KJV_BIBLE_VERSION_ID, DEMO_NAME_PATTERN],
    ).fetchone()
    return bool(row and row[0])


def count_demo(conn: psycopg.Connection) -> DemoCounts:
    row = conn.execute(
        """
        WITH demo_audio AS (SELECT id FROM audio_versions WHERE name LIKE %(demo)s),
             demo_text AS (SELECT id FROM text_versions WHERE name LIKE %(demo)s),
             demo_files AS (SELECT id FROM media_files WHERE audio_version_id IN (SELECT id FROM demo_audio))
        SELECT (SELECT count(*) FROM language_entities WHERE name LIKE %(demo)s),
               (SELECT count(*) FROM demo_audio),
               (SELECT count(*) FROM demo_text),
               (SELECT count(*) FROM demo_files),
               (SELECT count(*) FROM media_files_verses WHERE media_file_id IN (SELECT id FROM demo_files)),
               (SELECT count(*) FROM verse_texts WHERE text_version_id IN (SELECT id FROM demo_text))
        """,
        {"demo": DEMO_NAME_PATTERN},
    ).fetchone()
    assert row is not None
    return DemoCounts(*row)


def seed_demo(
    conn: psycopg.Connection,
    audio_versions: int = 12,
    text_versions: int = 12,
    seed: int = 7,
    progress: ProgressCallback | None = None,
) -> DemoCounts:
    """Loads the demo (idempotent: an existing demo is counted, not duplicated)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEED_LOCK_KEY])
        if demo_present(conn):
            return count_demo(conn)
        load_bible_structure(conn, KJV_BIBLE_VERSION_ID)
        load_bible_structure(conn, MINI_BIBLE_VERSION_ID, MINI_BIBLE_NAME, rows=mini_bible_rows())
        kjv = Bible.of(KJV_BIBLE_VERSION_ID, read_versification())
        mini = Bible.of(MINI_BIBLE_VERSION_ID, mini_bible_rows())

        rng = random.Random(seed)
        languages = [LanguageRow(new_id(rng), DEMO_PREFIX + name) for name in LANGUAGE_NAMES]
        copy_rows(conn, "language_entities", languages)
        audio = plan_versions(rng, "Audio", audio_versions, AUDIO_STYLES, languages, kjv, mini)
        text = plan_versions(rng, "Text", text_versions, TEXT_STYLES, languages, kjv, mini)
        copy_rows(conn, "audio_versions", [version.row for version in audio])
        copy_rows(conn, "text_versions", [version.row for version in text])

        total = len(audio) + len(text)
        if progress:
            progress(0, total)
        for done, version in enumerate(audio, start=1):
            # The second version shows every way a file fails to count.
            plan = plan_audio_version(rng, version.row, version.style, version.bible, version.other, done == 2)
            copy_rows(conn, "media_files", plan.files)
            copy_rows(conn, "media_files_verses", plan.mappings)
            if progress:
                progress(done, total)
        for done, version in enumerate(text, start=len(audio) + 1):
            rows = plan_verse_texts(rng, version.row, version.style, version.bible, version.other)
            copy_rows(conn, "verse_texts", rows)
            if progress:
                progress(done, total)
        return count_demo(conn)
