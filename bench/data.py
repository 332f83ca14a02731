"""Benchmark data: the KJV structure plus audio and text versions with
realistic, mostly partial coverage, generated set-based inside PostgreSQL.

Every row comes from a handful of INSERT ... SELECT statements over
generate_series and random() (seeded with setseed), never from Python loops,
so even size L (1,000 + 1,000 versions, millions of rows) is written in a few
minutes. Ids are derived from md5 of stable names, so a given seed yields the
same ids in every database cloned from the template.

Coverage model (per version):
  * 10% of versions cover the whole bible; about a quarter of the rest cover
    30-90% of the books, the others 1-26% (new or slow projects);
  * a version covers a book's chapters from the first up to a cut-off
    (the whole book 60% of the time), as translation projects do;
  * audio: 60% of versions record chapter files, 25% verse ranges (per chapter,
    30% ending mid-chapter, or one range spanning a whole covered book), 10%
    mix chapter files with per-verse mappings, 5% use per-verse mappings only;
    about 5% of covered chapters also have a file that is not live bible
    audio (pending, archived, failed, video, not bible audio, soft-deleted) and
    2% a second live recording;
  * text: verse_texts for the covered chapters (20% of them stop mid-chapter),
    1% of rows soft-deleted;
  * 1 in 50 versions is soft-deleted.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from orchestration.structure import load_bible_structure

BIBLE = "kjv"


@dataclass(frozen=True)
class Size:
    name: str
    audio_versions: int
    text_versions: int

    @property
    def versions(self) -> int:
        return self.audio_versions + self.text_versions

    @property
    def languages(self) -> int:
        return max(1, self.versions // 4)


SIZES: dict[str, Size] = {
    # XS: a quick size for development (every coverage style, a few seconds per refresh).
    "XS": Size("XS", 4, 4),
    "S": Size("S", 20, 20),
    "M": Size("M", 200, 200),
    "L": Size("L", 1000, 1000),
}

# Verse text of plausible length (sliced to 20..120 characters per verse).
_LOREM = (
    "In the beginning God created the heaven and the earth. And the earth was without form, "
    "and void; and darkness was upon the face of the deep."
)

_PLAN = """
CREATE TEMP TABLE bench_ch AS
SELECT b.book_number, c.id, c.chapter_number, c.total_verses
  FROM chapters c JOIN books b ON b.id = c.book_id
 WHERE b.bible_version_id = %(bible)s;

CREATE TEMP TABLE bench_books AS
SELECT book_number, max(chapter_number) AS chapters FROM bench_ch GROUP BY book_number;

INSERT INTO language_entities (id, name)
SELECT md5('bench-lang-' || i)::uuid, 'Bench language ' || i
  FROM generate_series(1, %(languages)s) AS i;
"""

# One plan per kind: versions, which books they cover and up to which chapter.
_VERSIONS = """
CREATE TEMP TABLE bench_{kind} AS
SELECT i, md5('bench-{kind}-' || i)::uuid AS id,
       md5('bench-lang-' || (1 + (i * 7919) %% %(languages)s))::uuid AS language_entity_id,
       ((i - 1) * 13) %% 20 AS style,  -- a permutation of each block of 20: small sizes get every style
       CASE WHEN i %% 10 = 3 THEN 1.0
            WHEN r1 < 0.25 THEN 0.3 + r2 * 0.6
            ELSE 0.01 + r2 * 0.25 END AS frac,
       i %% 50 = 49 AS deleted
  FROM (SELECT i, random() AS r1, random() AS r2 FROM generate_series(1, %(count)s) AS i) s;

INSERT INTO {kind}_versions (id, language_entity_id, bible_version_id, name, created_at, deleted_at)
SELECT id, language_entity_id, %(bible)s, 'Bench {kind} ' || i,
       timestamptz '2020-01-01 00:00:00+00' + i * interval '1 hour',
       CASE WHEN deleted THEN timestamptz '2024-06-01 00:00:00+00' END
  FROM bench_{kind};

CREATE TEMP TABLE bench_{kind}_books AS
SELECT v.id AS version_id, v.style, b.book_number, b.chapters,
       v.frac >= 1 OR random() < v.frac AS selected,
       CASE WHEN v.frac >= 1 OR random() < 0.6 THEN b.chapters
            ELSE 1 + floor(random() * b.chapters)::int END AS cutoff,
       random() < 0.3 AS span
  FROM bench_{kind} v CROSS JOIN bench_books b;

CREATE TEMP TABLE bench_{kind}_chapters AS
SELECT vb.version_id, vb.style, vb.span, c.book_number, c.id AS chapter_id, c.chapter_number,
       c.total_verses,
       CASE WHEN random() < %(partial)s THEN 1 + floor(random() * c.total_verses)::int
            ELSE c.total_verses END AS last_verse,
       CASE WHEN vb.style < 12 OR (vb.style IN (17, 18) AND c.book_number %% 2 = 1) THEN 'chapter'
            WHEN vb.style BETWEEN 12 AND 16 THEN CASE WHEN vb.span THEN 'span' ELSE 'range' END
            ELSE 'mapping' END AS mode
  FROM bench_{kind}_books vb
  JOIN bench_ch c ON c.book_number = vb.book_number AND c.chapter_number <= vb.cutoff
 WHERE vb.selected;
"""

_AUDIO_ROWS = """
-- One live file per covered chapter: a chapter file, a verse range, or a bare
-- file whose verses come from media_files_verses.
INSERT INTO media_files (id, audio_version_id, media_type, is_bible_audio, upload_status,
                         publish_status, chapter_id, start_verse_id, end_verse_id)
SELECT md5(version_id::text || '/' || chapter_id || '/main')::uuid, version_id,
       'audio', true, 'completed', 'published',
       CASE WHEN mode = 'chapter' THEN chapter_id END,
       CASE WHEN mode = 'range' THEN chapter_id || '-1' END,
       CASE WHEN mode = 'range' THEN chapter_id || '-' || last_verse END
  FROM bench_audio_chapters
 WHERE mode <> 'span';

-- One range over all covered chapters of a book (first verse to last).
INSERT INTO media_files (id, audio_version_id, media_type, is_bible_audio, upload_status,
                         publish_status, start_verse_id, end_verse_id)
SELECT md5(version_id::text || '/' || book_number || '/span')::uuid, version_id,
       'audio', true, 'completed', 'published',
       (array_agg(chapter_id ORDER BY chapter_number))[1] || '-1',
       (array_agg(chapter_id || '-' || total_verses ORDER BY chapter_number DESC))[1]
  FROM bench_audio_chapters
 WHERE mode = 'span'
 GROUP BY version_id, book_number;

-- Files that are not live bible audio, and second live recordings.
INSERT INTO media_files (id, audio_version_id, media_type, is_bible_audio, upload_status,
                         publish_status, chapter_id, deleted_at)
SELECT md5(version_id::text || '/' || chapter_id || '/extra')::uuid, version_id,
       CASE WHEN variant = 3 THEN 'video' ELSE 'audio' END,
       CASE WHEN variant = 4 THEN false WHEN variant = 6 THEN NULL ELSE true END,
       CASE WHEN variant = 2 THEN 'failed' WHEN variant = 7 THEN 'uploading' ELSE 'completed' END,
       CASE WHEN variant = 0 THEN 'pending' WHEN variant = 1 THEN 'archived' ELSE 'published' END,
       chapter_id,
       CASE WHEN variant = 5 THEN timestamptz '2024-06-01 00:00:00+00' END
  FROM (SELECT version_id, chapter_id,
               CASE WHEN r < 0.05 THEN floor(random() * 8)::int ELSE 8 END AS variant
          FROM (SELECT version_id, chapter_id, random() AS r FROM bench_audio_chapters) s
         WHERE r < 0.07) x;

INSERT INTO media_files_verses (id, media_file_id, verse_id, deleted_at)
SELECT {uuid}(), md5(c.version_id::text || '/' || c.chapter_id || '/main')::uuid, v.id,
       CASE WHEN random() < 0.02 THEN timestamptz '2024-06-01 00:00:00+00' END
  FROM bench_audio_chapters c
  JOIN verses v ON v.chapter_id = c.chapter_id AND v.verse_number <= c.last_verse
 WHERE c.mode = 'mapping';
"""

_TEXT_ROWS = """
INSERT INTO verse_texts (id, text_version_id, verse_id, verse_text, deleted_at)
SELECT {uuid}(), c.version_id, v.id,
       substr(%(lorem)s, 1, 20 + (v.verse_number * 37) %% 100),
       CASE WHEN random() < 0.01 THEN timestamptz '2024-06-01 00:00:00+00' END
  FROM bench_text_chapters c
  JOIN verses v ON v.chapter_id = c.chapter_id AND v.verse_number <= c.last_verse;
"""


def _run(conn: psycopg.Connection, statements: str, params: dict | None = None) -> None:
    """Several statements in one round trip (client-side binding allows that)."""
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(statements, params)


# What two generations must agree on to be the same data: every row's stable
# columns (the uuidv7 ids of mappings and verse texts are left out: nothing
# the benchmark changes or reads is picked by them).
_FINGERPRINT = """
SELECT (SELECT md5(string_agg(concat_ws('/', id, audio_version_id, media_type, is_bible_audio, upload_status,
                                        publish_status, chapter_id, start_verse_id, end_verse_id, deleted_at),
                              ',' ORDER BY id)) FROM media_files),
       (SELECT md5(string_agg(concat_ws('/', id, bible_version_id, language_entity_id, name, created_at,
                                        deleted_at), ',' ORDER BY id)) FROM audio_versions),
       (SELECT md5(string_agg(concat_ws('/', id, bible_version_id, language_entity_id, name, created_at,
                                        deleted_at), ',' ORDER BY id)) FROM text_versions),
       (SELECT sum(hashtext(concat_ws('/', media_file_id, verse_id, deleted_at))::bigint) FROM media_files_verses),
       (SELECT sum(hashtext(concat_ws('/', text_version_id, verse_id, verse_text, deleted_at))::bigint)
          FROM verse_texts)
"""


def fingerprint(conn: psycopg.Connection) -> tuple[Any, ...]:
    """A digest of the generated rows: equal on two servers when the same seed
    generated the same data on both."""
    return tuple(conn.execute(_FINGERPRINT).fetchone() or ())


def generate(
    conn: psycopg.Connection, size: Size, seed: float = 0.42, log: Callable[[str], None] = print
) -> dict[str, float | int]:
    """Fills a migrated, empty database with the KJV and the size's versions.

    Change capture is switched off for the session where the role may do so
    (a superuser: session_replication_role = replica); otherwise the triggers
    fire (once per statement) and the queue is emptied at the end: the
    benchmark populates the read models with a full rebuild anyway.
    """
    started = time.perf_counter()
    load_bible_structure(conn, BIBLE)
    with contextlib.suppress(psycopg.Error):
        conn.execute("SET session_replication_role = replica")
    conn.execute("SET maintenance_work_mem = '256MB'")
    params = {"bible": BIBLE, "languages": size.languages, "lorem": _LOREM}
    # Time-ordered ids keep the primary-key index appends sequential (PostgreSQL 18).
    uuid_function = "uuidv7" if conn.info.server_version >= 180000 else "gen_random_uuid"
    with conn.transaction():
        conn.execute("SELECT setseed(%s)", [seed])
        _run(conn, _PLAN, params)
        for kind, count, partial in (("audio", size.audio_versions, 0.3), ("text", size.text_versions, 0.2)):
            _run(conn, _VERSIONS.format(kind=kind), params | {"count": count, "partial": partial})
        step = time.perf_counter()
        _run(conn, _AUDIO_ROWS.format(uuid=uuid_function))
        log(f"audio files and mappings written in {time.perf_counter() - step:.1f}s")
        step = time.perf_counter()
        _run(conn, _TEXT_ROWS.format(uuid=uuid_function), params)
        log(f"verse_texts written in {time.perf_counter() - step:.1f}s")
        conn.execute("DELETE FROM progress_refresh_queue")
    conn.execute("RESET session_replication_role")
    for table in (
        "bench_ch",
        "bench_books",
        "bench_audio",
        "bench_text",
        "bench_audio_books",
        "bench_text_books",
        "bench_audio_chapters",
        "bench_text_chapters",
    ):
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    step = time.perf_counter()
    conn.execute("VACUUM (ANALYZE)")
    log(f"VACUUM ANALYZE in {time.perf_counter() - step:.1f}s")
    counts = dict(
        zip(
            ("audio_versions", "text_versions", "media_files", "media_files_verses", "verse_texts", "verses"),
            conn.execute(
                """SELECT (SELECT count(*) FROM audio_versions), (SELECT count(*) FROM text_versions),
                      (SELECT count(*) FROM media_files), (SELECT count(*) FROM media_files_verses),
                      (SELECT count(*) FROM verse_texts), (SELECT count(*) FROM verses)"""
            ).fetchone()
            or (),
            strict=True,
        )
    )
    counts["seconds"] = round(time.perf_counter() - started, 2)
    return counts
