"""Draining the queue from Python: claim a batch in a short transaction, then
refresh each version in a transaction of its own, so one failure never stops
the rest and a killed worker loses at most its lease."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psycopg

from orchestration.db import gateway
from orchestration.db.gateway import Claim, ReadModelCounts, VersionOutcome

DEFAULT_BATCH_SIZE = 50
DEFAULT_LEASE_SECONDS = 300.0


def worker_name(prefix: str = "python") -> str:
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RefreshPolicy:
    """Per-session limits for refresh connections; from the environment by default."""

    lock_timeout: str = "5s"
    statement_timeout: str = "300s"
    batch_size: int = DEFAULT_BATCH_SIZE
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    # Who refreshes, as the refresh log records it: Dagster runs say 'dagster:<run id>';
    # any other Python drain is the command line's.
    source: str = "cli"

    @classmethod
    def from_env(cls) -> RefreshPolicy:
        return cls(
            lock_timeout=os.environ.get("PROGRESS_LOCK_TIMEOUT", cls.lock_timeout),
            statement_timeout=os.environ.get("PROGRESS_STATEMENT_TIMEOUT", cls.statement_timeout),
            batch_size=int(os.environ.get("PROGRESS_BATCH_SIZE", cls.batch_size)),
            lease_seconds=float(os.environ.get("PROGRESS_LEASE_SECONDS", cls.lease_seconds)),
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
    """Refreshes queued versions until the queue has nothing ready (or max_versions)."""
    policy = policy or RefreshPolicy.from_env()
    prepare_session(conn, policy)
    if gateway.storage_strategy(conn) == "matview":
        return _drain_matviews(conn, on_version)
    worker = worker or worker_name()
    kind_list = sorted(kinds) if kinds is not None else None
    report = RefreshReport()
    started = time.perf_counter()
    while max_versions is None or len(report.outcomes) < max_versions:
        limit = (
            policy.batch_size if max_versions is None else min(policy.batch_size, max_versions - len(report.outcomes))
        )
        claims = gateway.claim_batch(conn, worker, limit, policy.lease_seconds, kind_list)
        if not claims:
            break
        report.batches += 1
        for claim in claims:
            report.record(gateway.refresh_claimed(conn, claim, worker), on_version)
    report.seconds = time.perf_counter() - started
    return report


def _drain_matviews(conn: psycopg.Connection, on_version: Callable[[VersionOutcome], None] | None) -> RefreshReport:
    """The matview strategy has no per-version refresh: the SQL drain claims
    every ready entry, refreshes all views once and settles the claims."""
    report = RefreshReport()
    started = time.perf_counter()
    while batch := gateway.drain_sql_batch(conn):
        report.batches += 1
        for kind, version_id in batch:
            report.record(VersionOutcome(kind, version_id), on_version)
    report.seconds = time.perf_counter() - started
    return report


def refresh_versions(
    conn: psycopg.Connection,
    versions: Iterable[tuple[str, uuid.UUID]],
    policy: RefreshPolicy | None = None,
    on_version: Callable[[VersionOutcome], None] | None = None,
) -> RefreshReport:
    """Refreshes the named versions now, queued or not."""
    prepare_session(conn, policy or RefreshPolicy.from_env())
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
