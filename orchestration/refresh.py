"""Draining the queue from Python: claim a batch in a short transaction, then
refresh each version in a transaction of its own, so one failure never stops
the rest. A killed worker's claims are taken over by the next claim, as soon
as the database sees its session gone.

A drain may use several workers, each a thread with its own connection. They
claim with FOR UPDATE SKIP LOCKED, so no two hold the same version, and the
per-version advisory lock serialises them anyway. A following drain (a
sensor-started Dagster run) keeps claiming the changes that arrive while it
runs, until the queue has stayed empty for a while or a time limit is reached,
so a stream of writes costs one run instead of one per sensor tick.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import closing
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
# How often a following drain looks at an empty queue again.
POLL_SECONDS = 0.5

# Opens a new autocommit connection to the product database (one per extra worker).
ConnectionFactory = Callable[[], psycopg.Connection]


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
    # Workers refreshing in parallel, each with its own connection.
    workers: int = settings.REFRESH_WORKERS.default
    # A following drain ends once the queue has had nothing ready for this long...
    idle_seconds: float = settings.RUN_IDLE_SECONDS.default
    # ...or once it has drained this long (the sensor then starts the next run).
    max_run_seconds: float = settings.RUN_MAX_SECONDS.default

    @classmethod
    def from_env(cls, conn: psycopg.Connection | None = None) -> RefreshPolicy:
        """The environment, then (given a connection) the database's settings, then the defaults."""
        database = gateway.settings(conn) if conn is not None else None
        return cls(
            lock_timeout=settings.value(settings.LOCK_TIMEOUT),
            statement_timeout=settings.value(settings.STATEMENT_TIMEOUT),
            batch_size=settings.value(settings.BATCH_SIZE, database),
            lease_seconds=float(settings.value(settings.LEASE_SECONDS, database)),
            workers=settings.value(settings.REFRESH_WORKERS),
            idle_seconds=settings.value(settings.RUN_IDLE_SECONDS),
            max_run_seconds=settings.value(settings.RUN_MAX_SECONDS),
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

    def of_kind(self, kind: str) -> RefreshReport:
        """The part of this report about one kind (same batches and duration)."""
        return RefreshReport([o for o in self.outcomes if o.kind == kind], self.batches, self.seconds)

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
    connect: ConnectionFactory | None = None,
    workers: int | None = None,
    follow: bool = False,
) -> RefreshReport:
    """Refreshes queued versions until the queue has nothing ready (or max_versions).

    With `connect`, up to `workers` (default: the policy's) workers drain at once,
    the first on `conn`, each other on a connection of its own. With `follow`, the
    drain keeps claiming what arrives until the queue has had nothing ready for
    policy.idle_seconds, and claims nothing new after policy.max_run_seconds.

    A lost connection ends the drain with ConnectionLost: what it had not
    finished stays queued, and its claims are taken over by the next claim."""
    policy = policy or RefreshPolicy.from_env(conn)
    count = 1 if connect is None else max(1, workers if workers is not None else policy.workers)
    drain = _ParallelDrain(policy, sorted(kinds) if kinds is not None else None, max_versions, follow, on_version)
    started = time.perf_counter()
    try:
        prepare_session(conn, policy)
        if gateway.storage_strategy(conn) == "matview":
            _drain_matviews(conn, drain.report, on_version)
        else:
            drain.run(conn, connect, worker or worker_name(), count)
            gateway.mark_populated_if_complete(conn)
    except (psycopg.OperationalError, _WorkerConnectionLost) as exc:
        if isinstance(exc, psycopg.OperationalError) and not gateway.connection_lost(conn, exc):
            raise
        raise ConnectionLost(
            f"lost the connection to the database after refreshing {len(drain.report.refreshed)} version(s): "
            "the rest is still queued, and the next refresh takes it over"
        ) from None
    drain.report.seconds = time.perf_counter() - started
    return drain.report


class _WorkerConnectionLost(Exception):
    """A worker's own connection was lost (its session is gone)."""


class _ParallelDrain:
    """Workers sharing one report and one budget; each claims its own batches."""

    def __init__(
        self,
        policy: RefreshPolicy,
        kinds: list[str] | None,
        max_versions: int | None,
        follow: bool,
        on_version: Callable[[VersionOutcome], None] | None,
    ) -> None:
        self.policy, self.kinds, self.max_versions, self.follow = policy, kinds, max_versions, follow
        self.on_version = on_version
        self.report = RefreshReport()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.started = self.last_claimed = time.monotonic()
        self.reserved = 0  # versions claimed or being claimed, against max_versions
        self.workers = 1

    def run(self, conn: psycopg.Connection, connect: ConnectionFactory | None, name: str, count: int) -> None:
        self.workers = count
        names = [name] if count == 1 else [f"{name}/{i}" for i in range(1, count + 1)]
        assert connect is not None or count == 1
        helpers = [
            threading.Thread(target=self._helper, args=(connect, n), name=f"refresh-{n}", daemon=True)
            for n in names[1:]
        ]
        for thread in helpers:
            thread.start()
        try:
            self._work(conn, names[0])
        except BaseException:
            # Interrupted or failed: the helpers stop after their current version;
            # what they still hold is taken over by the next claim.
            self.stop.set()
            raise
        for thread in helpers:
            thread.join()
        if self.errors:
            raise self.errors[0]

    def _helper(self, connect: ConnectionFactory | None, name: str) -> None:
        conn: psycopg.Connection | None = None
        try:
            assert connect is not None
            with closing(connect()) as conn:
                prepare_session(conn, self.policy)
                self._work(conn, name)
        except BaseException as exc:
            lost = isinstance(exc, psycopg.OperationalError) and conn is not None and gateway.connection_lost(conn, exc)
            with self.lock:
                self.errors.append(_WorkerConnectionLost() if lost else exc)
            self.stop.set()

    def _reserve(self) -> int:
        """How many versions to claim next; 0 when this worker should stop."""
        with self.lock:
            if self.stop.is_set():
                return 0
            if self.follow and time.monotonic() - self.started >= self.policy.max_run_seconds:
                return 0
            limit = self.policy.batch_size
            if self.max_versions is not None:
                limit = min(limit, self.max_versions - self.reserved)
            limit = max(limit, 0)
            self.reserved += limit
            return limit

    def _claimed(self, reserved: int, claimed: int) -> None:
        with self.lock:
            self.reserved -= reserved - claimed
            if claimed:
                self.report.batches += 1
                self.last_claimed = time.monotonic()

    def _keep_following(self) -> bool:
        """After an empty claim: whether a following drain should look again."""
        if not self.follow:
            return False
        now = time.monotonic()
        with self.lock:
            quiet = now - self.last_claimed
        return quiet < self.policy.idle_seconds and now - self.started < self.policy.max_run_seconds

    def _fair_share(self, conn: psycopg.Connection, limit: int) -> int:
        """With several workers, a claim takes at most its share of what is ready, so
        no worker idles while another still holds a long batch."""
        if self.workers == 1:
            return limit
        kind = self.kinds[0] if self.kinds is not None and len(self.kinds) == 1 else None
        ready = int(gateway.queue_state(conn, kind).get("ready", 0))
        return max(1, min(limit, -(-ready // self.workers)))

    def _work(self, conn: psycopg.Connection, name: str) -> None:
        grace_ends: float | None = None
        while reserved := self._reserve():
            limit = self._fair_share(conn, reserved)
            if limit < reserved:
                self._claimed(reserved - limit, 0)
            claims = gateway.claim_batch(conn, name, limit, self.policy.lease_seconds, self.kinds)
            self._claimed(limit, len(claims))
            if not claims:
                if self._keep_following():
                    self.stop.wait(POLL_SECONDS)
                    continue
                # Claims of a killed worker are claimable once its session ends: wait a little.
                grace_ends = grace_ends or time.monotonic() + HOLDER_EXIT_GRACE_SECONDS
                if time.monotonic() >= grace_ends or not _claimable_soon(conn, self.kinds):
                    return
                self.stop.wait(gateway.CLIENT_CHECK_SECONDS)
                continue
            for claim in claims:
                outcome = gateway.refresh_claimed(conn, claim, name)
                with self.lock:
                    self.report.record(outcome, self.on_version)
                    self.last_claimed = time.monotonic()


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
    connect: ConnectionFactory | None = None,
) -> RefreshReport:
    """Every version, through the queue: resumable, since finished versions leave it."""
    gateway.enqueue_all_versions(conn)
    return drain_queue(conn, policy, on_version=on_version, connect=connect)


__all__ = ["Claim", "RefreshPolicy", "RefreshReport", "drain_queue", "refresh_all", "refresh_versions"]
