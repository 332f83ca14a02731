"""The one PostgreSQL resource every asset, check and sensor uses.

The database is `database_url` when given, else the embedded server (kept
running, so Dagster's short-lived run and code-server processes never stop it
under each other). `postgres_resource()` passes PROGRESS_DATABASE_URL as a
`dg.EnvVar`, so the Dagster UI shows the variable's name, never the URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg
from pydantic import Field

from orchestration.db.connection import connection
from orchestration.db.embedded import start_embedded
from orchestration.settings import DATABASE_URL, configured_database_url

APPLICATION_NAME = "progress-refresh-dagster"


class PostgresResource(dg.ConfigurableResource):
    """The product's PostgreSQL database (base tables, queue and read models)."""

    database_url: str | None = Field(
        default=None,
        description=f"libpq URL of the product database (set from ${DATABASE_URL.env}); "
        "unset: the embedded PostgreSQL under the project's state folder.",
    )

    def dsn(self) -> str:
        """The URL connections use."""
        return self.database_url or start_embedded(keep_running=True)

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection for one unit of work, closed afterwards."""
        with connection(self.dsn(), application_name=APPLICATION_NAME) as conn:
            yield conn


def postgres_resource() -> PostgresResource:
    """PROGRESS_DATABASE_URL through dg.EnvVar when it is set (read where the resource is
    used, so every Dagster process follows its own environment); unset, the embedded server."""
    if configured_database_url() is None:
        return PostgresResource()
    return PostgresResource(database_url=dg.EnvVar(str(DATABASE_URL.env)))
