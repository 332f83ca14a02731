"""Draining the queue from Python: claim a batch in a short transaction, then
refresh each version in a transaction of its own, so one failure never stops
the rest. A killed worker's claims are taken over by the next claim, as soon
as the database sees its session gone."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from orchestration import settings
from orchestration.db import gateway
from orchestration.db.gateway import Claim, ReadModelCounts, VersionOutcome
from orchestration.errors import ConnectionLost

DEFAULT_BATCH_SIZE: int = settings.BATCH_SIZE.default
DEFAULT_LEASE_SECONDS = float(settings.LEASE_SECONDS.default)
# A worker killed mid-statement leaves its session running until the server
# notices the closed connection (every CLIENT_CHECK_SECONDS, later on a busy
# machine); before leaving claims held by others behind, a drain that found
# nothing else to do keeps trying to claim for at most this long.
HOLDER_EXIT_GRACE_SECONDS = 2.0


def worker_name(prefix: str = "python") -> str:
    """Unique per drain: a restarted process (same host, same pid in a
    container) never mistakes an old claim for its own."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RefreshPolicy:
    """Per-session limits for refresh connections; from orchestration.settings by default."""

    lock_timeout: str = settings.LOCK_TIMEOUT.default
    statement_timeout: str = settings.STATEMENT_TIMEOUT.default
    batch_size: int = DEFAULT_BATCH_SIZE
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Who refreshes, as the refresh log records it: Dagster runs say 'dagster:<run id>';
    # any other Python drain is the command line's.
    source: str = "cli"

    @classmethod
    def from_env(cls, conn: psycopg.Connection | None = None) -> RefreshPolicy:
        """The environment, then (given a connection) the database's settings, then the defaults."""
        database = gateway.settings(conn) if conn is not None else None
        return cls(
            lock_timeout=settings.value(settings.LOCK_TIMEOUT),
            statement_timeout=settings.value(settings.STATEMENT_TIMEOUT),
            batch_size=settings.value(settings.BATCH_SIZE, database),
            lease_seconds=float(settings.value(settings.LEASE_SECONDS, database)),
        )


@dataclass
class RefreshReport:
    """What a refresh did, for logs, CLI output and Dagster metadata."""

    outcomes: list[VersionOutcome] = field(default_factory=list)
    batches: int = 0
    seconds: float = 0.0

    @property
    def refreshed(self) -> list[VersionOutcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[VersionOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def totals(self) -> dict[str, ReadModelCounts]:
        """Rows inserted, updated and deleted per read model, summed over versions."""
        sums: dict[str, list[int]] = {}
        for outcome in self.refreshed:
            for c in outcome.counts:
                acc = sums.setdefault(c.read_model, [0, 0, 0])
                acc[0] += c.inserted
                acc[1] += c.updated
                acc[2] += c.deleted
        return {name: ReadModelCounts(name, *acc) for name, acc in sums.items()}

    def record(self, outcome: VersionOutcome, on_version: Callable[[VersionOutcome], None] | None) -> None:
        self.outcomes.append(outcome)
        if on_version is not None:
            on_version(outcome)

    def versions_of(self, kind: str) -> list[uuid.UUID]:
        return [o.version_id for o in self.refreshed if o.kind == kind]

    def as_dict(self) -> dict:
        return {
            "refreshed": len(self.refreshed),
            "failed": [{"kind": o.kind, "version_id": str(o.version_id), "error": o.error} for o in self.failed],
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "rows": {
                name: {"inserted": c.inserted, "updated": c.updated, "deleted": c.deleted}
                for name, c in sorted(self.totals().items())
            },
        }


def prepare_session(conn: psycopg.Connection, policy: RefreshPolicy) -> None:
    gateway.configure_refresh_session(conn, policy.lock_timeout, policy.statement_timeout, policy.source)


def drain_queue(
    conn: psycopg.Connection,
    policy: RefreshPolicy | None = None,
    *,
    kinds: Iterable[str] | None = None,
    max_versions: int | None = None,
    worker: str | None = None,
    on_version: Callable[[VersionOutcome], None] | None = None,
) -> RefreshReport:
    """Refreshes queued versions until the queue has nothing ready (or max_versions).

    A lost connection ends the drain with ConnectionLost: what it had not
    finished stays queued, and its claims are taken over by the next claim."""
    policy = policy or RefreshPolicy.from_env(conn)
    report = RefreshReport()
    started = time.perf_counter()
    try:
        prepare_session(conn, policy)
        if gateway.storage_strategy(conn) == "matview":
            _drain_matviews(conn, report, on_version)
        else:
            _drain_claims(conn, policy, report, kinds, max_versions, worker or worker_name(), on_version)
    except psycopg.OperationalError as exc:
        if not gateway.connection_lost(conn, exc):
            raise
        raise ConnectionLost(
            f"lost the connection to the database after refreshing {len(report.refreshed)} version(s): "
            "the rest is still queued, and the next refresh takes it over"
        ) from None
    report.seconds = time.perf_counter() - started
    return report


def _drain_claims(
    conn: psycopg.Connection,
    policy: RefreshPolicy,
    report: RefreshReport,
    kinds: Iterable[str] | None,
    max_versions: int | None,
    worker: str,
    on_version: Callable[[VersionOutcome], None] | None,
) -> None:
    kind_list = sorted(kinds) if kinds is not None else None
    grace_ends: float | None = None
    while max_versions is None or len(report.outcomes) < max_versions:
        limit = (
            policy.batch_size if max_versions is None else min(policy.batch_size, max_versions - len(report.outcomes))
        )
        claims = gateway.claim_batch(conn, worker, limit, policy.lease_seconds, kind_list)
        if not claims:
            grace_ends = grace_ends or time.monotonic() + HOLDER_EXIT_GRACE_SECONDS
            if time.monotonic() >= grace_ends or not _claimable_soon(conn, kind_list):
                gateway.mark_populated_if_complete(conn)
                break
            time.sleep(gateway.CLIENT_CHECK_SECONDS)
            continue
        report.batches += 1
        for claim in claims:
            report.record(gateway.refresh_claimed(conn, claim, worker), on_version)


def _claimable_soon(conn: psycopg.Connection, kinds: list[str] | None) -> bool:
    """Whether entries of these kinds are claimed by holders alive as far as
    the database knows (one may be a killed worker's session, about to end),
    or ready (such a session ended since the last claim)."""
    kind = kinds[0] if kinds is not None and len(kinds) == 1 else None
    state = gateway.queue_state(conn, kind)
    return bool(state.get("claimed") or state.get("ready"))


def _drain_matviews(
    conn: psycopg.Connection, report: RefreshReport, on_version: Callable[[VersionOutcome], None] | None
) -> None:
    """The matview strategy has no per-version refresh: the SQL drain claims
    every ready entry, refreshes all views once and settles the claims."""
    while batch := gateway.drain_sql_batch(conn):
        report.batches += 1
        for kind, version_id in batch:
            report.record(VersionOutcome(kind, version_id), on_version)


def refresh_versions(
    conn: psycopg.Connection,
    versions: Iterable[tuple[str, uuid.UUID]],
    policy: RefreshPolicy | None = None,
    on_version: Callable[[VersionOutcome], None] | None = None,
) -> RefreshReport:
    """Refreshes the named versions now, queued or not."""
    prepare_session(conn, policy or RefreshPolicy.from_env(conn))
    report = RefreshReport(batches=1)
    started = time.perf_counter()
    for kind, version_id in versions:
        report.record(gateway.refresh_version(conn, kind, version_id), on_version)
    report.seconds = time.perf_counter() - started
    return report


def refresh_all(
    conn: psycopg.Connection,
    policy: RefreshPolicy | None = None,
    on_version: Callable[[VersionOutcome], None] | None = None,
) -> RefreshReport:
    """Every version, through the queue: resumable, since finished versions leave it."""
    gateway.enqueue_all_versions(conn)
    return drain_queue(conn, policy, on_version=on_version)


__all__ = ["Claim", "RefreshPolicy", "RefreshReport", "drain_queue", "refresh_all", "refresh_versions"]
