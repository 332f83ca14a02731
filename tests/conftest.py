"""Fixtures: a real PostgreSQL (PROGRESS_TEST_DATABASE_URL, or the embedded
server), and a fresh migrated database per test cloned from a template."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

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


@pytest.fixture(scope="session")
def template_dsn(server_dsn: str) -> Iterator[str]:
    """A migrated template database (default strategy); each test gets a copy of it."""
    yield _create_template(server_dsn, TEMPLATE, "table")
    _drop_database(server_dsn, TEMPLATE)


@pytest.fixture(scope="session")
def matview_template(server_dsn: str) -> Iterator[str]:
    name = f"{TEMPLATE}_matview"
    _create_template(server_dsn, name, "matview")
    yield name
    _drop_database(server_dsn, name)


def _create_database(server_dsn: str, template: str) -> str:
    name = f"progress_test_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    with connect(server_dsn) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


def _drop_database(server_dsn: str, name: str) -> None:
    with connect(server_dsn) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dsn(server_dsn: str, template_dsn: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    name = _create_database(server_dsn, TEMPLATE)
    yield database_dsn(server_dsn, name)
    _drop_database(server_dsn, name)


@pytest.fixture(params=["table", "matview"])
def strategy_dsn(request: pytest.FixtureRequest, server_dsn: str, template_dsn: str) -> Iterator[str]:
    """URL of a fresh database migrated with each storage strategy in turn."""
    template = TEMPLATE if request.param == "table" else request.getfixturevalue("matview_template")
    name = _create_database(server_dsn, template)
    yield database_dsn(server_dsn, name)
    _drop_database(server_dsn, name)


@pytest.fixture
def strategy_db(strategy_dsn: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection to a fresh database of each storage strategy."""
    with connect(strategy_dsn) as conn:
        yield conn


@pytest.fixture
def matview_db(server_dsn: str, matview_template: str) -> Iterator[psycopg.Connection]:
    """Autocommit connection to a fresh database migrated with the matview strategy, populated."""
    name = _create_database(server_dsn, matview_template)
    try:
        with connect(database_dsn(server_dsn, name)) as conn:
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            yield conn
    finally:
        _drop_database(server_dsn, name)


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
