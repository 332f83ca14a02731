"""Opening connections, with every connection failure turned into one clear line.

libpq's messages quote the URL, or pieces of it cut where a bad character
split it (a password's tail among them), so none is shown as is: the line
says what is wrong in its own words, with the URL masked by `mask_dsn`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict

from orchestration.db.dsn import (
    KEYWORD_QUOTING_HINT,
    PERCENT_ENCODE_HINT,
    URL_SCHEMES,
    looks_unencoded,
    mask_dsn,
    url_scheme,
)
from orchestration.errors import ProgressError

CONNECT_TIMEOUT_SECONDS = 5

# Fragments of libpq's messages (lower case) and what they mean, most specific first.
_INVALID_URL = (
    ("unexpected spaces", "a space where none may be"),
    ("percent-encoded", "a '%' that does not start a percent-encoded character"),
    ("invalid integer value", "the port (or another number) is not a number"),
    ("invalid port", "the port is not a number"),
    ("unterminated quoted string", "a quoted value is not closed"),
    ('missing "="', "it is neither a postgresql:// URL nor key=value pairs"),
    ("missing key/value separator", "a query parameter has no '='"),
    ("invalid connection option", "it names an unknown connection option"),
    ("invalid uri query parameter", "it names an unknown query parameter"),
    ("invalid uri", "it is not a valid URL"),
    ("invalid dsn", "it is not a valid URL"),
    ("invalid sslmode", "sslmode has an unknown value"),
)
_UNREACHABLE = (
    ("could not translate host", "the host name is not known"),
    ("failed to resolve host", "the host name is not known"),
    ("name or service not known", "the host name is not known"),
    ("connection refused", "connection refused (is the server running, are host and port right?)"),
    ("no such file or directory", "no server socket there (is the server running?)"),
    ("timeout", "no answer within {timeout}s"),
    ("timed out", "no answer within {timeout}s"),
    ("network is unreachable", "the network is unreachable"),
    ("invalid response to ssl negotiation", "what answers there is not PostgreSQL (is the port right?)"),
    (
        "server closed the connection unexpectedly",
        "the server closed the connection (is the port right, is the server restarting?)",
    ),
    ("received invalid response", "what answers there is not PostgreSQL (is the port right?)"),
    ("expected authentication request", "what answers there is not PostgreSQL (is the port right?)"),
)


def connect_timeout(dsn: str) -> int:
    """The URL's connect_timeout when it sets a positive one, else CONNECT_TIMEOUT_SECONDS."""
    try:
        given = str(conninfo_to_dict(dsn).get("connect_timeout") or "")
    except (psycopg.Error, ValueError):
        return CONNECT_TIMEOUT_SECONDS
    # libpq waits at least 2 s, whatever smaller value it is given.
    return max(2, int(given)) if given.isdigit() and int(given) > 0 else CONNECT_TIMEOUT_SECONDS


def _first(lowered: str, table: tuple[tuple[str, str], ...]) -> str | None:
    return next((meaning for fragment, meaning in table if fragment in lowered), None)


def describe_connection_error(exc: BaseException, dsn: str) -> str:
    """One line saying what is wrong with reaching the database at dsn, never a secret."""
    where = mask_dsn(dsn)
    hint = f"; {PERCENT_ENCODE_HINT}" if looks_unencoded(dsn) else ""
    scheme = url_scheme(dsn)
    if scheme is not None and scheme not in URL_SCHEMES:
        return f"invalid database URL {where}: the scheme must be postgresql:// or postgres://, not {scheme}://"
    lowered = " ".join(str(exc).split()).lower()
    problem = _first(lowered, _INVALID_URL)
    if problem is not None or isinstance(exc, psycopg.ProgrammingError | ValueError):
        how = PERCENT_ENCODE_HINT if scheme is not None else KEYWORD_QUOTING_HINT
        return f"invalid database URL {where}: {problem or 'it is not a valid URL'}; {how}"
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"authentication failed for {where}: check the user and password in the URL{hint}"
    if "does not exist" in lowered and "database" in lowered:
        return f"database not found at {where}: check the database name in the URL{hint}"
    if "does not exist" in lowered and "role" in lowered:
        return f"authentication failed for {where}: the user does not exist{hint}"
    reason = _first(lowered, _UNREACHABLE)
    if reason is not None:
        return f"cannot reach PostgreSQL at {where}: {reason.format(timeout=connect_timeout(dsn))}{hint}"
    code = f" (SQLSTATE {exc.sqlstate})" if isinstance(exc, psycopg.Error) and exc.sqlstate else ""
    return f"cannot connect to PostgreSQL at {where}: {type(exc).__name__}{code}{hint}"


def connect(dsn: str, *, application_name: str = "progress-refresh") -> psycopg.Connection:
    """An autocommit connection; callers open transactions explicitly where they need one."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            connect_timeout=connect_timeout(dsn),
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
