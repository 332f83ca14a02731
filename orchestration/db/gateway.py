"""The SQL gateway: the only Python that issues product SQL. Every call maps
to one SQL function installed by sql/; Python decides when and what, the
functions decide how."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from orchestration.errors import ProgressError
from orchestration.read_models import KINDS, READ_MODELS


@dataclass(frozen=True)
class Claim:
    kind: str
    version_id: uuid.UUID
    generation: int


@dataclass(frozen=True)
class ReadModelCounts:
    read_model: str
    inserted: int
    updated: int
    deleted: int

    @property
    def written(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass
class VersionOutcome:
    kind: str
    version_id: uuid.UUID
    counts: list[ReadModelCounts] = field(default_factory=list)
    error: str | None = None
    # not refreshed here: the claim was lost to another worker, or given back to a full rebuild
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.skipped


def parse_version(text: str) -> tuple[str, uuid.UUID]:
    """'audio:UUID' or 'text:UUID' → (kind, id); ProgressError on anything else."""
    kind, sep, raw_id = text.partition(":")
    if not sep or kind not in KINDS:
        raise ProgressError(f"invalid version {text!r}: expected audio:UUID or text:UUID")
    try:
        return kind, uuid.UUID(raw_id)
    except ValueError:
        raise ProgressError(f"invalid version id {raw_id!r}: not a UUID") from None


def _translate(exc: psycopg.Error) -> ProgressError:
    diag = exc.diag.message_primary if exc.diag else None
    return ProgressError(diag or " ".join(str(exc).split()))


# How often a refresh statement checks that its client is still there.
CLIENT_CHECK_SECONDS = 0.25


def configure_refresh_session(
    conn: psycopg.Connection, lock_timeout: str, statement_timeout: str, source: str = "cli"
) -> None:
    """A stuck lock or a runaway statement fails one version instead of hanging
    a run; a killed worker's statement is cancelled (and its session, which
    holds its claims, ends) within CLIENT_CHECK_SECONDS instead of when the
    statement finishes. `source` names who refreshes in the refresh log
    ('dagster:<run id>', 'cli')."""
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false),"
        "       set_config('client_connection_check_interval', %s, false),"
        "       set_config('progress.refresh_source', %s, false)",
        [lock_timeout, statement_timeout, f"{int(CLIENT_CHECK_SECONDS * 1000)}ms", source],
    )


def connection_lost(conn: psycopg.Connection, exc: psycopg.Error) -> bool:
    """Whether exc means the session is gone (server restart or shutdown,
    terminated backend, broken network) rather than a failed statement."""
    sqlstate = exc.sqlstate or ""
    return conn.broken or conn.closed or sqlstate.startswith(("08", "57P"))


def claim_batch(
    conn: psycopg.Connection, worker: str, limit: int, lease_seconds: float, kinds: list[str] | None = None
) -> list[Claim]:
    """Claims up to limit queued versions in a short transaction of its own."""
    with conn.transaction():
        rows = conn.execute(
            "SELECT kind, version_id, generation  FROM progress_claim_batch(%s, %s, make_interval(secs => %s), %s)",
            [worker, limit, lease_seconds, kinds],
        ).fetchall()
    return [Claim(kind, version_id, generation) for kind, version_id, generation in rows]


def refresh_claimed(conn: psycopg.Connection, claim: Claim, worker: str) -> VersionOutcome:
    """Refreshes one claimed version in a transaction of its own, then settles its
    queue entry in another (a refresh never waits for a queue row: see
    progress_refresh_claimed). A claim another worker took over is skipped, and
    so is one a full rebuild under way refreshes anyway (given back, uncounted)."""
    outcome = VersionOutcome(claim.kind, claim.version_id)
    started = time.monotonic()
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT read_model, inserted, updated, deleted, error FROM progress_refresh_claimed(%s, %s, %s)",
                [claim.kind, claim.version_id, worker],
            ).fetchall()
    except psycopg.Error as exc:
        if connection_lost(conn, exc):
            raise  # not this version's fault: its claim is taken over with the rest
        if isinstance(exc, psycopg.errors.QueryCanceled) and not _timed_out(conn, time.monotonic() - started):
            # Cancelled on request (pg_cancel_backend): no failure of the version.
            with conn.transaction():
                conn.execute("SELECT progress_release_claim(%s, %s, %s)", [claim.kind, claim.version_id, worker])
            outcome.error = "cancelled on request: queued again, not counted as a failed attempt"
            return outcome
        # Errors PL/pgSQL cannot catch (statement timeout) end up here.
        outcome.error = " ".join(str(exc).split())
        record_failure(conn, claim.kind, claim.version_id, outcome.error, worker)
        return outcome
    if not rows:
        outcome.skipped = True
        return outcome
    for read_model, inserted, updated, deleted, error in rows:
        if error is not None:
            outcome.error = error
        else:
            outcome.counts.append(ReadModelCounts(read_model, inserted, updated, deleted))
    if outcome.error is None:
        # Killed between the two transactions, the entry stays claimed until the
        # next claim takes it over; refreshed again, it changes nothing.
        with conn.transaction():
            conn.execute(
                "SELECT progress_finish(%s, %s, %s, p_worker => %s)",
                [claim.kind, claim.version_id, claim.generation, worker],
            )
    return outcome


def _timed_out(conn: psycopg.Connection, seconds: float) -> bool:
    """Whether a statement that ran this long was cancelled by the session's
    statement_timeout rather than on request."""
    row = conn.execute("SELECT progress_statement_timed_out(make_interval(secs => %s))", [seconds]).fetchone()
    return bool(row and row[0])


def record_failure(conn: psycopg.Connection, kind: str, version_id: uuid.UUID, error: str, worker: str) -> None:
    """One more failed attempt, against the worker's claim."""
    with conn.transaction():
        conn.execute("SELECT progress_record_failure(%s, %s, %s, %s)", [kind, version_id, error, worker])


def _unknown_version(conn: psycopg.Connection, kind: str, version_id: uuid.UUID, exc: psycopg.Error) -> ProgressError:
    """The database's refusal, with a hint when the id names a version of the other kind."""
    error = _translate(exc)
    if not isinstance(exc, psycopg.errors.NoDataFound):
        return error
    other = next(k for k in KINDS if k != kind)
    if version_states(conn, [(other, version_id)]):
        article = "an" if other == "audio" else "a"
        return ProgressError(f"{error}: it is {article} {other} version ({other}:{version_id})")
    return error


def refresh_version(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> VersionOutcome:
    """Refreshes one version now, whether queued or not."""
    try:
        with conn.transaction():
            rows = conn.execute(
                "SELECT read_model, inserted, updated, deleted FROM refresh_progress_version(%s, %s)",
                [kind, version_id],
            ).fetchall()
    except psycopg.Error as exc:
        raise _unknown_version(conn, kind, version_id, exc) from None
    return VersionOutcome(kind, version_id, [ReadModelCounts(*row) for row in rows])


def enqueue(conn: psycopg.Connection, kind: str, version_id: uuid.UUID) -> None:
    try:
        conn.execute("SELECT enqueue_progress_refresh(%s, %s)", [kind, version_id])
    except psycopg.Error as exc:
        raise _unknown_version(conn, kind, version_id, exc) from None


@dataclass(frozen=True)
class VersionState:
    name: str | None
    deleted: bool  # soft-deleted, or its row is gone (only its stored rows were left)


def version_states(
    conn: psycopg.Connection, versions: list[tuple[str, uuid.UUID]]
) -> dict[tuple[str, uuid.UUID], VersionState]:
    """Name and deletion of each named version that exists or still has stored rows."""
    rows = conn.execute(
        "SELECT kind, version_id, name, deleted FROM progress_version_states(%s, %s)",
        [[k for k, _ in versions], [v for _, v in versions]],
    ).fetchall()
    return {(kind, version_id): VersionState(name, deleted) for kind, version_id, name, deleted in rows}


def enqueue_all_versions(conn: psycopg.Connection, kind: str | None = None) -> int:
    """Queues every version (of one kind, or both) that exists or still has
    stored rows; returns how many."""
    row = conn.execute("SELECT progress_enqueue_all_versions(%s)", [kind]).fetchone()
    return int(row[0]) if row else 0


def storage_strategy(conn: psycopg.Connection) -> str:
    """'table' (per-version refresh) or 'matview' (whole refreshes)."""
    row = conn.execute("SELECT progress_storage_strategy()").fetchone()
    return str(row[0]) if row else "table"


def drain_sql_batch(conn: psycopg.Connection) -> list[tuple[str, uuid.UUID]]:
    """One call of the SQL API's drain (one batch, in one transaction)."""
    return [(k, v) for k, v in conn.execute("SELECT kind, version_id FROM drain_progress_refresh_queue()")]


def rebuild_all(conn: psycopg.Connection, mode: str) -> None:
    """mode: full | concurrently | safe (SPEC section 5)."""
    if mode not in ("full", "concurrently", "safe"):
        raise ProgressError(f"unknown rebuild mode {mode!r}: expected full, concurrently or safe")
    try:
        conn.execute(f"SELECT refresh_progress_materialized_views_{mode}()")
    except psycopg.Error as exc:
        raise _translate(exc) from None


def requeue_dead_letters(conn: psycopg.Connection) -> list[tuple[str, uuid.UUID]]:
    return [(k, v) for k, v in conn.execute("SELECT kind, version_id FROM requeue_progress_dead_letters()")]


def queue_state(conn: psycopg.Connection, kind: str | None = None) -> dict[str, Any]:
    """Depth, ready entries, ages of the oldest and oldest ready entry in seconds,
    dead letters; of one kind, or both."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM progress_queue_state(%s)", [kind]).fetchone()
    return dict(row) if row else {}


def claims(conn: psycopg.Connection, kind: str | None = None) -> list[dict[str, Any]]:
    """Claimed entries with their holder, whether it is alive (None: not
    checked) and when another worker may take them over."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute("SELECT * FROM progress_claims(%s)", [kind]))


def retrying(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """Entries that failed and wait out their backoff: attempts, last error, next try."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute("SELECT * FROM progress_retrying(%s)", [limit]))


def dead_letters(conn: psycopg.Connection, limit: int = 20) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(
            cur.execute(
                "SELECT kind, version_id, attempts, last_error, first_queued_at, failed_at"
                "  FROM progress_refresh_dead_letter ORDER BY failed_at DESC LIMIT %s",
                [limit],
            )
        )


def read_model_sizes(conn: psycopg.Connection) -> dict[str, dict[str, int]]:
    """Rows and bytes per read model (rows estimated above a million)."""
    return {
        name: {"rows": int(rows), "bytes": int(size)}
        for name, rows, size, _ in conn.execute("SELECT * FROM progress_read_model_sizes()")
    }


def mismatches(
    conn: psycopg.Connection,
    read_model: str,
    logical_view: str,
    scope_column: str | None = None,
    scope_ids: list[uuid.UUID] | None = None,
    exclude: list[uuid.UUID] | None = None,
) -> int:
    """Rows in which a read model and its logical view differ (both directions):
    only for some scopes (versions or language entities), or all but some."""
    row = conn.execute(
        "SELECT progress_count_mismatches(%s, %s, %s, %s, %s)",
        [read_model, logical_view, scope_column, scope_ids, exclude],
    ).fetchone()
    return int(row[0]) if row else 0


def mismatches_by_read_model(conn: psycopg.Connection) -> dict[str, int]:
    """Per read model, the rows in which it and its logical view differ (every scope)."""
    return {m.name: mismatches(conn, m.name, m.logical_view) for m in READ_MODELS}


def last_populated(conn: psycopg.Connection) -> datetime | None:
    """When every read model was last known complete (a rebuild, or drains that covered every version)."""
    row = conn.execute("SELECT progress_setting('populated_at')::timestamptz").fetchone()
    return row[0] if row else None


def mark_populated_if_complete(conn: psycopg.Connection) -> datetime | None:
    """Records that drains populated the read models, when they did; returns when they were populated."""
    row = conn.execute("SELECT progress_mark_populated_if_complete()").fetchone()
    return row[0] if row else None


def last_refresh(conn: psycopg.Connection) -> datetime | None:
    """When a version was last refreshed, from the refresh log (None while the database keeps none)."""
    row = conn.execute("SELECT progress_last_refresh()").fetchone()
    return row[0] if row else None


def unsettled_scopes(conn: psycopg.Connection, kind: str, language_entities: bool) -> list[uuid.UUID]:
    """Versions still queued or dead-lettered (or, for best-version read models,
    their language entities): rows the equality checks expect to lag."""
    row = conn.execute("SELECT progress_unsettled_scopes(%s, %s)", [kind, language_entities]).fetchone()
    return list(row[0]) if row and row[0] else []


def affected_language_entities(conn: psycopg.Connection, kind: str, versions: list[uuid.UUID]) -> list[uuid.UUID]:
    """Language entities whose best version these versions can move."""
    row = conn.execute("SELECT progress_affected_language_entities(%s, %s)", [kind, versions]).fetchone()
    return list(row[0]) if row and row[0] else []


def has_versions(conn: psycopg.Connection) -> bool:
    """Whether any audio or text version exists (an empty database gets the demo)."""
    row = conn.execute("SELECT EXISTS (SELECT FROM audio_versions) OR EXISTS (SELECT FROM text_versions)").fetchone()
    return bool(row and row[0])


def settings(conn: psycopg.Connection) -> dict[str, str]:
    """The rows of progress_refresh_settings ({} on a database not migrated yet)."""
    row = conn.execute("SELECT to_regclass('progress_refresh_settings') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return {}
    return {key: value for key, value in conn.execute("SELECT key, value FROM progress_refresh_settings")}


@dataclass(frozen=True)
class RefreshLag:
    """Lag of finished refreshes, in seconds (None when none had a queued change)."""

    refreshes: int
    p50: float | None
    p95: float | None
    max: float | None
    last_refreshed_at: datetime | None
    oldest_queued_age_seconds: float


def refresh_lag(
    conn: psycopg.Connection, kind: str | None = None, source: str | None = None, within_seconds: float | None = None
) -> RefreshLag:
    """From each refresh's oldest change (its queue entry's first enqueue) to its
    commit, over the refresh log: of one kind, one source, a recent window."""
    row = conn.execute(
        "SELECT * FROM progress_refresh_lag(%s, %s, make_interval(secs => %s))", [kind, source, within_seconds]
    ).fetchone()
    assert row is not None
    refreshes, p50, p95, worst, last, oldest = row
    return RefreshLag(int(refreshes), p50, p95, worst, last, float(oldest or 0.0))


@dataclass(frozen=True)
class LoggedRefreshes:
    """Refreshes of one kind by one source, read from the refresh log."""

    kind: str
    source: str
    version_ids: list[uuid.UUID]
    refreshes: int
    rows_written: int | None
    first_refreshed_at: datetime
    last_refreshed_at: datetime
    lag_p50: float | None
    lag_p95: float | None
    lag_max: float | None
    # Time spent in the refreshing transactions; None for refreshes logged before it was.
    busy_seconds: float | None
    # Per read model, for those every refresh logged (a drain's language-entity
    # read models are refreshed once for its batch, not logged per version).
    rows_by_read_model: dict[str, int]


def refresh_log_horizon(conn: psycopg.Connection) -> int:
    """Transactions below this id have all ended: the refresh log is complete below it."""
    row = conn.execute("SELECT progress_refresh_log_horizon()::text").fetchone()
    assert row is not None
    return int(row[0])


def refreshes_between(conn: psycopg.Connection, after: int, before: int) -> list[LoggedRefreshes]:
    """Refreshes logged by transactions in [after, before), per kind and source."""
    rows = conn.execute(
        "SELECT * FROM progress_refreshes_between(%s::text::xid8, %s::text::xid8)", [str(after), str(before)]
    ).fetchall()
    return [
        LoggedRefreshes(
            kind,
            source,
            list(ids),
            int(n),
            None if rows_written is None else int(rows_written),
            first,
            last,
            p50,
            p95,
            worst,
            busy,
            {name: int(count) for name, count in (per_model or {}).items()},
        )
        for kind, source, ids, n, rows_written, first, last, p50, p95, worst, busy, per_model in rows
    ]


@dataclass(frozen=True)
class VersionSummary:
    version_id: uuid.UUID
    name: str | None
    language: str | None
    verse_fraction: float | None
    chapter_fraction: float | None
    book_fraction: float | None

    @property
    def label(self) -> str:
        """What a person recognises: the name, with the id's first block to tell namesakes apart."""
        short = str(self.version_id).split("-")[0]
        return f"{self.name} ({short})" if self.name else str(self.version_id)


def version_summaries(conn: psycopg.Connection, kind: str, versions: list[uuid.UUID]) -> list[VersionSummary]:
    """Name, language and current verse/chapter/book fractions of each version, in the given order."""
    if not versions:
        return []
    return [
        VersionSummary(version_id, name, language, *(None if f is None else float(f) for f in fractions))
        for version_id, name, language, *fractions in conn.execute(
            "SELECT * FROM progress_version_summaries(%s, %s)", [kind, versions]
        )
    ]


def next_queued_versions(conn: psycopg.Connection, kind: str, limit: int) -> list[uuid.UUID]:
    """The ready versions of a kind a drain would claim first."""
    row = conn.execute("SELECT progress_next_queued_versions(%s, %s)", [kind, limit]).fetchone()
    return list(row[0]) if row and row[0] else []


@dataclass(frozen=True)
class TableActivity:
    table: str
    row_count: int
    estimated: bool
    rows_changed: int


def table_activity(conn: psycopg.Connection, tables: list[str]) -> list[TableActivity]:
    """Rows (estimated for big tables) and rows written since the statistics reset, per table."""
    return [
        TableActivity(name, int(rows), bool(estimated), int(changed))
        for name, rows, estimated, changed in conn.execute("SELECT * FROM progress_table_activity(%s)", [tables])
    ]
