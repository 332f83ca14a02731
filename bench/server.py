"""The benchmark's databases: a template per size and server, cloned once per
strategy.

Each strategy runs on a server of its own by default: the baseline's refresh
reads and writes the whole database through the buffer cache, and on a shared
server it would evict every page of ours between two of our drains, so our
drains at L would be timed reading back from disk what the baseline pushed out
(a co-tenant production never has: ours replaces the matview refresh).

Every database the benchmark creates is named bench_<pid>_<size>_<role>, so
concurrent runs on one server never collide, and is dropped at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo

from orchestration.db.connection import connect

APPLICATION_NAME = "progress-bench"


def database_name(size: str, role: str) -> str:
    return f"bench_{os.getpid()}_{size.lower()}_{role}"


def database_dsn(server_dsn: str, name: str) -> str:
    return make_conninfo(server_dsn, dbname=name)


def open_db(server_dsn: str, name: str) -> psycopg.Connection:
    return connect(database_dsn(server_dsn, name), application_name=APPLICATION_NAME)


class Databases:
    """Creates, clones and (always) drops the run's databases."""

    def __init__(self, server_dsn: str, log: Callable[[str], None], label: str = "the server") -> None:
        self.server_dsn = server_dsn
        self.log = log
        self.label = label
        self.created: list[str] = []

    def _admin(self) -> psycopg.Connection:
        return connect(self.server_dsn, application_name=APPLICATION_NAME)

    def create(self, name: str, template: str | None = None) -> None:
        """CREATE DATABASE, optionally cloned file by file from a template."""
        clause = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        with self._admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            for attempt in range(30):
                try:
                    admin.execute(f"CREATE DATABASE {name}{clause}")
                    break
                except psycopg.errors.ObjectInUse:
                    # An autovacuum worker may still be connected to the template.
                    if attempt == 29:
                        raise
                    time.sleep(1)
        self.created.append(name)

    def drop(self, name: str) -> None:
        with self._admin() as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in list(reversed(self.created)):
            try:
                self.drop(name)
            except psycopg.Error as exc:  # pragma: no cover - best effort at exit
                self.log(f"could not drop {name}: {exc}")

    def server_info(self) -> dict[str, str]:
        settings = (
            "server_version",
            "shared_buffers",
            "work_mem",
            "maintenance_work_mem",
            "jit",
            "max_parallel_workers_per_gather",
            "synchronous_commit",
            "wal_level",
        )
        with self._admin() as admin:
            info = {s: str(admin.execute(f"SHOW {s}").fetchone()[0]) for s in settings}  # type: ignore[index]
        info["cpu_count"] = str(os.cpu_count())
        return info


# The baseline's embedded server: the same binaries and settings as the
# embedded default, its data in a folder of its own under the state folder.
BASELINE_PGDATA = "bench-baseline-pgdata"


def baseline_embedded_dsn() -> str:
    """Starts (or joins) the baseline's embedded server; it stops when this process ends."""
    from orchestration.db.embedded import start_embedded
    from orchestration.settings import state_dir

    return start_embedded(pgdata=state_dir() / BASELINE_PGDATA)


def server_databases(dsn: str | None, log: Callable[[str], None]) -> Databases:
    """The benchmark's databases on the given server, or on the embedded one (started or joined)."""
    if dsn is None:
        from orchestration.db.embedded import start_embedded

        dsn = start_embedded()
    return Databases(dsn, log)
