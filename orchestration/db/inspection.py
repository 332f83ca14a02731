"""What a database holds before `migrate` changes it: objects of the previous
design (or anyone's) standing under this product's names.

The previous design kept the read models as materialized views and views,
a queue table of its own filled by row triggers, and SQL functions under the
names of our SQL API. `migrate` refuses to touch such a database and names
what it found; `migrate --adopt` takes it over (orchestration/db/migrations.py).
Queue triggers are recognised by what their function does (it writes
progress_refresh_queue or calls enqueue_progress_refresh), never by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from orchestration.read_models import BASE_TABLES, READ_MODELS

API_FUNCTIONS = (
    "enqueue_progress_refresh",
    "drain_progress_refresh_queue",
    "refresh_progress_version",
    "refresh_progress_materialized_views_full",
    "refresh_progress_materialized_views_concurrently",
    "refresh_progress_materialized_views_safe",
    "requeue_progress_dead_letters",
)
# Our own statement triggers on the base tables (sql/definitions/04_change_capture.sql).
OWN_TRIGGERS = (
    "progress_capture_insert",
    "progress_capture_update",
    "progress_capture_delete",
    "progress_capture_truncate",
)
QUEUE_TABLE = "progress_refresh_queue"
QUEUE_COLUMNS_REQUIRED = ("kind", "version_id")
REGISTRY_TABLE = "progress_read_model_definitions"
# Set by a take-over's first transaction, removed by its swap.
TAKEOVER_SETTING = "takeover_started_at"
RELKIND_NAMES = {
    "r": "table",
    "v": "view",
    "m": "materialized view",
    "p": "table",
    "f": "foreign table",
    "S": "sequence",
    "i": "index",
}


@dataclass(frozen=True)
class Finding:
    """One object in the way: what it is, where, and what --adopt does with it."""

    what: str
    name: str
    action: str
    blocking: bool = True  # False: reported and left alone

    def line(self) -> str:
        return f"{self.what} {self.name}: {self.action}"


@dataclass
class Inspection:
    ours: bool  # the product's registry is installed: a database migrated by a release of ours
    findings: list[Finding] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # cannot be adopted: bad input
    queue_triggers: list[tuple[str, str, str]] = field(default_factory=list)  # (table, trigger, function)
    foreign_api: list[str] = field(default_factory=list)  # regprocedure texts
    replaced_relations: list[str] = field(default_factory=list)
    pending_entries: int = 0
    api_callers: dict[str, list[str]] = field(default_factory=dict)  # function -> roles that could execute it
    # Roles granted EXECUTE on the previous design's enqueue_progress_refresh by
    # name: a take-over keeps it for them (queueing refreshes nothing; apps' own
    # triggers may call it as they write). PUBLIC, the Supabase API roles and
    # roles those are members of are not kept.
    kept_enqueue_callers: list[str] = field(default_factory=list)

    @property
    def needs_adoption(self) -> bool:
        return any(f.blocking for f in self.findings)


def _relkinds(conn: psycopg.Connection, names: list[str]) -> dict[str, str]:
    rows = conn.execute(
        "SELECT c.relname, c.relkind::text FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%s)",
        [names],
    ).fetchall()
    return dict(rows)


def _columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
        [table],
    ).fetchall()
    return {row[0] for row in rows}


def _registered(conn: psycopg.Connection, kinds: dict[str, str]) -> set[str]:
    """Read models of ours; none while a take-over has not completed (the old ones still stand)."""
    if kinds.get(REGISTRY_TABLE) != "r":
        return set()
    unfinished = conn.execute(
        "SELECT EXISTS (SELECT FROM progress_refresh_settings WHERE key = %s)", [TAKEOVER_SETTING]
    ).fetchone()
    if unfinished and unfinished[0]:
        return set()
    return {row[0] for row in conn.execute(f"SELECT stored_name FROM {REGISTRY_TABLE}")}


def _outside_dependents(conn: psycopg.Connection, names: list[str], replaced_functions: list[str]) -> list[str]:
    """Objects of someone else's that replacing these relations would take with
    them: views and materialized views on them, functions reading them (BEGIN
    ATOMIC) or taking or returning their rows (a PostgREST computed column, an
    RPC returning SETOF a read model), row-level security policies reading them
    (dropping one would show rows it hides), triggers on them and columns of
    their row types."""
    rows = conn.execute(
        """
        WITH replaced AS (
            SELECT c.oid, c.relname, c.reltype, t.typarray
              FROM pg_class c JOIN pg_type t ON t.oid = c.reltype
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY (%(names)s))
        SELECT DISTINCT dependent.relname || ' (reads ' || referenced.relname || ')'
          FROM pg_depend d
          JOIN pg_rewrite r ON r.oid = d.objid
          JOIN pg_class dependent ON dependent.oid = r.ev_class
          JOIN replaced referenced ON referenced.oid = d.refobjid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND dependent.oid <> referenced.oid
           AND NOT dependent.relname = ANY (%(names)s)
        UNION
        SELECT DISTINCT p.oid::regprocedure::text
               || CASE WHEN d.refclassid = 'pg_class'::regclass THEN ' (reads ' ELSE ' (takes or returns rows of ' END
               || referenced.relname || ')'
          FROM pg_depend d
          JOIN pg_proc p ON p.oid = d.objid
          JOIN replaced referenced
            ON d.refclassid = 'pg_class'::regclass AND d.refobjid = referenced.oid
            OR d.refclassid = 'pg_type'::regclass AND d.refobjid IN (referenced.reltype, referenced.typarray)
         WHERE d.classid = 'pg_proc'::regclass
           AND NOT p.oid::regprocedure::text = ANY (%(functions)s)
           AND NOT starts_with(p.proname, 'progress_')
        UNION
        SELECT DISTINCT 'policy ' || pol.polname || ' on ' || pol.polrelid::regclass::text
               || ' (reads ' || referenced.relname || ')'
          FROM pg_depend d
          JOIN pg_policy pol ON pol.oid = d.objid
          JOIN replaced referenced ON referenced.oid = d.refobjid
         WHERE d.classid = 'pg_policy'::regclass AND d.refclassid = 'pg_class'::regclass
        UNION
        SELECT DISTINCT 'trigger ' || t.tgname || ' on ' || referenced.relname
          FROM pg_trigger t
          JOIN replaced referenced ON referenced.oid = t.tgrelid
         WHERE NOT t.tgisinternal
        UNION
        SELECT DISTINCT a.attrelid::regclass::text || '.' || a.attname || ' (a row of ' || referenced.relname || ')'
          FROM pg_attribute a
          JOIN replaced referenced ON a.atttypid IN (referenced.reltype, referenced.typarray)
         WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attrelid NOT IN (SELECT oid FROM replaced)
        """,
        {"names": names, "functions": replaced_functions},
    ).fetchall()
    return sorted(row[0] for row in rows)


def _cron_jobs(conn: psycopg.Connection) -> list[Finding]:
    """pg_cron jobs that call our API's names: they keep working, with the right grant."""
    exists = conn.execute("SELECT to_regclass('cron.job') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        "SELECT jobid, schedule, command, username FROM cron.job WHERE command ~ %s ORDER BY jobid",
        ["|".join(API_FUNCTIONS)],
    ).fetchall()
    return [
        Finding(
            "pg_cron job",
            f"{jobid} ({schedule}, as {user}): {' '.join(command.split())}",
            f"keeps working if {user} is granted progress_refresher",
            blocking=False,
        )
        for jobid, schedule, command, user in rows
    ]


def inspect(conn: psycopg.Connection) -> Inspection:
    """Reads what stands under the product's names; changes nothing."""
    stored = [m.name for m in READ_MODELS]
    logical = [m.logical_view for m in READ_MODELS]
    kinds = _relkinds(conn, [*stored, *logical, QUEUE_TABLE, REGISTRY_TABLE])
    registered = _registered(conn, kinds)
    result = Inspection(ours=bool(registered))

    for name in stored:
        kind = kinds.get(name)
        if kind is None or name in registered:
            continue
        label = RELKIND_NAMES.get(kind, kind)
        if kind in ("m", "v"):
            result.findings.append(Finding(f"read model as a {label}", name, "replaced by ours (grants kept)"))
            result.replaced_relations.append(name)
        else:
            result.problems.append(f"{name} is a {label} that is not one of ours")
    if not result.ours:
        for name in logical:
            kind = kinds.get(name)
            if kind == "v":
                result.findings.append(Finding("logical view", name, "replaced by ours"))
                result.replaced_relations.append(name)
            elif kind is not None:
                result.problems.append(f"{name} is a {RELKIND_NAMES.get(kind, kind)}, expected a view")

    if QUEUE_TABLE in kinds:
        columns = _columns(conn, QUEUE_TABLE)
        lacking = [c for c in QUEUE_COLUMNS_REQUIRED if c not in columns]
        if lacking:
            result.problems.append(f"{QUEUE_TABLE} has no column {', '.join(lacking)}")
        elif "generation" not in columns:
            result.pending_entries = int(conn.execute(f"SELECT count(*) FROM {QUEUE_TABLE}").fetchone()[0])  # type: ignore[index]
            result.findings.append(
                Finding(
                    "queue table",
                    QUEUE_TABLE,
                    f"kept and altered in place ({result.pending_entries} pending entries kept)",
                )
            )

    _inspect_functions(conn, result)
    _inspect_triggers(conn, result)

    # Partial: the previous design was rolled out in steps (materialized views
    # for the heaviest read models first) and some were given up, so a
    # database may hold some of its read models and logical views, not all:
    # the take-over creates and populates the others.
    if not result.ours and result.replaced_relations:
        previous_views = [m.logical_view for m in READ_MODELS if m.name.startswith("mv_")]
        for name in [*stored, *previous_views]:
            if kinds.get(name) is None:
                result.findings.append(Finding("not here", name, "created (and populated) by ours", blocking=False))
    result.findings += _cron_jobs(conn)
    dependents = _outside_dependents(conn, result.replaced_relations, result.foreign_api)
    if dependents:
        result.problems.append(
            "objects of someone else's depend on what would be replaced and would go with it"
            " (drop them first, and make them again on the new read models after): " + ", ".join(dependents)
        )
    return result


def _inspect_functions(conn: psycopg.Connection, result: Inspection) -> None:
    rows = conn.execute(
        """
        SELECT p.proname, p.oid::regprocedure::text,
               ARRAY(SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
                       FROM aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                      WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner ORDER BY 1)
          FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace AND p.proname = ANY (%s)
        """,
        [list(API_FUNCTIONS)],
    ).fetchall()
    for name, signature, callers in rows:
        if result.ours:
            continue
        result.foreign_api.append(signature)
        result.api_callers[name] = list(callers)
        result.findings.append(Finding("SQL API function", signature, "replaced by ours (same name)"))
    if result.api_callers.get(ENQUEUE_FUNCTION):
        # Neither the Supabase API roles nor a role they are members of (a group).
        kept = conn.execute(
            """
            SELECT r.rolname::text FROM pg_roles r
             WHERE r.rolname = ANY (%s)
               AND NOT EXISTS (SELECT FROM pg_roles api WHERE api.rolname = ANY (%s)
                                  AND pg_has_role(api.oid, r.oid, 'MEMBER'))
             ORDER BY 1
            """,
            [result.api_callers[ENQUEUE_FUNCTION], list(PUBLIC_ROLES)],
        ).fetchall()
        result.kept_enqueue_callers = [role for (role,) in kept]


# Roles the product takes every grant from (08_security.sql): a Supabase API role
# keeps no EXECUTE on the SQL API, whatever the previous design gave it.
PUBLIC_ROLES = ("PUBLIC", "anon", "authenticated")
ENQUEUE_FUNCTION = "enqueue_progress_refresh"


def _inspect_triggers(conn: psycopg.Connection, result: Inspection) -> None:
    """A base table's trigger writes the queue when its function does, or calls a
    function that does (through any number of others, in any schema): dropped.
    Another table's trigger that queues through enqueue_progress_refresh()
    (directly or through such functions) stays, and keeps working for the roles
    kept on it (Inspection.kept_enqueue_callers)."""
    rows = conn.execute(
        """
        WITH RECURSIVE candidates AS (
            SELECT p.proname, p.prosrc
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT starts_with(n.nspname, 'pg_')
               AND p.prolang NOT IN (12, 13)  -- internal and C functions: no body to read
               AND NOT starts_with(p.proname, 'progress_')),
        writers (proname, enqueues) AS (
            SELECT c.proname, c.prosrc ~* '\\menqueue_progress_refresh\\s*\\('
              FROM candidates c
             WHERE c.prosrc ~* '(progress_refresh_queue|enqueue_progress_refresh)'
            UNION
            SELECT c.proname, w.enqueues
              FROM candidates c JOIN writers w ON c.prosrc ~* ('\\m' || w.proname || '\\s*\\('))
        SELECT c.relname, t.tgname, p.oid::regprocedure::text, c.relname = ANY (%s),
               p.prosrc ~* '(progress_refresh_queue|enqueue_progress_refresh)'
               OR EXISTS (SELECT FROM writers w WHERE p.prosrc ~* ('\\m' || w.proname || '\\s*\\(')),
               p.prosrc ~* '\\menqueue_progress_refresh\\s*\\('
               OR EXISTS (SELECT FROM writers w WHERE w.enqueues AND p.prosrc ~* ('\\m' || w.proname || '\\s*\\('))
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace
           AND c.relname <> 'progress_refresh_queue'
         ORDER BY 1, 2
        """,
        [list(BASE_TABLES)],
    ).fetchall()
    for table, trigger, function, base_table, writes_queue, enqueues in rows:
        if not base_table:
            if enqueues and not result.ours:
                result.findings.append(_apps_enqueue_trigger(result, table, trigger))
        elif trigger in OWN_TRIGGERS and function.startswith("progress_capture_"):
            continue
        elif writes_queue:
            result.queue_triggers.append((table, trigger, function))
            result.findings.append(
                Finding("queue trigger", f"{trigger} on {table} ({function})", "dropped; ours capture its changes")
            )
        else:
            result.findings.append(Finding("other trigger", f"{trigger} on {table}", "left alone", blocking=False))


def _apps_enqueue_trigger(result: Inspection, table: str, trigger: str) -> Finding:
    kept = result.kept_enqueue_callers
    action = (
        f"left alone; it queues through {ENQUEUE_FUNCTION}(), which "
        + (f"{', '.join(kept)} may still call" if kept else "only progress_refresher members may call")
        + f": grant EXECUTE on it to the roles that write {table}"
    )
    return Finding("trigger calling the SQL API", f"{trigger} on {table}", action, blocking=False)
