"""Ordered, idempotent SQL migrations from sql/, applied under an advisory lock
in one transaction, tracked in progress_schema_migrations."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

from orchestration.db.base_schema import base_tables_present
from orchestration.db.settings import PROJECT_ROOT
from orchestration.errors import ProgressError
from orchestration.read_models import READ_MODELS

# Arbitrary but fixed: every migrate of every release takes this advisory lock.
MIGRATION_LOCK_KEY = 7_370_214_001
BASE_TABLES_MIGRATION = 1
STRATEGIES = ("table", "matview")
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def _sql_dir() -> Path:
    in_checkout = PROJECT_ROOT / "sql"
    if in_checkout.is_dir():
        return in_checkout
    return Path(str(resources.files("orchestration") / "sql"))


def load_migrations() -> list[Migration]:
    migrations = []
    for path in sorted(_sql_dir().glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise ProgressError(f"unexpected file in sql/: {path.name} (expected NNN_name.sql)")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    return migrations


def latest_version() -> int:
    return max(migration.version for migration in load_migrations())


def applied_versions(conn: psycopg.Connection) -> dict[int, str]:
    """Applied migration versions with their checksums; empty on a fresh database."""
    exists = conn.execute("SELECT to_regclass('progress_schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    return dict(conn.execute("SELECT version, checksum FROM progress_schema_migrations").fetchall())


def check_schema_current(conn: psycopg.Connection) -> None:
    """Refuses a database this release has not migrated, or one a newer release has."""
    applied = applied_versions(conn)
    latest = latest_version()
    if not applied:
        raise ProgressError("the database is not migrated yet: run `progress-refresh migrate`")
    newest = max(applied)
    if newest > latest:
        raise ProgressError(
            f"the database was migrated by a newer release (schema {newest}, this release knows "
            f"up to {latest}): upgrade progress-refresh"
        )
    if newest < latest:
        raise ProgressError(
            f"the database schema is at {newest}, this release needs {latest}: run `progress-refresh migrate`"
        )


def migrate(conn: psycopg.Connection, strategy: str | None = None) -> list[str]:
    """Applies new or changed migrations; returns the names applied."""
    if strategy is not None and strategy not in STRATEGIES:
        raise ProgressError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    migrations = load_migrations()
    latest = max(m.version for m in migrations)
    applied_names: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATION_LOCK_KEY])
        # SECURITY DEFINER functions capture this path (SET search_path FROM CURRENT):
        # the install schema first, temporary objects last so they cannot shadow ours.
        conn.execute("SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)")
        # Read by sql/004 on a first migrate only; later switches happen below.
        conn.execute("SELECT set_config('progress.initial_strategy', %s, true)", [strategy or ""])
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS progress_schema_migrations (
                version    int PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = applied_versions(conn)
        if applied and max(applied) > latest:
            raise ProgressError(
                f"the database was migrated by a newer release (schema {max(applied)}, this release "
                f"knows up to {latest}): upgrade progress-refresh"
            )
        has_base_tables = base_tables_present(conn)
        for migration in migrations:
            if applied.get(migration.version) == migration.checksum:
                continue
            if migration.version == BASE_TABLES_MIGRATION and has_base_tables:
                pass  # the database's own base tables stay as they are
            else:
                conn.execute(migration.sql)
            conn.execute(
                """
                INSERT INTO progress_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)
                ON CONFLICT (version) DO UPDATE
                   SET name = EXCLUDED.name, checksum = EXCLUDED.checksum, applied_at = now()
                """,
                [migration.version, migration.name, migration.checksum],
            )
            applied_names.append(f"{migration.version:03d}_{migration.name}")
        if strategy is not None and strategy != current_strategy(conn):
            # An explicit switch: the other strategy's stored read models are
            # dropped and recreated empty; refresh_progress_materialized_views_full() repopulates.
            conn.execute("SELECT progress_install_storage(%s)", [strategy])
            conn.execute("SELECT progress_install_refresh_functions()")
            applied_names.append(f"storage strategy {strategy}")
        # The generated refresh functions embed the read-model definitions: regenerate
        # them on every migrate, so a changed definition never leaves a stale copy.
        conn.execute("SELECT progress_install_refresh_functions()")
        _write_read_model_registry(conn)
        conn.execute("SELECT progress_apply_grants()")
    return applied_names


def current_strategy(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT progress_storage_strategy()").fetchone()
    return str(row[0]) if row else "table"


def _write_read_model_registry(conn: psycopg.Connection) -> None:
    """Mirrors read_models.py into the database and checks it against the SQL definitions."""
    defined = {
        name: (view, tuple(keys))
        for name, view, keys in conn.execute(
            "SELECT stored_name, logical_view, key_columns FROM progress_read_model_definitions"
        )
    }
    declared = {model.name: (model.logical_view, model.key_columns) for model in READ_MODELS}
    if defined != declared:
        raise ProgressError(
            "read_models.py and sql/ disagree on the read models (names, logical views or keys): "
            f"Python {sorted(set(declared.items()) - set(defined.items()))}, "
            f"SQL {sorted(set(defined.items()) - set(declared.items()))}"
        )
    conn.execute("DELETE FROM progress_read_models")
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO progress_read_models (name, kind, level, logical_view, upstreams, description)
            VALUES (%s, %s, %s, %s, %s, %s)
            """,
            [(m.name, m.kind, m.level, m.logical_view, list(m.upstreams), m.description) for m in READ_MODELS],
        )
