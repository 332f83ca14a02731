"""A database running the previous design (bench/previous_design.sql)
with the demo data, populated, and changes still queued; and a reader that
polls every read model while something happens."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from orchestration.db.connection import connect
from orchestration.db.migrations import load_migrations
from orchestration.demo_data import seed_demo
from orchestration.read_models import READ_MODELS

FIXTURE = Path(__file__).with_name("previous_design.sql")
READER_ROLE = "previous_design_reader"
APP_ROLE = "previous_design_app"


def install_previous_design(dsn: str, audio_versions: int = 4, text_versions: int = 4) -> set[tuple[str, str]]:
    """Base tables, the previous design, demo data, its first populate, then a few
    changes it has queued but not drained; returns the pending entries."""
    with connect(dsn) as conn:
        conn.execute(load_migrations()[0].sql)
        conn.execute(FIXTURE.read_text(encoding="utf-8"))
        seed_demo(conn, audio_versions=audio_versions, text_versions=text_versions)
        conn.execute("SELECT refresh_progress_materialized_views_full()")
        conn.execute("SELECT drain_progress_refresh_queue()")
        make_changes(conn)
        return pending(conn)


def make_changes(conn: psycopg.Connection, salt: int = 0) -> None:
    """Edits the previous design's triggers queue: a removed text, a deleted recording."""
    conn.execute(
        "UPDATE verse_texts SET deleted_at = now() WHERE id IN "
        "(SELECT id FROM verse_texts WHERE deleted_at IS NULL ORDER BY id OFFSET %s LIMIT 3)",
        [salt * 3],
    )
    conn.execute(
        "UPDATE media_files SET deleted_at = now() WHERE id = "
        "(SELECT id FROM media_files WHERE deleted_at IS NULL ORDER BY id OFFSET %s LIMIT 1)",
        [salt],
    )


def pending(conn: psycopg.Connection) -> set[tuple[str, str]]:
    return {(k, str(v)) for k, v in conn.execute("SELECT kind, version_id FROM progress_refresh_queue")}


@dataclass
class ReaderLog:
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    slowest_seconds: float = 0.0


class PollingReader:
    """Reads one row of every read model, over and over, as a dashboard would,
    with the reader role's grants; records errors, empty reads and the slowest read.
    With logical_views, the previous design's plain views too, those it shares
    with ours (computed live: for small databases)."""

    def __init__(self, dsn: str, role: str | None = READER_ROLE, logical_views: bool = False) -> None:
        self.dsn, self.role = dsn, role
        views = [m.logical_view for m in READ_MODELS if m.level != "best"] if logical_views else []
        self.names = [m.name for m in READ_MODELS] + views
        self.log = ReaderLog()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PollingReader:
        self._thread.start()
        while self.log.reads < len(self.names):  # a first full round before anything happens
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with connect(self.dsn) as conn:
            if self.role:
                conn.execute(f"SET ROLE {self.role}")
            while not self._stop.is_set():
                for name in self.names:
                    started = time.perf_counter()
                    try:
                        row = conn.execute(f"SELECT 1 FROM {name} LIMIT 1").fetchone()
                    except psycopg.Error as exc:
                        self.log.errors.append(f"{name}: {' '.join(str(exc).split())}")
                        continue
                    finally:
                        self.log.slowest_seconds = max(self.log.slowest_seconds, time.perf_counter() - started)
                        self.log.reads += 1
                    if row is None:
                        self.log.empty.append(name)
