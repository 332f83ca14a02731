"""Opening connections, with every connection failure turned into one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from orchestration.db.settings import redact
from orchestration.errors import ProgressError

CONNECT_TIMEOUT_SECONDS = 5


def describe_connection_error(exc: Exception, dsn: str) -> str:
    """One line saying what is wrong with reaching the database at dsn."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    where = redact(dsn)
    lowered = detail.lower()
    if (
        isinstance(exc, psycopg.ProgrammingError)
        or "invalid dsn" in lowered
        or 'missing "="' in lowered
        or "invalid connection option" in lowered
        or "invalid uri" in lowered
        or "invalid integer value" in lowered
    ):
        return f"invalid database URL {where!r}: {detail}"
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"authentication failed for {where}: check the user and password in the URL"
    if "does not exist" in lowered and "database" in lowered:
        return f"database not found at {where}: {detail}"
    if (
        "timeout" in lowered
        or "connection refused" in lowered
        or "could not translate host" in lowered
        or "no such file or directory" in lowered
        or "name or service not known" in lowered
    ):
        return f"cannot reach PostgreSQL at {where}: {detail}"
    return f"cannot connect to PostgreSQL at {where}: {detail}"


def connect(dsn: str, *, application_name: str = "progress-refresh") -> psycopg.Connection:
    """An autocommit connection; callers open transactions explicitly where they need one."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            application_name=application_name,
        )
    except (psycopg.Error, ValueError) as exc:
        raise ProgressError(describe_connection_error(exc, dsn)) from None


@contextmanager
def connection(dsn: str, *, application_name: str = "progress-refresh") -> Iterator[psycopg.Connection]:
    conn = connect(dsn, application_name=application_name)
    try:
        yield conn
    finally:
        conn.close()
