"""Fixtures: a real PostgreSQL (PROGRESS_TEST_DATABASE_URL, or the embedded
server), and a fresh migrated database per test cloned from a template."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ClassVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from orchestration import settings
from orchestration.db.connection import connect
from orchestration.db.embedded import start_embedded
from orchestration.db.migrations import migrate
from orchestration.settings import TEST_DATABASE_URL, TEST_POSTGRES_BIN, state_dir

# One template per test session, so concurrent sessions on one server never collide.
TEMPLATE = f"progress_test_template_{os.getpid()}"
_counter = itertools.count()


def database_dsn(server_dsn: str, dbname: str) -> str:
    return make_conninfo(server_dsn, dbname=dbname)


@pytest.fixture(scope="session")
def server_dsn(record_testsuite_property) -> str:
    """DSN of a maintenance database on the test server: PROGRESS_TEST_DATABASE_URL,
    else a server from PROGRESS_TEST_POSTGRES_BIN's binaries, else the embedded one.
    Its version goes in the JUnit report, for `project.py test` to say where it ran."""
    configured = settings.from_env(TEST_DATABASE_URL)
    bin_dir = settings.from_env(TEST_POSTGRES_BIN)
    if configured:
        dsn = str(configured)
    elif bin_dir is not None:
        dsn = start_embedded(pgdata=state_dir() / f"pgdata-test-{bin_dir.parent.name}", bin_dir=bin_dir)
    else:
        dsn = start_embedded()
    with connect(dsn) as conn:
        record_testsuite_property("postgresql_version", conn.execute("SHOW server_version").fetchone()[0])
    return dsn


def _create_template(server_dsn: str, name: str, strategy: str) -> str:
    with connect(server_dsn) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    dsn = database_dsn(server_dsn, name)
    with connect(dsn) as conn:
        migrate(conn, strategy=strategy)
    return dsn


class Copies:
    """Fresh copies of a template database, made a few ahead in the background
    and dropped in the background. A copy takes about 0.4 s, nearly all of it
    waiting for the disk, and a drop forces a checkpoint: done while other
    tests run, neither adds to every test's setup and teardown.

    Tests marked `quiet_server` run with nothing of this under way: a copy made
    or dropped meanwhile is a transaction that holds back the server's
    snapshot horizon, which the refresh log's readers wait for."""

    AHEAD = 3
    every: ClassVar[list[Copies]] = []  # a quiet test waits for all of them

    def __init__(self, server_dsn: str, template: str) -> None:
        Copies.every.append(self)
        self.server_dsn = server_dsn
        self.template = template
        self._maker = ThreadPoolExecutor(max_workers=self.AHEAD, thread_name_prefix=f"copies-of-{template}")
        self._coming: deque[Future[str]] = deque()
        self._dropper = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"drops-of-{template}")
        self._dropping: list[Future[None]] = []

    def take(self, quiet: bool = False) -> str:
        """The name of a copy for one test only. Quiet: once nothing is under way, and nothing is started."""
        if quiet:
            for copies in Copies.every:
                copies._settle()
        else:
            while len(self._coming) <= self.AHEAD:
                self._coming.append(self._maker.submit(_create_database, self.server_dsn, self.template))
        if self._coming:
            with contextlib.suppress(psycopg.Error):  # the server went away meanwhile (a test restarted it)
                return self._coming.popleft().result()
        return _create_database(self.server_dsn, self.template)

    def give_back(self, name: str, quiet: bool = False) -> None:
        """Drops a test's copy: in the background, or at once when quiet."""
        self._dropping = [dropping for dropping in self._dropping if not dropping.done()]
        if quiet:
            _drop_database(self.server_dsn, name)
        else:
            self._dropping.append(self._dropper.submit(_drop_database, self.server_dsn, name))

    def _settle(self) -> None:
        for work in [*self._coming, *self._dropping]:
            with contextlib.suppress(psycopg.Error):
                work.result()
        self._dropping = []

    def close(self) -> None:
        """Drops every copy, taken or not; the template can then be dropped."""
        self._settle()
        while self._coming:
            with contextlib.suppress(psycopg.Error):
                _drop_database(self.server_dsn, self._coming.popleft().result())
        self._maker.shutdown()
        self._dropper.shutdown()
        Copies.every.remove(self)


def _quiet(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("quiet_server") is not None


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> Iterator[str]:
    """A migrated template database (default strategy); each test gets a copy of it."""
    yield _create_template(server_dsn, TEMPLATE, "table")
    _drop_database(server_dsn, TEMPLATE)


@pytest.fixture(scope="session")
def template_copies(server_dsn: str, template_dsn: str) -> Iterator[Copies]:
    copies = Copies(server_dsn, TEMPLATE)
    yield copies
    copies.close()


@pytest.fixture(scope="session")
def matview_template(server_dsn: str) -> Iterator[str]:
    name = f"{TEMPLATE}_matview"
    _create_template(server_dsn, name, "matview")
    yield name
    _drop_database(server_dsn, name)


@pytest.fixture(scope="session")
def matview_copies(server_dsn: str, matview_template: str) -> Iterator[Copies]:
    copies = Copies(server_dsn, matview_template)
    yield copies
    copies.close()


def _create_database(server_dsn: str, template: str) -> str:
    name = f"progress_test_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with connect(server_dsn) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


def _drop_database(server_dsn: str, name: str) -> None:
    with connect(server_dsn) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(request: pytest.FixtureRequest, server_dsn: str, template_copies: Copies) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    name = template_copies.take(_quiet(request))
    yield database_dsn(server_dsn, name)
    template_copies.give_back(name, _quiet(request))


@pytest.fixture(params=["table", "matview"])
def strategy_dsn(request: pytest.FixtureRequest, server_dsn: str) -> Iterator[str]:
    """URL of a fresh database migrated with each storage strategy in turn."""
    copies: Copies = request.getfixturevalue("template_copies" if request.param == "table" else "matview_copies")
    name = copies.take(_quiet(request))
    yield database_dsn(server_dsn, name)
    copies.give_back(name, _quiet(request))


@pytest.fixture
def strategy_db(strategy_dsn: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection to a fresh database of each storage strategy."""
    with connect(strategy_dsn) as conn:
        yield conn


@pytest.fixture
def matview_db(request: pytest.FixtureRequest, server_dsn: str, matview_copies: Copies) -> Iterator[psycopg.Connection]:
    """Autocommit connection to a fresh database migrated with the matview strategy, populated."""
    name = matview_copies.take(_quiet(request))
    try:
        with connect(database_dsn(server_dsn, name)) as conn:
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            yield conn
    finally:
        matview_copies.give_back(name, _quiet(request))


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """URL of a fresh database with nothing installed."""
    name = _create_database(server_dsn, "template0")
    yield database_dsn(server_dsn, name)
    _drop_database(server_dsn, name)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection to this test's fresh database."""
    with connect(dsn) as conn:
        yield conn
