"""Installing and upgrading the schema: look first, then change.

`migrate` reads what the database holds and makes a plan (`--dry-run` prints
it and stops). It then applies, in order:

1. the append-only migrations of sql/migrations/ not yet applied (a released
   migration is never edited: one whose file changed since it was applied is
   an error naming it);
2. every repeatable definition of sql/definitions/ (functions, views, triggers);
3. the read-model registry, written from sql/read_models/, and what is made
   from it: logical views, storage, refresh functions, grants.

A read model that is new on a populated database, or whose definition
changed, or (`--adopt`) one of the previous design standing under our name, is
built beside the one readers read ("shadow") and swapped in by one short
transaction. A migrate holds a session advisory lock throughout; claims take
it shared and claim nothing meanwhile, so no change is drained half-way.

Readers and writers go on meanwhile, and a migrate gives way to them: it waits
for a lock only briefly (less than the server's deadlock_timeout) and then
rolls back and tries again. A reader of nested views (or of a view and a
table) may hold one relation while it waits for another the migrate holds;
the migrate, waiting for the reader soon after, gives up before the reader's
deadlock check runs, so the reader goes on rather than fail.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import psycopg

from orchestration.db.base_schema import REQUIRED_COLUMNS, base_tables_present
from orchestration.db.inspection import ENQUEUE_FUNCTION, TAKEOVER_SETTING, Inspection, inspect
from orchestration.errors import ProgressError
from orchestration.read_models import READ_MODELS, ReadModel
from orchestration.sql_files import sql_files

# Arbitrary but fixed: every migrate of every release takes this advisory lock.
MIGRATION_LOCK_KEY = 7_370_214_001
BASE_TABLES_MIGRATION = 1
STRATEGIES = ("table", "matview")
# Release 0.1.0 recorded versions 3-10 for scripts that mixed tables with
# functions; 003_product_tables and the repeatable definitions supersede them.
RELEASE_0_1_MIXED_SCRIPTS = {
    3: "logical_views",
    4: "control_tables",
    5: "read_model_storage",
    6: "change_capture",
    7: "refresh_functions",
    8: "queue_and_api",
    9: "observability",
    10: "security",
}
# The SQL API's functions hold names the previous design used too: a take-over
# installs them in the transaction that swaps the read models in.
SQL_API_DEFINITIONS = "sql_api"
# Tries of a transaction that could not get its locks (see _giving_way).
LOCK_ATTEMPTS = 10
# How long a swap waits for transactions older than the read models it swaps in.
SNAPSHOT_WAIT_SECONDS = 120.0
T = TypeVar("T")
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_CREATE_INDEX = re.compile(r"^CREATE INDEX IF NOT EXISTS (\w+) (ON [^;]+);", re.MULTILINE)


@dataclass(frozen=True)
class SqlFile:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class Migration(SqlFile):
    version: int = 0

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


def load_migrations() -> list[Migration]:
    migrations = []
    for path in sql_files("migrations"):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise ProgressError(f"unexpected file in sql/migrations/: {path.name} (expected NNN_name.sql)")
        migrations.append(Migration(match.group(2), path.read_text(encoding="utf-8"), int(match.group(1))))
    return migrations


def load_definitions() -> list[SqlFile]:
    return [SqlFile(path.stem, path.read_text(encoding="utf-8")) for path in sql_files("definitions")]


# The definitions (functions, views, triggers) this release installs change
# without a migration: migrate records their digest, and commands refuse a
# database whose digest is another release's (a package upgraded, migrate not run).
DEFINITIONS_DIGEST_SETTING = "definitions_digest"


def definitions_digest() -> str:
    """A digest of this release's repeatable definitions and read-model files."""
    digest = hashlib.sha256()
    for kind in ("definitions", "read_models"):
        for path in sql_files(kind):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def latest_version() -> int:
    return max(migration.version for migration in load_migrations())


def applied_versions(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    """Applied migrations: version -> (name, checksum); empty on a fresh database."""
    exists = conn.execute("SELECT to_regclass('progress_schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM progress_schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def _current(applied: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """Applied migrations less release 0.1.0's superseded scripts."""
    return {v: row for v, row in applied.items() if RELEASE_0_1_MIXED_SCRIPTS.get(v) != row[0]}


def _check_history(applied: dict[int, tuple[str, str]], migrations: list[Migration]) -> list[Migration]:
    """The migrations still to apply; ProgressError for a newer release, an
    unknown applied migration, or a released migration edited since."""
    known = {m.version: m for m in migrations}
    latest = max(known)
    current = _current(applied)
    newer = [v for v in current if v > latest]
    if newer:
        raise ProgressError(
            f"the database was migrated by a newer release (schema {max(newer)}, this release knows "
            f"up to {latest}): upgrade progress-refresh"
        )
    for version, (name, checksum) in sorted(current.items()):
        migration = known.get(version)
        if migration is None or migration.name != name:
            raise ProgressError(f"the database has migration {version:03d}_{name}, which this release does not know")
        if migration.checksum != checksum:
            raise ProgressError(
                f"sql/migrations/{migration.label}.sql changed after it was applied: released migrations "
                "are never edited (restore it and add a new migration)"
            )
    return [m for m in migrations if m.version not in current]


def check_schema_current(conn: psycopg.Connection) -> None:
    """Refuses a database this release has not migrated, or one a newer release has."""
    applied = applied_versions(conn)
    if not applied:
        if inspect(conn).needs_adoption:
            raise ProgressError(
                "the database holds the previous design, not yet taken over: "
                "run `progress-refresh migrate --adopt --dry-run`, then `progress-refresh migrate --adopt`"
            )
        raise ProgressError("the database is not migrated yet: run `progress-refresh migrate`")
    pending = _check_history(applied, load_migrations())
    if pending or len(_current(applied)) < len(applied):
        raise ProgressError("the database schema is older than this release: run `progress-refresh migrate`")
    installed = conn.execute(
        "SELECT value FROM progress_refresh_settings WHERE key = %s", [DEFINITIONS_DIGEST_SETTING]
    ).fetchone()
    if installed is None or installed[0] != definitions_digest():
        raise ProgressError(
            "the database's SQL functions and views are another release's: run `progress-refresh migrate`"
        )
    # A base table or column dropped since the migrate (a CASCADE takes the
    # product's views with it): named here, before a refresh fails on every version.
    if not base_tables_present(conn):
        raise ProgressError("the database has none of the base tables any more: " + ", ".join(REQUIRED_COLUMNS))


def _normalized(body: str) -> str:
    """A stored definition as this release writes it (release 0.1.0 wrote {name} for mv_name)."""
    return re.sub(r"\{([a-z_]+)\}", r"mv_\1", body).strip()


@dataclass
class Plan:
    """What a migrate will do; `lines()` is what --dry-run prints."""

    strategy: str
    strategy_switch: bool
    migrations: list[Migration]
    new_read_models: list[str]
    rebuilt_read_models: list[str]  # built beside and swapped in
    inspection: Inspection
    adopt: bool
    populated: bool
    removed_read_models: list[str] = field(default_factory=list)

    @property
    def shadows(self) -> list[str]:
        """Read models built beside and swapped in, upstreams first."""
        if self.adopt and self.inspection.needs_adoption:
            return [m.name for m in READ_MODELS]
        wanted = set(self.rebuilt_read_models)
        if self.populated and not self.strategy_switch:
            wanted |= set(self.new_read_models)
        return [m.name for m in READ_MODELS if m.name in wanted]

    def lines(self) -> list[str]:
        out = [
            f"storage strategy: {self.strategy}"
            + (" (switching: read models recreated empty)" if self.strategy_switch else "")
        ]
        out += [f"apply migration {m.label}" for m in self.migrations]
        out.append("re-apply definitions: " + ", ".join(d.name for d in load_definitions()))
        taking_over = self.adopt and self.inspection.needs_adoption
        out += [f"take over: {f.line()}" for f in self.inspection.findings if f.blocking and taking_over]
        out += [f"note: {f.line()}" for f in self.inspection.findings if not f.blocking]
        shadows = set(self.shadows)
        for name in self.new_read_models:
            if name not in shadows:
                out.append(f"create read model {name} (empty)")
        standing = set(self.inspection.replaced_relations) | set(self.rebuilt_read_models)
        out += [
            f"build {name} beside the current one and swap it in"
            if name in standing
            else f"build {name} and put it in place"
            for name in self.shadows
        ]
        out += [f"drop read model {name} (no longer defined)" for name in self.removed_read_models]
        return out


def _registry(conn: psycopg.Connection) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    exists = conn.execute("SELECT to_regclass('progress_read_model_definitions') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    has_lookup = conn.execute(
        "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'progress_read_model_definitions' AND column_name = 'lookup_columns')"
    ).fetchone()
    lookup = "lookup_columns" if has_lookup and has_lookup[0] else "'{}'::text[]"
    rows = conn.execute(f"SELECT stored_name, body, key_columns, {lookup} FROM progress_read_model_definitions")
    return {name: (_normalized(body), tuple(keys), tuple(look)) for name, body, keys, look in rows}


def _downstream_closure(names: set[str]) -> set[str]:
    closure = set(names)
    for model in READ_MODELS:  # upstreams first, so one pass suffices
        if closure & set(model.upstreams):
            closure.add(model.name)
    return closure


def _stored_strategy(conn: psycopg.Connection) -> str | None:
    exists = conn.execute("SELECT to_regclass('progress_refresh_settings') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT value FROM progress_refresh_settings WHERE key = 'storage_strategy'").fetchone()
    return str(row[0]) if row else None


def _populated(conn: psycopg.Connection, registered: set[str]) -> bool:
    if not registered:
        return False
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM progress_refresh_settings WHERE key = 'populated_at')"
        " OR EXISTS (SELECT FROM progress_refresh_settings WHERE key = 'storage_strategy' AND value = 'matview')"
        " AND coalesce((SELECT bool_and(relispopulated) FROM pg_class WHERE relname = ANY (%s)"
        "                AND relnamespace = current_schema()::regnamespace), false)",
        [sorted(registered)],
    ).fetchone()
    return bool(row and row[0])


def plan_migrate(conn: psycopg.Connection, strategy: str | None = None, adopt: bool = False) -> Plan:
    """Reads the database and says what migrate would do; changes nothing.
    ProgressError for what cannot be installed on (naming it)."""
    if strategy is not None and strategy not in STRATEGIES:
        raise ProgressError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    pending = _check_history(applied_versions(conn), load_migrations())
    base_tables_present(conn)  # names missing base tables or columns
    inspection = inspect(conn)
    if inspection.problems:
        raise ProgressError("cannot install here, nothing was changed: " + "; ".join(inspection.problems))
    registry = _registry(conn) if inspection.ours else {}
    stored = _stored_strategy(conn) if inspection.ours else None
    target = strategy or stored or "table"
    wanted = {m.name: (m.body.strip(), m.key_columns, m.lookup_columns) for m in READ_MODELS}
    changed = {name for name, definition in wanted.items() if name in registry and registry[name] != definition}
    return Plan(
        strategy=target,
        strategy_switch=stored is not None and target != stored,
        migrations=pending,
        new_read_models=[m.name for m in READ_MODELS if m.name not in registry],
        rebuilt_read_models=sorted(_downstream_closure(changed) & set(registry)),
        inspection=inspection,
        adopt=adopt,
        populated=_populated(conn, set(registry)),
        removed_read_models=sorted(set(registry) - set(wanted)),
    )


class ForeignObjectsError(ProgressError):
    """The previous design (or someone's objects) stands under our names: nothing was changed."""

    def __init__(self, plan: Plan) -> None:
        # What --adopt would change, then what it would leave alone (notes).
        self.lines = [f.line() for f in plan.inspection.findings if f.blocking]
        self.notes = [f.line() for f in plan.inspection.findings if not f.blocking]
        super().__init__(
            "the database holds objects of the previous design under this product's names; nothing was "
            "changed. Take it over with: progress-refresh migrate --adopt"
        )


def migrate(conn: psycopg.Connection, strategy: str | None = None, *, adopt: bool = False) -> list[str]:
    """Installs or upgrades the schema (taking over the previous design with adopt);
    returns what changed, empty when nothing did."""
    conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    try:
        plan = plan_migrate(conn, strategy, adopt)
        if plan.inspection.needs_adoption and not adopt:
            raise ForeignObjectsError(plan)
        return _apply(conn, plan)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])


def _session_setup(conn: psycopg.Connection, strategy: str) -> None:
    # SECURITY DEFINER functions capture this path (SET search_path FROM CURRENT):
    # the install schema first, temporary objects last so they cannot shadow ours.
    conn.execute("SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)")
    # Read by 003_product_tables on a first migrate only.
    conn.execute("SELECT set_config('progress.initial_strategy', %s, true)", [strategy])
    # Definitions may name read models created later in the same migrate (as pg_dump does).
    conn.execute("SET LOCAL check_function_bodies = off")


def _giving_way(conn: psycopg.Connection, what: str, transaction: Callable[[], T]) -> T:
    """Runs transaction (which opens its own) until it gets its locks: each
    lock is waited for only briefly, less than the server's deadlock_timeout,
    so a reader waiting for a lock the migrate holds is never the one a
    deadlock check cancels; the migrate rolls back and tries again instead."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            return transaction()
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if attempt == LOCK_ATTEMPTS:
                raise ProgressError(
                    f"could not {what}: other sessions held the tables it needs {LOCK_ATTEMPTS} times "
                    f"running{_lock_holders(conn)}; nothing was changed, run migrate again"
                ) from None
            time.sleep(min(2.0, 0.2 * attempt))
    raise AssertionError("unreachable")


def _lock_holders(conn: psycopg.Connection, shown: int = 3) -> str:
    """The sessions in a transaction that hold locks on this schema's tables and
    views, the longest first (who to wait for, or to end): ", e.g. pid 123 (app,
    idle in transaction for 45 s) on mv_x". Empty when it cannot tell."""
    try:
        rows = conn.execute(
            """
            SELECT a.pid, coalesce(nullif(a.application_name, ''), a.usename::text, 'unknown'),
                   coalesce(a.state, 'unknown'), extract(epoch FROM now() - a.xact_start)::bigint,
                   string_agg(DISTINCT c.relname::text, ', ')
              FROM pg_locks l
              JOIN pg_class c ON c.oid = l.relation AND c.relnamespace = current_schema()::regnamespace
                             AND c.relkind IN ('r', 'v', 'm', 'p')
              JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
             GROUP BY a.pid, a.application_name, a.usename, a.state, a.xact_start
             ORDER BY a.xact_start
             LIMIT %s
            """,
            [shown],
        ).fetchall()
    except psycopg.Error:
        return ""
    if not rows:
        return ""
    return ", e.g. " + "; ".join(
        f"pid {pid} ({app}, {state} for {seconds} s) on {relations}" for pid, app, state, seconds, relations in rows
    )


def _wait_briefly_for_locks(conn: psycopg.Connection) -> None:
    """This transaction's lock waits: half the deadlock_timeout, at most 200 ms."""
    conn.execute(
        "SELECT set_config('lock_timeout', greatest(1, least(200, floor(extract(epoch FROM"
        " current_setting('deadlock_timeout')::interval) * 500)))::int || 'ms', true)"
    )


def _apply(conn: psycopg.Connection, plan: Plan) -> list[str]:
    taking_over = plan.adopt and plan.inspection.needs_adoption
    shadows = plan.shadows
    definitions = load_definitions()
    _build_indexes_concurrently(conn, plan.migrations)
    changes, dropped_triggers = _giving_way(
        conn, "install", lambda: _install(conn, plan, taking_over, shadows, definitions)
    )
    if not shadows:
        return changes
    try:
        started = time.perf_counter()
        with conn.transaction():
            # One snapshot for every shadow; changes after it are queued by our triggers.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            _session_setup(conn, plan.strategy)
            conn.execute("SELECT progress_build_shadows(%s, %s)", [shadows, plan.strategy])
        built = time.perf_counter() - started
        _wait_for_older_snapshots(conn)
        swapped, swap_seconds = _swap_in(conn, plan, shadows, definitions)
    except BaseException:
        _undo_shadows(conn, shadows, dropped_triggers)
        raise
    for name, replaced, readers, not_kept in swapped:
        if replaced is None:
            changes.append(f"added {name}, populated")
            continue
        kept = f"; SELECT kept for {', '.join(readers)}" if readers else ""
        changes.append(f"{'took over' if taking_over else 'rebuilt'} {name} (was a {replaced}{kept})")
        if not_kept:
            changes.append(f"  not kept from the replaced {name}: {'; '.join(not_kept)}")
    changes.append(
        f"built {len(shadows)} read model(s) beside the old ones in {built:.1f}s; "
        f"swapped them in with one transaction of {swap_seconds * 1000:.0f} ms"
    )
    if taking_over:
        changes += _takeover_advice(plan.inspection)
    return changes


def _install(
    conn: psycopg.Connection, plan: Plan, taking_over: bool, shadows: list[str], definitions: list[SqlFile]
) -> tuple[list[str], list[str]]:
    """The install's one transaction; returns what changed and (taking over) the
    DDL re-creating the previous design's queue triggers it dropped."""
    changes: list[str] = []
    dropped_triggers: list[str] = []
    with conn.transaction():
        _session_setup(conn, plan.strategy)
        _wait_briefly_for_locks(conn)
        changes += _apply_migrations(conn, plan.migrations)
        for definition in definitions:
            if not (taking_over and definition.name.endswith(SQL_API_DEFINITIONS)):
                conn.execute(definition.sql)
        _write_registry(conn, plan.removed_read_models)
        changes += [f"dropped read model {name}" for name in plan.removed_read_models]
        if not taking_over:
            conn.execute("SELECT progress_install_definitions()")
        if plan.strategy_switch:
            conn.execute("SELECT progress_install_storage(%s)", [plan.strategy])
            changes.append(f"storage strategy {plan.strategy}")
        else:
            conn.execute("SELECT progress_install_storage(%s, %s)", [plan.strategy, shadows])
        changes += [f"created read model {name}" for name in plan.new_read_models if name not in shadows]
        conn.execute("SELECT progress_install_refresh_functions(%s)", [shadows])
        conn.execute("SELECT progress_apply_grants()")
        conn.execute(
            "INSERT INTO progress_refresh_settings (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [DEFINITIONS_DIGEST_SETTING, definitions_digest()],
        )
        if taking_over:
            # Theirs go in the transaction that installs ours (the definitions
            # above), last: a dropped trigger locks its table out to readers
            # until the commit.
            dropped_triggers = _drop_queue_triggers(conn, plan.inspection)
            conn.execute(
                "INSERT INTO progress_refresh_settings (key, value) VALUES (%s, now()::text)"
                " ON CONFLICT (key) DO NOTHING",
                [TAKEOVER_SETTING],
            )
            changes += [f"dropped queue trigger {t}" for t in _trigger_names(plan.inspection)]
    return changes, dropped_triggers


def _apply_migrations(conn: psycopg.Connection, pending: list[Migration]) -> list[str]:
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
    for version, name in RELEASE_0_1_MIXED_SCRIPTS.items():
        conn.execute("DELETE FROM progress_schema_migrations WHERE version = %s AND name = %s", [version, name])
    has_base_tables = base_tables_present(conn)
    applied = []
    for migration in pending:
        if not (migration.version == BASE_TABLES_MIGRATION and has_base_tables):
            conn.execute(migration.sql)  # the database's own base tables stay as they are
        conn.execute(
            "INSERT INTO progress_schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
            [migration.version, migration.name, migration.checksum],
        )
        applied.append(migration.label)
    return applied


def _build_indexes_concurrently(conn: psycopg.Connection, pending: list[Migration]) -> None:
    """Indexes a pending migration adds to existing base tables are built first,
    CONCURRENTLY: writers never wait for them (the migration then finds them).
    One that fails is dropped, and the migration builds it in its transaction."""
    if not base_tables_present(conn):
        return
    for migration in pending:
        for name, rest in _CREATE_INDEX.findall(migration.sql):
            try:
                conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {rest}")
            except psycopg.Error:
                conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def _trigger_names(inspection: Inspection) -> list[str]:
    return [f"{trigger} on {table} ({function})" for table, trigger, function in inspection.queue_triggers]


def _drop_queue_triggers(conn: psycopg.Connection, inspection: Inspection) -> list[str]:
    """Drops the previous design's queue triggers (ours, installed by the definitions in the
    same transaction, capture from now on); returns the DDL that re-creates them."""
    restore = []
    for table, trigger, _ in inspection.queue_triggers:
        row = conn.execute(
            "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgname = %s AND t.tgrelid = %s::regclass",
            [trigger, table],
        ).fetchone()
        if row:
            restore.append(row[0])
        conn.execute(
            psycopg.sql.SQL("DROP TRIGGER {} ON {}").format(
                psycopg.sql.Identifier(trigger), psycopg.sql.Identifier(table)
            )
        )
    return restore


def _write_registry(conn: psycopg.Connection, removed: list[str]) -> None:
    """The registry the generated SQL is made from, written from sql/read_models/."""
    for name in removed:
        conn.execute("SELECT progress_drop_read_model(%s)", [name])
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO progress_read_model_definitions
                   (logical_view, stored_name, kind, install_order, scope_column, key_columns, lookup_columns,
                    upstreams, body, counts_sql, rows_sql)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (logical_view) DO UPDATE
               SET stored_name = EXCLUDED.stored_name, kind = EXCLUDED.kind,
                   install_order = EXCLUDED.install_order, scope_column = EXCLUDED.scope_column,
                   key_columns = EXCLUDED.key_columns, lookup_columns = EXCLUDED.lookup_columns,
                   upstreams = EXCLUDED.upstreams, body = EXCLUDED.body,
                   counts_sql = EXCLUDED.counts_sql, rows_sql = EXCLUDED.rows_sql
            """,
            [_registry_row(order, model) for order, model in enumerate(READ_MODELS, start=1)],
        )


def _registry_row(order: int, model: ReadModel) -> tuple:
    return (
        model.logical_view,
        model.name,
        model.kind,
        order,
        model.scope_column,
        list(model.key_columns),
        list(model.lookup_columns),
        list(model.upstreams),
        model.body.strip(),
        model.counts_sql,
        model.rows_sql,
    )


def _wait_for_older_snapshots(conn: psycopg.Connection) -> None:
    """Waits for the transactions whose snapshot is older than the shadows' rows
    (a REPEATABLE READ reader, a long statement) to end: swapped in under them,
    a new read model would look empty to them, its rows written after their
    snapshot. Gives up after SNAPSHOT_WAIT_SECONDS, naming them (the caller
    undoes the shadows: the read models stay as they were)."""
    built_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + SNAPSHOT_WAIT_SECONDS
    while True:
        older = conn.execute(
            """
            SELECT pid, coalesce(nullif(usename, ''), '?'), xact_start
              FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND backend_type = 'client backend' AND backend_xmin IS NOT NULL AND xact_start < %s
             ORDER BY xact_start
            """,
            [built_at],
        ).fetchall()
        if not older:
            return
        if time.monotonic() >= deadline:
            shown = ", ".join(f"pid {pid} ({user}, since {start:%H:%M:%S})" for pid, user, start in older[:3])
            raise ProgressError(
                f"{len(older)} transaction(s) older than the new read models stayed open for "
                f"{SNAPSHOT_WAIT_SECONDS:.0f}s ({shown}): swapped in under them the read models would look "
                "empty to them; the read models were left as they were: run migrate again once they end"
            )
        time.sleep(0.05)


def _swap_in(
    conn: psycopg.Connection, plan: Plan, shadows: list[str], definitions: list[SqlFile]
) -> tuple[list[tuple[str, str | None, list[str], list[str]]], float]:
    """One short transaction: shadows in, (taking over) the SQL API and logical views
    replaced. Readers wait at most for it; it gives way to them (_giving_way)."""
    taking_over = plan.adopt and plan.inspection.needs_adoption

    def swap() -> tuple[list[tuple], float]:
        with conn.transaction():
            _session_setup(conn, plan.strategy)
            _wait_briefly_for_locks(conn)
            started = time.perf_counter()
            if taking_over:
                _lock_replaced_relations(conn)
                for signature in plan.inspection.foreign_api:
                    conn.execute(f"DROP FUNCTION IF EXISTS {signature}")
            swapped = conn.execute("SELECT * FROM progress_swap_in_shadows(%s)", [shadows]).fetchall()
            if taking_over:
                for definition in definitions:
                    if definition.name.endswith(SQL_API_DEFINITIONS):
                        conn.execute(definition.sql)
                conn.execute("SELECT progress_mark_populated()")
                conn.execute("DELETE FROM progress_refresh_settings WHERE key = %s", [TAKEOVER_SETTING])
            conn.execute("SELECT progress_install_definitions()")
            conn.execute("SELECT progress_install_refresh_functions()")
            conn.execute("SELECT progress_apply_grants()")
            if taking_over:
                for role in plan.inspection.kept_enqueue_callers:
                    conn.execute(
                        psycopg.sql.SQL("GRANT EXECUTE ON FUNCTION {}(text, uuid) TO {}").format(
                            psycopg.sql.Identifier(ENQUEUE_FUNCTION), psycopg.sql.Identifier(role)
                        )
                    )
        return swapped, time.perf_counter() - started

    swapped, swap_seconds = _giving_way(conn, "swap the new read models in", swap)
    with conn.transaction():
        conn.execute("SELECT progress_drop_copies(%s, true)", [shadows])
    return [
        (name, replaced, list(readers or []), list(not_kept or [])) for name, replaced, readers, not_kept in swapped
    ], swap_seconds


def _lock_replaced_relations(conn: psycopg.Connection) -> None:
    """Locks the relations standing under our names (the previous design's read
    models and logical views, replaced in this transaction) in the order a
    reader locks them (progress_replaced_relations_in_lock_order). Replaced in
    the order of the work, inner views first, they would be locked the other
    way round, and a reader holding an outer view while it waits for an inner
    one would hold the swap up every time. Each is locked alone (an ALTER ...
    OWNER to its own owner changes nothing): LOCK TABLE would lock what a view
    reads too, base tables among them, and hold up readers of the views not
    locked yet."""
    rows = conn.execute("SELECT relation::text, kind, owner FROM progress_replaced_relations_in_lock_order()")
    for relation, kind, owner in rows.fetchall():
        conn.execute(psycopg.sql.SQL(f"ALTER {kind} {relation} OWNER TO {{}}").format(psycopg.sql.Identifier(owner)))


def _undo_shadows(conn: psycopg.Connection, shadows: list[str], restore_triggers: list[str]) -> None:
    """After a failed build or swap: the shadows go, the previous design's queue triggers come back."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return  # the connection is gone or broken: a later migrate cleans up
    with conn.transaction():
        conn.execute("SELECT progress_drop_copies(%s, false)", [shadows])
        if restore_triggers:
            conn.execute("SELECT progress_remove_capture()")
            for ddl in restore_triggers:
                conn.execute(ddl)


def _takeover_advice(inspection: Inspection) -> list[str]:
    lines = [f"kept {inspection.pending_entries} pending queue entries (drain them now: progress-refresh refresh)"]
    kept = inspection.kept_enqueue_callers
    if kept:
        lines.append(f"kept EXECUTE on {ENQUEUE_FUNCTION}() for {', '.join(kept)} (queueing refreshes nothing)")
    callers = sorted(
        {
            role
            for function, roles in inspection.api_callers.items()
            for role in roles
            if not (function == ENQUEUE_FUNCTION and role in kept)
        }
    )
    if callers:
        lines.append(
            f"roles that could run the old SQL API no longer can: {', '.join(callers)}. Grant "
            "progress_refresher to the role that drains (pg_cron's, or the Edge Function's key role), e.g. "
            "GRANT progress_refresher TO service_role"
        )
    lines.append(
        "readers keep their SELECT grants; drain_progress_refresh_queue() and "
        "refresh_progress_materialized_views_*() keep their names for pg_cron and Edge Functions"
    )
    return lines
