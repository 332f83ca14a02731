"""The one PostgreSQL resource every asset, check and sensor uses.

The database is `database_url` when given, else PROGRESS_DATABASE_URL, else the
embedded server (kept running, so Dagster's short-lived run and code-server
processes never stop it under each other). The URL is never logged or put in
metadata as given: `display_url` masks its password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import Field

from orchestration.db.connection import connection
from orchestration.db.embedded import database_url
from orchestration.db.settings import DATABASE_URL_ENV, redact

APPLICATION_NAME = "progress-refresh-dagster"


class PostgresResource(dg.ConfigurableResource):
    """The product's PostgreSQL database (base tables, queue and read models)."""

    database_url: str | None = Field(
        default=None,
        description=f"libpq URL of the product database; unset: ${DATABASE_URL_ENV}, "
        "else the embedded PostgreSQL under the project's state folder.",
    )

    def dsn(self) -> str:
        """The URL connections use (resolved at use, so the environment of the run decides)."""
        return self.database_url or database_url(keep_running=True)

    @property
    def display_url(self) -> str:
        """The URL with its password masked: the only form fit for logs and metadata."""
        return redact(self.dsn())

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection for one unit of work, closed afterwards."""
        with connection(self.dsn(), application_name=APPLICATION_NAME) as conn:
            yield conn
