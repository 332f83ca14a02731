"""The measurements: each one runs the same operation on both strategies'
databases (cloned from one template, so the same rows), interleaved rep by
rep, with the first strategy alternating, and keeps every sample.

"ours" is the default `table` strategy (per-version refresh); "baseline" is the
`matview` strategy (the seed's materialized views, REFRESH [CONCURRENTLY]).
For change capture the baseline is the same writes with the capture triggers
disabled (the seed had none).
"""

from __future__ import annotations

import contextlib
import functools
import json
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from orchestration.db import gateway

BASELINE = "matview"
OURS = "table"
T = TypeVar("T")


@dataclass
class Metric:
    id: str
    group: str
    label: str
    unit: str  # "ms", "rows" or "bytes"
    baseline_label: str
    ours_label: str
    baseline: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline) if self.baseline else None

    @property
    def ours_median(self) -> float | None:
        return statistics.median(self.ours) if self.ours else None

    @property
    def ratio(self) -> float | None:
        """ours / baseline (below 1: ours is cheaper)."""
        b, o = self.baseline_median, self.ours_median
        if b is None or o is None or b == 0:
            return None
        return o / b

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "label": self.label,
            "unit": self.unit,
            "baseline": {"label": self.baseline_label, "median": self.baseline_median, "samples": self.baseline},
            "ours": {"label": self.ours_label, "median": self.ours_median, "samples": self.ours},
            "ratio": self.ratio,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass
class WriteSample:
    seconds: float
    rows_written: int
    wal_bytes: int
    wal_fpi: int
    wal_bytes_server: int
    result: list[tuple]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Session:
    """One strategy's database, with the read-model names it must account for."""

    def __init__(self, strategy: str, conn: psycopg.Connection) -> None:
        self.strategy = strategy
        self.conn = conn
        self.read_models = [
            r[0] for r in conn.execute("SELECT stored_name FROM progress_read_model_definitions ORDER BY install_order")
        ]
        # Per-backend WAL statistics exist from PostgreSQL 18; before, the
        # server-wide LSN difference stands in (other sessions' WAL included).
        self.backend_wal = conn.info.server_version >= 180000

    def execute(self, query: Any, params: Any = None) -> list[tuple]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def timed(self, query: Any, params: Any = None) -> tuple[float, list[tuple]]:
        started = time.perf_counter()
        rows = self.execute(query, params)
        return time.perf_counter() - started, rows

    def drain(self) -> tuple[float, int]:
        """Drains the queue through the SQL API until a call returns nothing."""
        started = time.perf_counter()
        versions = 0
        while batch := self.execute("SELECT * FROM drain_progress_refresh_queue()"):
            versions += len(batch)
        return time.perf_counter() - started, versions

    def queue_depth(self) -> int:
        return int(self.execute("SELECT count(*) FROM progress_refresh_queue")[0][0])

    def _backend_wal(self) -> tuple[int, int]:
        """This backend's WAL bytes and full-page images so far. Backend statistics
        reach shared memory lazily: force the flush at the end of a (read-only,
        WAL-free) transaction, then read them."""
        if not self.backend_wal:
            return 0, 0
        self.execute("SELECT pg_stat_force_next_flush()")
        row = self.execute("SELECT wal_bytes, wal_fpi FROM pg_stat_get_backend_wal(pg_backend_pid())")[0]
        return int(row[0]), int(row[1])

    def settle(self) -> None:
        """Statistics first, then VACUUM: the vacuum also sets the hint bits of the
        fresh pg_statistic rows, which a later reader would otherwise set (and, with
        data checksums on, WAL-log as full-page images) on its first planning."""
        self.execute("ANALYZE")
        self.execute("VACUUM")

    def measured_write(self, query: Any, params: Any = None) -> WriteSample:
        """Runs one statement in a transaction of its own and counts what it wrote:
        rows inserted, updated or deleted in the read models (this transaction's
        own statistics, read before commit) and WAL bytes (this backend's own
        WAL statistics, commit record included; so other sessions on the server
        do not count). The server-wide LSN difference is kept for reference."""
        wal_before = self._backend_wal()
        lsn_before = self.execute("SELECT pg_current_wal_insert_lsn()")[0][0]
        with self.conn.transaction():
            started = time.perf_counter()
            result = self.execute(query, params)
            seconds = time.perf_counter() - started
            rows = int(
                self.execute(
                    """SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)
                     FROM pg_stat_xact_user_tables WHERE relname = ANY (%s)""",
                    [self.read_models],
                )[0][0]
            )
        wal_after = self._backend_wal()
        server = int(self.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [lsn_before])[0][0])
        if not self.backend_wal:
            return WriteSample(seconds, rows, server, -1, server, result)
        return WriteSample(seconds, rows, wal_after[0] - wal_before[0], wal_after[1] - wal_before[1], server, result)

    def read_model_rows(self) -> int:
        return sum(
            int(self.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(n)))[0][0])
            for n in self.read_models
        )

    def explain_ms(self, query: sql.Composable) -> float:
        plan = self.execute(sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query)[0][0]
        if isinstance(plan, str):
            plan = json.loads(plan)
        return float(plan[0]["Execution Time"])


def interleaved(reps: int, pair: Sequence[T]) -> Iterator[tuple[int, list[T]]]:
    """Each rep runs both sides of the pair, the first one alternating."""
    order = list(pair)
    for rep in range(reps):
        yield rep, order if rep % 2 == 0 else order[::-1]


# ---------------------------------------------------------------------------
# Change targets (picked from the table database; the clones share every id)


class Targets:
    """Versions to change, a fresh one for every change, in a stable order."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        # Live audio versions recorded as chapter files (no live verse ranges), each
        # with its first live chapter file; versions with live verse-range files,
        # each with its first range file; and every live version with a live file.
        self.audio_chapter = self._files("mf.chapter_id IS NOT NULL", "NOT bool_or(r.start_verse_id IS NOT NULL)")
        self.audio_range = self._files("mf.start_verse_id IS NOT NULL")
        self.audio_any = self._files("true")
        # Versions with a live file whose verses come from media_files_verses
        # (no chapter, no range), each with such a file.
        self.audio_mapping = self._files(
            """mf.chapter_id IS NULL AND mf.start_verse_id IS NULL
               AND EXISTS (SELECT FROM media_files_verses m WHERE m.media_file_id = mf.id AND m.deleted_at IS NULL)"""
        )
        self.text = [
            r[0]
            for r in conn.execute(
                """SELECT tv.id FROM text_versions tv
                WHERE tv.deleted_at IS NULL
                  AND (SELECT count(*) FROM mv_text_chapter_coverage cc
                        WHERE cc.text_version_id = tv.id AND cc.is_complete) < 1189
                ORDER BY md5(tv.id::text)"""
            )
        ]
        self.unchanged_audio = [
            r[0]
            for r in conn.execute(
                """SELECT audio_version_id FROM mv_audio_version_progress_summary
                WHERE covered_verses > 0 ORDER BY md5(audio_version_id::text || 'unchanged')"""
            )
        ]
        self.unchanged_text = [
            r[0]
            for r in conn.execute(
                """SELECT text_version_id FROM mv_text_version_progress_summary
                WHERE covered_verses > 0 ORDER BY md5(text_version_id::text || 'unchanged')"""
            )
        ]
        self._next: dict[str, int] = {}

    def _files(self, condition: str, having: str = "true") -> list[tuple[uuid.UUID, uuid.UUID]]:
        return [
            (r[0], r[1])
            for r in self.conn.execute(
                f"""SELECT av.id, min(mf.id::text) FILTER (WHERE {condition})::uuid
                  FROM audio_versions av
                  JOIN media_files mf ON mf.audio_version_id = av.id
                  JOIN progress_live_bible_audio_files r ON r.id = mf.id
                 WHERE av.deleted_at IS NULL
                 GROUP BY av.id
                HAVING bool_or({condition}) AND {having}
                 ORDER BY md5(av.id::text)"""
            )
        ]

    def take(self, pool: str) -> Any:
        items = getattr(self, pool)
        if not items:
            raise RuntimeError(f"the generated data has no {pool.replace('_', ' ')} version to change")
        index = self._next.get(pool, 0)
        self._next[pool] = index + 1
        return items[index % len(items)]

    def uncovered_chapter(self, text_version: uuid.UUID) -> str:
        row = self.conn.execute(
            """SELECT c.id FROM chapters c JOIN books b ON b.id = c.book_id
                WHERE b.bible_version_id = 'kjv'
                  AND NOT EXISTS (SELECT FROM verse_texts vt JOIN verses v ON v.id = vt.verse_id
                                   WHERE vt.text_version_id = %s AND v.chapter_id = c.id)
                ORDER BY b.book_number DESC, c.chapter_number LIMIT 1""",
            [text_version],
        ).fetchone()
        if row is None:
            raise RuntimeError(f"text version {text_version} covers every chapter")
        return str(row[0])


TOGGLE_FILE = """UPDATE media_files
                    SET publish_status = CASE publish_status WHEN 'published' THEN 'pending' ELSE 'published' END
                  WHERE id = %s"""
# The file's first mapping, by verse (the mappings' own ids differ between the
# two servers' generated data).
TOGGLE_MAPPING = """UPDATE media_files_verses
                       SET deleted_at = CASE WHEN deleted_at IS NULL THEN timestamptz '2024-06-01 00:00:00+00' END
                     WHERE media_file_id = %(file)s
                       AND verse_id = (SELECT min(verse_id) FROM media_files_verses WHERE media_file_id = %(file)s)"""
ADD_VERSE_TEXT = """INSERT INTO verse_texts (text_version_id, verse_id, verse_text)
                    SELECT %s, v.id, 'benchmark text' FROM verses v WHERE v.chapter_id = %s
                     ORDER BY v.id LIMIT 1
                    ON CONFLICT DO NOTHING"""
# A version-level change: the whole version is refreshed.
TOUCH_VERSION = "UPDATE audio_versions SET created_at = created_at + interval '1 second' WHERE id = %s"
ADD_CHAPTER_TEXT = """INSERT INTO verse_texts (text_version_id, verse_id, verse_text)
                      SELECT %s, v.id, 'benchmark text' FROM verses v WHERE v.chapter_id = %s
                      ON CONFLICT DO NOTHING"""


def _add_chapter_text(s: Session, version: uuid.UUID, chapter: str, statement: str = ADD_CHAPTER_TEXT) -> object:
    return s.execute(statement, [version, chapter])


class Change:
    """A change applied identically to every database, and the version it touches."""

    def __init__(self, targets: Targets) -> None:
        self.targets = targets

    def audio(self, pool: str) -> tuple[tuple[str, uuid.UUID], Callable[[Session], object]]:
        version, file_id = self.targets.take(pool)
        return ("audio", version), lambda s: s.execute(TOGGLE_FILE, [file_id])

    def mapping(self) -> tuple[tuple[str, uuid.UUID], Callable[[Session], object]]:
        version, file_id = self.targets.take("audio_mapping")
        return ("audio", version), lambda s: s.execute(TOGGLE_MAPPING, {"file": file_id})

    def audio_version(self) -> tuple[tuple[str, uuid.UUID], Callable[[Session], object]]:
        version, _ = self.targets.take("audio_chapter")
        return ("audio", version), lambda s: s.execute(TOUCH_VERSION, [version])

    def text(self, statement: str = ADD_CHAPTER_TEXT) -> tuple[tuple[str, uuid.UUID], Callable[[Session], object]]:
        for _ in range(max(1, len(self.targets.text))):
            version = self.targets.take("text")
            try:
                chapter = self.targets.uncovered_chapter(version)
            except RuntimeError:
                continue
            return ("text", version), functools.partial(
                _add_chapter_text, version=version, chapter=chapter, statement=statement
            )
        raise RuntimeError("every generated text version covers every chapter: nothing to add")


# ---------------------------------------------------------------------------
# The measurements


class CaptureWork:
    """Writes to verse_texts, timed, with the capture triggers on or off: each
    write goes to a new text version of the KJV, the queue emptied first."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.verses = [
            r[0]
            for r in session.execute(
                """SELECT v.id FROM verses v JOIN chapters c ON c.id = v.chapter_id JOIN books b ON b.id = c.book_id
                WHERE b.bible_version_id = 'kjv' ORDER BY v.global_order"""
            )
        ]
        self.language = session.execute("SELECT id FROM language_entities ORDER BY id LIMIT 1")[0][0]
        self.counter = 0

    def new_version(self) -> uuid.UUID:
        self.counter += 1
        version = uuid.uuid5(uuid.NAMESPACE_URL, f"bench-capture-{self.counter}")
        self.session.execute(
            """INSERT INTO text_versions (id, language_entity_id, bible_version_id, name)
                     VALUES (%s, %s, 'kjv', %s)""",
            [version, self.language, f"Bench capture {self.counter}"],
        )
        self.session.execute("DELETE FROM progress_refresh_queue")
        return version

    def checkpoint(self) -> None:
        """Dirty pages left by the work before written now, not in the middle of
        one mode's inserts, whose commits each wait for their WAL flush."""
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            self.session.execute("CHECKPOINT")

    def with_triggers(self, enabled: bool, work: Callable[[], float]) -> float:
        if not enabled:
            self.session.execute("ALTER TABLE verse_texts DISABLE TRIGGER USER")
        try:
            return work()
        finally:
            if not enabled:
                self.session.execute("ALTER TABLE verse_texts ENABLE TRIGGER USER")

    def bulk_insert(self) -> float:
        """One INSERT of every verse of a new version, in seconds."""
        version = self.new_version()
        seconds, _ = self.session.timed(
            """INSERT INTO verse_texts (text_version_id, verse_id, verse_text)
               SELECT %s, v.id, 'benchmark text' FROM verses v
                 JOIN chapters c ON c.id = v.chapter_id JOIN books b ON b.id = c.book_id
                WHERE b.bible_version_id = 'kjv'""",
            [version],
        )
        return seconds

    def single_inserts(self) -> float:
        """1,000 single-row INSERTs of a new version (verse after verse), in seconds."""
        version = self.new_version()
        statement = "INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, %s, %s)"
        for verse in self.verses[:5]:  # prepared after 5 executions: warm up in both modes alike
            self.session.execute(statement, [version, verse, "warm-up"])
        started = time.perf_counter()
        for verse in self.verses[5:1005]:
            self.session.conn.execute(statement, [version, verse, "benchmark text"])
        return time.perf_counter() - started


class Runner:
    def __init__(self, sessions: dict[str, Session], reps: int, lookups: int, log: Callable[[str], None]) -> None:
        self.sessions = sessions
        # Both strategies, in the order interleaved() starts with.
        self.pair = [sessions[OURS], sessions[BASELINE]]
        self.reps = reps
        self.lookups = lookups
        self.log = log
        self.targets = Targets(sessions[OURS].conn)
        self.change = Change(self.targets)
        self.metrics: list[Metric] = []

    def add(self, metric: Metric) -> Metric:
        self.metrics.append(metric)
        return metric

    def _settle(self) -> None:
        for s in self.sessions.values():
            if s.queue_depth():
                s.drain()

    # 1. refresh after changed versions ------------------------------------

    def refresh_after_changes(self) -> None:
        scenarios = [
            (
                "refresh_1_audio_chapter",
                "1 changed audio version recorded as chapter files (one file unpublished/republished)",
                lambda: [self.change.audio("audio_chapter")],
            ),
            (
                "refresh_1_audio_range",
                "1 changed audio version recorded as verse ranges (one file unpublished/republished)",
                lambda: [self.change.audio("audio_range")],
            ),
            (
                "refresh_1_audio_mapping",
                "1 changed audio version recorded as mapped verses (one verse mapping removed/restored)",
                lambda: [self.change.mapping()],
            ),
            ("refresh_1_text", "1 changed text version (a chapter's verse_texts added)", lambda: [self.change.text()]),
            (
                "refresh_1_text_verse",
                "1 changed text version (one verse_texts row added)",
                lambda: [self.change.text(ADD_VERSE_TEXT)],
            ),
            (
                "refresh_1_audio_whole",
                "1 audio version changed as a whole (its created_at moved: every chapter refreshed)",
                lambda: [self.change.audio_version()],
            ),
            (
                "refresh_10_mixed",
                "10 changed versions (5 audio versions of any style + 5 text versions)",
                # (A size with fewer versions changes fewer: the count is checked below.)
                lambda: (
                    [self.change.audio("audio_any") for _ in range(min(5, len(self.targets.audio_any)))]
                    + [self.change.text() for _ in range(min(5, len(self.targets.text)))]
                ),
            ),
        ]
        self._first_drains()
        for metric_id, label, make in scenarios:
            metric = self.add(
                Metric(
                    metric_id,
                    "refresh after changes",
                    f"Refresh after {label}",
                    "ms",
                    "matview: drain = REFRESH CONCURRENTLY of all views",
                    "table: drain = per-version refresh",
                )
            )
            self._settle()
            for rep, order in interleaved(self.reps, self.pair):
                changes = make()
                expected = len({version for version, _ in changes})
                for s in order:
                    for _, apply in changes:
                        apply(s)
                    seconds, versions = s.drain()
                    if versions != expected:
                        metric.note = f"drain refreshed {versions} versions, expected {expected}"
                    (metric.ours if s.strategy == OURS else metric.baseline).append(ms(seconds))
                self.log(
                    f"  {metric_id} rep {rep + 1}/{self.reps}: table {metric.ours[-1]:.1f} ms, "
                    f"matview {metric.baseline[-1]:.1f} ms"
                )

    def _first_drains(self) -> None:
        """The first drain of a session plans the refresh functions it runs
        (generic plans, kept for the session): several times a steady drain's
        cost, paid once per session (a worker's, the CLI's, a pg_cron job's).
        One audio chapter file and one text chapter change first, measured
        apart, so the scenarios below time drains in a session that has
        planned, as a long-running worker's are."""
        metric = self.add(
            Metric(
                "refresh_first_in_session",
                "refresh after changes",
                "First drain of a session (1 audio chapter file + 1 text chapter changed; plans the refresh)",
                "ms",
                "matview: drain = REFRESH CONCURRENTLY of all views",
                "table: drain = per-version refresh, planned in this drain",
            )
        )
        self._settle()
        changes = [self.change.audio("audio_chapter"), self.change.text()]
        for s in self.pair:
            for _, apply in changes:
                apply(s)
            seconds, versions = s.drain()
            if versions != len(changes):
                metric.note = f"drain refreshed {versions} versions, expected {len(changes)}"
            (metric.ours if s.strategy == OURS else metric.baseline).append(ms(seconds))
        self.log(f"  first drain of the session: table {metric.ours[-1]:.1f} ms, matview {metric.baseline[-1]:.1f} ms")

    # 2. full rebuilds ------------------------------------------------------

    def full_rebuilds(self) -> None:
        ours, base = self.sessions[OURS], self.sessions[BASELINE]
        full = self.add(
            Metric(
                "full_rebuild",
                "full rebuild",
                "Full rebuild of every read model",
                "ms",
                "matview: refresh_..._full() = REFRESH MATERIALIZED VIEW",
                "table: refresh_..._full() = TRUNCATE + INSERT",
            )
        )
        vs_conc = self.add(
            Metric(
                "full_rebuild_vs_concurrently",
                "full rebuild",
                "Full rebuild vs the concurrent matview refresh",
                "ms",
                "matview: refresh_..._concurrently() = REFRESH ... CONCURRENTLY",
                "table: refresh_..._full()",
            )
        )
        conc = self.add(
            Metric(
                "concurrent_rebuild",
                "full rebuild",
                "Rebuild while readers keep reading (both concurrently)",
                "ms",
                "matview: refresh_..._concurrently() = REFRESH ... CONCURRENTLY",
                "table: refresh_..._concurrently() = diff of every version",
            )
        )
        wal = self.add(
            Metric(
                "full_rebuild_wal",
                "full rebuild",
                "WAL written by a full rebuild",
                "bytes",
                "matview: REFRESH MATERIALIZED VIEW",
                "table: TRUNCATE + INSERT",
            )
        )
        for rep in range(self.reps):
            first_ours = rep % 2 == 0
            plan = [(ours, "full"), (base, "full"), (base, "concurrently"), (ours, "concurrently")]
            if not first_ours:
                plan = [plan[1], plan[0], plan[2], plan[3]]
            results: dict[tuple[str, str], WriteSample] = {}
            for s, how in plan:
                results[(s.strategy, how)] = s.measured_write(f"SELECT refresh_progress_materialized_views_{how}()")
            t_full, b_full = results[(OURS, "full")], results[(BASELINE, "full")]
            b_conc, t_conc = results[(BASELINE, "concurrently")], results[(OURS, "concurrently")]
            full.ours.append(ms(t_full.seconds))
            full.baseline.append(ms(b_full.seconds))
            vs_conc.ours.append(ms(t_full.seconds))
            vs_conc.baseline.append(ms(b_conc.seconds))
            conc.ours.append(ms(t_conc.seconds))
            conc.baseline.append(ms(b_conc.seconds))
            wal.ours.append(t_full.wal_bytes)
            wal.baseline.append(b_full.wal_bytes)
            self.log(
                f"  full rebuild rep {rep + 1}/{self.reps}: table full {ms(t_full.seconds):.0f} ms, "
                f"matview REFRESH {ms(b_full.seconds):.0f} ms, matview CONCURRENTLY "
                f"{ms(b_conc.seconds):.0f} ms, table concurrently {ms(t_conc.seconds):.0f} ms"
            )
        # The table rebuild leaves fresh, unvacuumed tables; settle both for what follows.
        for s in self.sessions.values():
            s.settle()

    # 4. what a refresh writes ----------------------------------------------

    def refresh_writes(self) -> None:
        reps = max(1, min(self.reps, 3))
        self._settle()
        # One call per strategy first, not counted: the first planning after
        # ANALYZE may set hint bits on catalog rows (WAL-logged when data
        # checksums are on), a one-off that is no part of a refresh's cost.
        # Ours plans per kind, so it makes a text call too (the matview
        # side's drain refreshes every view, whatever the kind).
        warm = self.targets.take("unchanged_audio")
        cold = {
            s.strategy: s.measured_write("SELECT * FROM refresh_progress_version('audio', %s)", [warm])
            for s in self.sessions.values()
        }
        cold["table, text"] = self.sessions[OURS].measured_write(
            "SELECT * FROM refresh_progress_version('text', %s)", [self.targets.take("unchanged_text")]
        )
        for case, label in (("unchanged", "nothing changed"), ("one_chapter", "one chapter changed")):
            group = f"refresh writes: {label}"
            what = "audio and text versions alternately" if case == "unchanged" else "audio chapter-file versions"
            m_time = self.add(
                Metric(
                    f"{case}_time",
                    group,
                    f"refresh_progress_version(): {label} ({what}), time",
                    "ms",
                    "matview: REFRESH CONCURRENTLY of all views",
                    "table: one version's diff",
                )
            )
            m_rows = self.add(
                Metric(
                    f"{case}_rows",
                    group,
                    f"refresh_progress_version(): {label}, read-model rows written",
                    "rows",
                    "matview: REFRESH CONCURRENTLY",
                    "table: one version's diff",
                )
            )
            m_wal = self.add(
                Metric(
                    f"{case}_wal",
                    group,
                    f"refresh_progress_version(): {label}, WAL bytes",
                    "bytes",
                    "matview: REFRESH CONCURRENTLY",
                    "table: one version's diff",
                )
            )
            m_wal.extra = {
                "wal_source": "this backend (pg_stat_get_backend_wal)"
                if self.sessions[OURS].backend_wal
                else "server-wide LSN difference (PostgreSQL < 18: other sessions included)",
                "ours_fpi": [],
                "baseline_fpi": [],
                "ours_server_wide_bytes": [],
                "baseline_server_wide_bytes": [],
            }
            if case == "unchanged":
                m_wal.extra["first_call_not_counted"] = {
                    k: {"wal_bytes": v.wal_bytes, "wal_fpi": v.wal_fpi, "rows": v.rows_written} for k, v in cold.items()
                }
            for rep, order in interleaved(reps, self.pair):
                apply = None
                if case == "unchanged":
                    kind = "audio" if rep % 2 == 0 else "text"
                    version = self.targets.take(f"unchanged_{kind}")
                else:
                    kind = "audio"
                    version, apply = self.targets.take("audio_chapter")
                for s in order:
                    if apply is not None:
                        s.execute(TOGGLE_FILE, [apply])
                    sample = s.measured_write("SELECT * FROM refresh_progress_version(%s, %s)", [kind, version])
                    side = "ours" if s.strategy == OURS else "baseline"
                    getattr(m_time, side).append(ms(sample.seconds))
                    getattr(m_rows, side).append(sample.rows_written)
                    getattr(m_wal, side).append(sample.wal_bytes)
                    m_wal.extra[f"{side}_fpi"].append(sample.wal_fpi)
                    m_wal.extra[f"{side}_server_wide_bytes"].append(sample.wal_bytes_server)
                    if s.strategy == OURS:
                        returned = sum(int(r[1]) + int(r[2]) + int(r[3]) for r in sample.result)
                        if returned != sample.rows_written:
                            m_rows.note = f"the function reported {returned} rows, the statistics {sample.rows_written}"
                self.log(
                    f"  {label} rep {rep + 1}/{reps} ({kind}): table {m_rows.ours[-1]:.0f} rows "
                    f"{m_wal.ours[-1]:.0f} B WAL {m_time.ours[-1]:.1f} ms; matview {m_rows.baseline[-1]:.0f} "
                    f"rows {m_wal.baseline[-1]:.0f} B WAL {m_time.baseline[-1]:.0f} ms"
                )
            self._settle()

    # 5. read latency ---------------------------------------------------------

    def read_latency(self) -> None:
        ids = {
            kind: [
                r[0]
                for r in self.sessions[OURS].execute(
                    sql.SQL("SELECT {col} FROM {tbl} ORDER BY md5({col}::text)").format(
                        col=sql.Identifier(f"{kind}_version_id"),
                        tbl=sql.Identifier(f"mv_{kind}_version_progress_summary"),
                    )
                )
            ]
            for kind in ("audio", "text")
        }
        queries = [
            (
                "read_summary_audio",
                "Read one audio summary row (server-side execution)",
                "mv_audio_version_progress_summary",
                "audio",
            ),
            (
                "read_summary_text",
                "Read one text summary row (server-side execution)",
                "mv_text_version_progress_summary",
                "text",
            ),
            (
                "read_chapters_audio",
                "Read an audio version's chapter rows (server-side execution)",
                "mv_audio_chapter_coverage",
                "audio",
            ),
            (
                "read_chapters_text",
                "Read a text version's chapter rows (server-side execution)",
                "mv_text_chapter_coverage",
                "text",
            ),
        ]
        for metric_id, label, table, kind in queries:
            metric = self.add(
                Metric(
                    metric_id,
                    "read latency",
                    label,
                    "ms",
                    "matview (materialized view + unique index)",
                    "table (table + primary key)",
                )
            )
            pool = ids[kind]
            for i, order in interleaved(self.lookups, self.pair):
                version = pool[i % len(pool)]
                query = sql.SQL("SELECT * FROM {} WHERE {} = {}").format(
                    sql.Identifier(table), sql.Identifier(f"{kind}_version_id"), sql.Literal(str(version))
                )
                for s in order:
                    (metric.ours if s.strategy == OURS else metric.baseline).append(s.explain_ms(query))
            self.log(
                f"  {metric_id}: table {metric.ours_median:.3f} ms, matview {metric.baseline_median:.3f} ms "
                f"(median of {self.lookups})"
            )

    # 3. change capture overhead (in the table database, at the end) ---------

    def capture_overhead(self) -> None:
        s = self.sessions[OURS]
        work = CaptureWork(s)
        bulk = self.add(
            Metric(
                "capture_bulk_insert",
                "change capture",
                f"One INSERT of a whole version's {len(work.verses):,} verse_texts",
                "ms",
                "no capture triggers (seed)",
                "with capture triggers",
            )
        )
        single = self.add(
            Metric(
                "capture_single_inserts",
                "change capture",
                "1,000 single-row verse_texts INSERTs (autocommit, one statement each)",
                "ms",
                "no capture triggers (seed)",
                "with capture triggers",
            )
        )
        work.checkpoint()  # after the rebuilds
        # One round in each mode first, not counted (caches, prepared statements).
        for enabled in (True, False):
            work.with_triggers(enabled, work.bulk_insert)
            work.with_triggers(enabled, work.single_inserts)
        # A rep takes about a second; the single-row figure's noise (commit
        # latency) needs more of them than the refresh figures. A quick run
        # (--repeat 1, one sample a figure) takes one here too.
        reps = 1 if self.reps == 1 else max(self.reps, 9)
        for rep in range(reps):
            for enabled in (True, False) if rep % 2 == 0 else (False, True):
                for metric, timed in ((bulk, work.bulk_insert), (single, work.single_inserts)):
                    (metric.ours if enabled else metric.baseline).append(ms(work.with_triggers(enabled, timed)))
            self.log(
                f"  capture rep {rep + 1}/{reps}: bulk {bulk.ours[-1]:.0f} ms with / "
                f"{bulk.baseline[-1]:.0f} ms without triggers; 1,000 single rows {single.ours[-1]:.0f} ms "
                f"with / {single.baseline[-1]:.0f} ms without"
            )
        s.execute("DELETE FROM progress_refresh_queue")


def run_all(
    sessions: dict[str, Session], reps: int, lookups: int, log: Callable[[str], None]
) -> tuple[list[Metric], dict[str, int]]:
    """Every measurement, and (fast is worth nothing if wrong) whether our read
    models equal their logical views after the drains that followed each change
    (before the rebuilds redo them all, and the capture measurement's unrefreshed
    versions)."""
    runner = Runner(sessions, reps, lookups, log)
    log("read latency")
    runner.read_latency()
    log("what a refresh writes (nothing changed / one chapter changed)")
    runner.refresh_writes()
    log("refresh after changed versions")
    runner.refresh_after_changes()
    mismatching = gateway.mismatches_by_read_model(sessions[OURS].conn)
    wrong = {name: n for name, n in mismatching.items() if n}
    log(f"read models equal to their logical views: {'NO, ' + str(wrong) if wrong else 'yes'}")
    log("full rebuilds")
    runner.full_rebuilds()
    log("change capture overhead")
    runner.capture_overhead()
    return runner.metrics, mismatching
