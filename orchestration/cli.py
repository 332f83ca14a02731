"""The `progress-refresh` command.

Exit codes: 0 success; 1 the work ran but something failed (versions that
failed to refresh); 2 bad input or an unusable database (one line on stderr);
3 the connection was lost during a refresh (the rest is still queued);
130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import click
import psycopg
from psycopg.rows import dict_row
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestration import settings
from orchestration.db import gateway
from orchestration.db.connection import connection
from orchestration.db.dsn import mask_dsn, scrub
from orchestration.db.embedded import database_url, stop_embedded
from orchestration.db.migrations import STRATEGIES, ForeignObjectsError, check_schema_current, migrate, plan_migrate
from orchestration.errors import ConnectionLost, ProgressError
from orchestration.read_models import KINDS
from orchestration.refresh import RefreshReport, drain_queue, refresh_all, refresh_versions

console = Console()


@contextmanager
def _database(dsn: str | None = None, check_schema: bool = True) -> Iterator[psycopg.Connection]:
    with connection(dsn or database_url()) as conn:
        if check_schema:
            check_schema_current(conn)
        yield conn


@contextmanager
def _progress_bar(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """Yields update(done, total); draws a bar on a terminal, nothing otherwise."""
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def _json_value(value: Any) -> Any:
    """Timestamps in ISO 8601 (with the T), anything else JSON lacks as its text."""
    return value.isoformat() if isinstance(value, datetime | date) else str(value)


def _emit(data: Any, as_json: bool, render: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_json_value))
    else:
        render()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Keep Bible progress coverage read models fresh, per changed version.

    The database is PROGRESS_DATABASE_URL; unset, an embedded PostgreSQL is
    started with its data under .progress/ in the project folder.

    \b
    Examples:
      progress-refresh migrate
      progress-refresh seed-demo
      progress-refresh refresh --queued
      progress-refresh status --json
    """


@cli.command("migrate")
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=None,
    help="Read-model storage: per-version tables (default) or materialized views.",
)
@click.option("--adopt", is_flag=True, help="Take over a database that runs the previous design.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def migrate_command(strategy: str | None, adopt: bool, dry_run: bool) -> None:
    """Install or upgrade the schema (idempotent).

    Looks first: where the previous design's objects stand under this
    product's names, nothing changes until you run it with --adopt, which
    builds the new read models beside the old ones and swaps them in while
    readers and writers go on.

    \b
    Examples:
      progress-refresh migrate --dry-run
      progress-refresh migrate
      progress-refresh migrate --adopt
    """
    with _database(check_schema=False) as conn:
        try:
            if dry_run:
                plan = plan_migrate(conn, strategy, adopt)
                if plan.inspection.needs_adoption and not adopt:
                    raise ForeignObjectsError(plan)  # the plan would be a refusal: said as migrate says it
                for line in plan.lines():
                    click.echo(line)
                return
            changes = migrate(conn, strategy=strategy, adopt=adopt)
        except ForeignObjectsError as exc:
            for line in exc.lines:
                click.echo(f"found: {line}", err=True)
            for line in exc.notes:
                click.echo(f"note: {line}", err=True)
            raise
    for line in changes:
        click.echo(line)
    if not changes:
        click.echo("schema is up to date")


def _version_count_option(kind: str) -> Callable:
    return click.option(
        f"--{kind}",
        f"{kind}_versions",
        default=12,
        show_default=True,
        type=click.IntRange(min=0),
        help=f"{kind.capitalize()} versions to create.",
    )


@cli.command("seed-demo")
@_version_count_option("audio")
@_version_count_option("text")
@click.option("--seed", default=7, show_default=True, help="Random seed (the demo is deterministic).")
def seed_demo_command(audio_versions: int, text_versions: int, seed: int) -> None:
    """Load KJV structure and generated demo versions (idempotent).

    \b
    Example:
      progress-refresh seed-demo --audio 20 --text 20
    """
    from orchestration.demo_data import demo_present, seed_demo

    with _database() as conn, _progress_bar("seeding demo", True) as update:
        loaded_before = demo_present(conn)
        counts = seed_demo(conn, audio_versions=audio_versions, text_versions=text_versions, seed=seed, progress=update)
    click.echo(f"demo data: {counts}")
    if loaded_before and (counts.audio_versions, counts.text_versions) != (audio_versions, text_versions):
        click.echo("note: the demo was loaded before and is kept as it is (--audio and --text size a first load)")


def _render_report(report: RefreshReport) -> None:
    table = Table(title=f"refreshed {len(report.refreshed)} version(s) in {report.seconds:.2f}s")
    for column in ("read model", "inserted", "updated", "deleted"):
        table.add_column(column, justify="left" if column == "read model" else "right")
    for name, c in sorted(report.totals().items()):
        table.add_row(name, str(c.inserted), str(c.updated), str(c.deleted))
    console.print(table)
    for failed in report.failed:
        console.print(f"[red]failed[/red] {failed.kind}:{failed.version_id}: {failed.error}")


def _render_versions(named: list[dict[str, Any]]) -> None:
    for version in named:
        label = f"{version['kind']}:{version['version_id']}" + (f" ({version['name']})" if version["name"] else "")
        if version["deleted"]:
            console.print(f"refreshed {label}: deleted, its rows were removed", soft_wrap=True)
        else:
            console.print(f"refreshed {label}", soft_wrap=True)


def _refuse_combinations(queued: bool, all_versions: bool, versions: tuple[str, ...], rebuild: str | None) -> None:
    """One way to choose what to refresh: a combination would silently do only part of it."""
    chosen = [
        name
        for name, given in (
            ("--queued", queued),
            ("--all", all_versions),
            ("--version", bool(versions)),
            ("--rebuild", rebuild is not None),
        )
        if given
    ]
    if len(chosen) > 1:
        raise click.UsageError(f"{' and '.join(chosen)} cannot be combined: choose one")


@cli.command("refresh")
@click.option("--queued", is_flag=True, help="Drain the queue (the default).")
@click.option("--all", "all_versions", is_flag=True, help="Queue and refresh every version (resumable).")
@click.option(
    "--version",
    "versions",
    multiple=True,
    metavar="KIND:UUID",
    help="Refresh these versions now (repeatable), e.g. audio:0b6e…",
)
@click.option(
    "--rebuild",
    type=click.Choice(["full", "concurrently", "safe"]),
    default=None,
    help="Rebuild everything with the SQL API instead of per version.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def refresh_command(
    queued: bool, all_versions: bool, versions: tuple[str, ...], rebuild: str | None, as_json: bool
) -> None:
    """Refresh read models: queued versions, named versions, or all (one of them).

    \b
    Examples:
      progress-refresh refresh                       # drain the queue
      progress-refresh refresh --version audio:UUID  # one version now
      progress-refresh refresh --all                 # every version, in batches
      progress-refresh refresh --rebuild safe        # set-based rebuild (SQL API)
    """
    _refuse_combinations(queued, all_versions, versions, rebuild)
    parsed = [gateway.parse_version(v) for v in versions]
    named: list[dict[str, Any]] = []
    with _database() as conn:
        if rebuild:
            # One SQL call with no progress to report: a spinner shows it is working.
            if as_json or not console.is_terminal:
                gateway.rebuild_all(conn, rebuild)
            else:
                with console.status(f"rebuilding every read model ({rebuild})…"):
                    gateway.rebuild_all(conn, rebuild)
            _emit({"rebuild": rebuild, "ok": True}, as_json, lambda: click.echo(f"rebuilt ({rebuild})"))
            return
        states = gateway.version_states(conn, parsed) if parsed else {}
        with _progress_bar("refreshing", not as_json) as update:
            done = [0]

            def tick(_: Any) -> None:
                done[0] += 1
                update(done[0], max(done[0], len(parsed)))

            if parsed:
                report = refresh_versions(conn, parsed, on_version=tick)
            elif all_versions:
                report = refresh_all(conn, on_version=tick)
            else:
                report = drain_queue(conn, on_version=tick)
    for outcome in report.refreshed if parsed else []:
        state = states.get((outcome.kind, outcome.version_id))
        named.append(
            {
                "kind": outcome.kind,
                "version_id": str(outcome.version_id),
                "name": state.name if state else None,
                "deleted": state is None or state.deleted,
            }
        )

    def render() -> None:
        _render_report(report)
        _render_versions(named)

    _emit({**report.as_dict(), **({"versions": named} if parsed else {})}, as_json, render)
    if report.failed:
        sys.exit(1)


# The window `status` reports refresh lag over (the refresh log keeps days).
STATUS_LAG_WINDOW_SECONDS = 3600


def _status(conn: psycopg.Connection, dsn: str) -> dict[str, Any]:
    queue = gateway.queue_state(conn)
    return {
        "database": mask_dsn(dsn),
        "last_refresh": gateway.last_refresh(conn),
        # How far the read models are behind: the age of the oldest change not yet refreshed.
        "lag_seconds": round(float(queue.get("oldest_age_seconds") or 0.0), 1),
        "populated_at": gateway.last_populated(conn),
        "queue": queue,
        "claims": gateway.claims(conn),
        "retrying": gateway.retrying(conn),
        "lag_last_hour": {
            kind: dataclasses.asdict(gateway.refresh_lag(conn, kind, within_seconds=STATUS_LAG_WINDOW_SECONDS))
            for kind in KINDS
        },
        "dead_letters": gateway.dead_letters(conn),
        "read_models": gateway.read_model_sizes(conn),
    }


def _claim_lines(claims: list[dict[str, Any]]) -> list[str]:
    """One line per holder: how many entries it claims, whether its session is
    alive, and when they will be taken over."""
    holders: dict[tuple, list[dict[str, Any]]] = {}
    for claim in claims:
        holders.setdefault((claim["claimed_by"], claim["holder_pid"], claim["holder_alive"]), []).append(claim)
    lines = []
    for (claimed_by, pid, alive), held in holders.items():
        lease_end = f"{max(c['lease_until'] for c in held):%Y-%m-%d %H:%M:%S %Z}"
        if alive is False:
            state, when = "gone", "ready again, taken over at the next claim"
        elif alive:
            state, when = "alive", f"kept while it works, at most until its lease ends at {lease_end}"
        else:
            state, when = "not checked", f"taken over when its lease ends at {lease_end}"
        lines.append(f"  claimed: {len(held)} by {claimed_by} (session pid {pid}, {state}): {when}")
    return lines


def _when(moment: datetime | None, never: str) -> str:
    if moment is None:
        return never
    ago = (datetime.now(UTC) - moment).total_seconds()
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({_duration(ago)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}"
        size = size / 1024  # type: ignore[assignment]
    return f"{size} B"  # pragma: no cover


def _render_status(status: dict[str, Any]) -> None:
    q = status["queue"]
    lag = status["lag_seconds"]
    facts = Table.grid(padding=(0, 2))
    facts.add_column(no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("database", status["database"])
    facts.add_row("last refresh", _when(status["last_refresh"], "none recorded"))
    facts.add_row("lag", f"{_duration(lag)} (oldest queued change)" if q["depth"] else "0s: nothing queued")
    facts.add_row("queue", f"{q['depth']} queued: {q['ready']} ready, {q['claimed']} claimed, {q['retrying']} retrying")
    facts.add_row("dead letters", str(q["dead_letters"]))
    facts.add_row("populated", _when(status["populated_at"], "not yet: run `progress-refresh refresh --rebuild safe`"))
    console.print(facts)
    for kind, kind_lag in status["lag_last_hour"].items():
        _print_wrapped(_lag_line(kind, kind_lag), indent=2)
    for line in _claim_lines(status["claims"]):
        _print_wrapped(line, indent=4)
    if status["retrying"]:
        console.print("retrying (failed, waiting out their backoff):")
        for r in status["retrying"]:
            next_try = r["next_try_at"]
            due = next_try is None or next_try <= datetime.now(UTC)
            when = "now" if due else f"{next_try.astimezone(UTC):%H:%M:%S} UTC"
            _print_failure(f"{r['kind']}:{r['version_id']}, {_tries(r['attempts'])}, next try {when}", r["last_error"])
    if status["dead_letters"]:
        console.print("dead letters (queued again by a later change or `requeue-dead-letters`):")
        for d in status["dead_letters"]:
            _print_failure(f"{d['kind']}:{d['version_id']}, {_tries(d['attempts'])}", d["last_error"])
    table = Table()
    table.add_column("read model", no_wrap=True)
    table.add_column("rows", justify="right", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    for name, size in status["read_models"].items():
        table.add_row(name, f"{size['rows']:,}", _size(size["bytes"]))
    console.print(table)


def _print_wrapped(text: str, indent: int) -> None:
    """A line wrapped at the console's width between words, its continuation indented."""
    console.print(
        textwrap.fill(
            text,
            width=console.width,
            subsequent_indent=" " * indent,
            break_long_words=False,
            break_on_hyphens=False,
        ),
        highlight=False,
        soft_wrap=True,
    )


def _print_failure(version: str, error: str | None) -> None:
    """A failed version on a line of its own, its last error wrapped below it."""
    console.print(f"  {version}", highlight=False, soft_wrap=True)
    if error:
        _print_wrapped(f"    last error: {error}", indent=6)


def _tries(attempts: int) -> str:
    return f"{attempts} {'try' if attempts == 1 else 'tries'}"


def _lag_line(kind: str, lag: dict[str, Any]) -> str:
    """The figures each materialization records, over the last hour, as one line."""
    if not lag["refreshes"]:
        return f"{kind} lag: no refreshes in the last hour, oldest queued {lag['oldest_queued_age_seconds']:.0f}s"
    figures = ", ".join(f"{name} {'–' if lag[name] is None else f'{lag[name]:.1f}s'}" for name in ("p50", "p95", "max"))
    return (
        f"{kind} lag over the last hour ({lag['refreshes']} refreshes): {figures}; "
        f"oldest queued {lag['oldest_queued_age_seconds']:.0f}s"
    )


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(as_json: bool) -> None:
    """The database, last refresh, lag, queue, claims and their holders, versions retrying (with their
    last error), dead letters and read-model sizes.

    Lag is the age of the oldest change not yet refreshed (0 when nothing is
    queued); populated is when every read model was last complete (a rebuild,
    or drains that covered every version).

    \b
    Example:
      progress-refresh status --json
    """
    dsn = database_url()
    with _database(dsn) as conn:
        status = _status(conn, dsn)
    _emit(status, as_json, lambda: _render_status(status))


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config_command(as_json: bool) -> None:
    """Every setting: its effective value and where it comes from.

    A value comes from the environment, else the database table
    progress_refresh_settings (settings the SQL API uses too), else its default.
    URLs are shown with their passwords masked. When the database cannot be
    read, the settings are still shown, and the command exits with status 2.

    \b
    Example:
      progress-refresh config
      PROGRESS_BATCH_SIZE=100 progress-refresh config --json
    """
    dsn = database_url()
    try:
        with connection(dsn) as conn:
            database: dict[str, str] | None = gateway.settings(conn)
    except ProgressError as exc:
        database = None
        click.echo(f"note: values kept in the database are shown as their defaults: {exc}", err=True)
    rows = [
        {
            "setting": e.setting.name,
            "value": e.setting.shown(dsn if e.setting is settings.DATABASE_URL else e.value),
            "source": e.source,
            "variable": e.setting.env,
            "database_key": e.setting.database_key,
        }
        for e in settings.effective(database)
    ]

    def render() -> None:
        table = Table(title="effective settings")
        table.add_column("setting", no_wrap=True)  # names are copied whole
        for column in ("value", "from"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["setting"], row["value"], row["source"])
        console.print(table)

    _emit(rows, as_json, render)
    if database is None:
        # Shown, but not necessarily what a refresh would use: a script must not
        # take them for the effective settings.
        sys.exit(2)


@cli.command("requeue-dead-letters")
def requeue_dead_letters_command() -> None:
    """Put dead-lettered versions back in the queue with fresh attempts.

    \b
    Example:
      progress-refresh status            # the dead letters and their errors
      progress-refresh requeue-dead-letters
    """
    with _database() as conn:
        moved = gateway.requeue_dead_letters(conn)
    click.echo(f"requeued {len(moved)} version(s)")


@cli.command("enqueue")
@click.argument("version", metavar="KIND:UUID")
def enqueue_command(version: str) -> None:
    """Queue one version for the next refresh.

    \b
    Example:
      progress-refresh enqueue audio:0b6e3c1a-5f7e-4a39-9c1e-2f3d4a5b6c7d
    """
    kind, version_id = gateway.parse_version(version)
    with _database() as conn:
        gateway.enqueue(conn, kind, version_id)
    click.echo(f"queued {kind}:{version_id}")


def _summaries(conn: psycopg.Connection, limit: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return list(
            cur.execute(
                """
            SELECT 'audio' AS kind, v.name, s.covered_verses, s.total_verses,
                   round(s.verse_fraction * 100, 1) AS verse_pct, s.chapters_with_audio AS chapters,
                   s.books_complete
              FROM mv_audio_version_progress_summary s JOIN audio_versions v ON v.id = s.audio_version_id
            UNION ALL
            SELECT 'text', v.name, s.covered_verses, s.total_verses, round(s.verse_fraction * 100, 1),
                   s.complete_chapters, s.books_complete
              FROM mv_text_version_progress_summary s JOIN text_versions v ON v.id = s.text_version_id
             ORDER BY 1, 2 LIMIT %s
            """,
                [limit],
            )
        )


@cli.command("demo")
@click.option("--limit", default=12, show_default=True, help="How many version summaries to print.")
def demo_command(limit: int) -> None:
    """Start the database, migrate, load the demo if empty, drain, print summaries.

    \b
    Example:
      progress-refresh demo
    """
    from orchestration.demo_data import seed_demo

    with connection(database_url()) as conn:
        migrate(conn)
        with _progress_bar("seeding demo", True) as update:
            seed_demo(conn, progress=update)
        report = drain_queue(conn)
        rows = _summaries(conn, limit)
    console.print(f"refreshed {len(report.refreshed)} queued version(s) in {report.seconds:.2f}s")
    table = Table(title="progress per version")
    for column in ("kind", "name", "covered", "total", "verse %", "chapters", "books complete"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@cli.command("stop-embedded")
def stop_embedded_command() -> None:
    """Stop the embedded PostgreSQL if it is running.

    \b
    Example:
      progress-refresh stop-embedded
    """
    click.echo("stopped" if stop_embedded() else "not running")


def _register_dagster_commands() -> None:
    from orchestration.dagster_dev import dev_command, simulate_command

    cli.add_command(dev_command, "dev")
    cli.add_command(simulate_command, "simulate")


_register_dagster_commands()


def _fail(message: str, code: int) -> None:
    """One line on stderr, with any fragment of the configured URL's secrets masked."""
    try:
        configured = settings.configured_database_url()
    except ProgressError:
        configured = None
    click.echo(f"error: {scrub(' '.join(message.split()), configured)}", err=True)
    sys.exit(code)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    # SIGTERM ends a command as Ctrl-C does, so its exit handlers run (the embedded
    # server's list of the processes using it would otherwise keep this one).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli.main(args=argv, prog_name="progress-refresh", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # no command given: the help, as --help shows it
        click.echo(exc.ctx.get_help())
    except click.ClickException as exc:
        _fail(exc.format_message(), 2)
    except ConnectionLost as exc:
        _fail(str(exc), 3)
    except ProgressError as exc:
        _fail(str(exc), 2)
    except psycopg.Error as exc:
        message = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
        _fail(f"database: {message}", 2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
