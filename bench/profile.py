"""`python -m bench profile`: where one drain's time goes, step by step.

On a generated database of its own, the SQL drain's functions are replaced by
copies that note the clock after each of their statements (a session setting
per step), so a drain is timed from inside: the queue claim, the chapter
refresh statement by statement, the language entities, the log. Each change
is made by another session; the drain is the SQL API's, timed until it returns
no rows. Two ways a drain meets the server:

  warm               one session drains again and again (a busy worker);
  first of session   a new session for every drain (pg_cron, a CLI call):
                     every statement is parsed and planned, every catalog
                     entry read, on the way.

Medians per step; "outside the statements" is the rest of the drain: calls
and round trips, the commit, the last call that finds the queue empty.
The noting itself costs about 2 µs a step. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import itertools
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench import data, measure
from bench.cli import (
    Log,
    add_database_options,
    add_size_option,
    checked_size,
    run_guarded,
    save_table,
    source_version,
)
from bench.compare import SCENARIOS
from bench.server import database_name, open_db, server_databases
from orchestration.db.migrations import migrate
from orchestration.errors import ProgressError

# The functions a chapter-scoped SQL drain runs its statements in, per kind.
PROFILED = {
    "audio": (
        "drain_progress_refresh_queue",
        "progress_refresh_held",
        "progress_refresh_chapters_audio",
        "progress_live_bible_audio_files_reaching",
    ),
    "text": ("drain_progress_refresh_queue", "progress_refresh_held", "progress_refresh_chapters_text"),
}
SETTING = "progress_profile.step_"
# Statements too small to time on their own (block ends, returns, plain
# assignments): their time goes to the next step.
TRIVIAL = re.compile(r"^(END( IF| LOOP)?;|RETURN;|RETURN NEXT\b.*|GET DIAGNOSTICS\b.*|[\w.]+ := [\w.]+;)$")
OUTSIDE = "outside the statements"
# The line opening a function's body (indented in the generated functions).
BODY_BEGIN = re.compile(r"^[ \t]*BEGIN\n", re.MULTILINE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench profile", description="Times each statement of one drain, warm and first of a session."
    )
    add_size_option(parser)
    parser.add_argument(
        "--scenario",
        default="audio_chapter",
        help=f"the change drained: {', '.join(s for s in SCENARIOS if s != 'audio_whole')}; default audio_chapter",
    )
    parser.add_argument("--repeat", type=int, default=200, help="warm drains (median); default 200")
    parser.add_argument("--sessions", type=int, default=20, help="first-of-session drains (median); default 20")
    add_database_options(parser)
    args = parser.parse_args(argv)
    args.size = checked_size(parser, args.size)
    if args.scenario not in SCENARIOS or args.scenario == "audio_whole":
        parser.error(f"unknown scenario {args.scenario}: choose a chapter-scoped one (see --help)")
    if args.repeat < 1 or args.sessions < 1:
        parser.error("--repeat and --sessions must be at least 1")
    return args


@dataclass
class Step:
    setting: str
    function: str
    statement: str


@dataclass
class Profile:
    steps: list[Step] = field(default_factory=list)
    # Per regime, per step setting: milliseconds since the step before it.
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    drains: dict[str, list[float]] = field(default_factory=dict)
    # Per step setting: its places in the drains' order of steps (a nested
    # function's steps run inside a statement of its caller).
    places: dict[str, list[int]] = field(default_factory=dict)


# Lines that only steer (a block, a branch, a loop): never a step's label.
CONTROL = re.compile(r"^(IF\b.*\bTHEN|ELSIF\b.*\bTHEN|ELSE|BEGIN|EXCEPTION\b.*|LOOP|CONTINUE\b.*)$")
# The table a statement writes, if any: what tells the generated ones apart.
WRITES = re.compile(r"\b(?:INSERT INTO|UPDATE|DELETE FROM)\s+(\w+)")


def statement_label(lines: list[str]) -> str:
    """The first line of the step's own statement, the lines before it that
    only steer or are too small to time left out."""
    meaningful = []
    for line in lines:
        text = " ".join(line.split("--", 1)[0].split())
        if text and not CONTROL.match(text) and not TRIVIAL.match(text):
            meaningful.append(text)
    if not meaningful:
        return "(the steps before it)"
    label = meaningful[0] if len(meaningful[0]) >= 20 or len(meaningful) == 1 else " ".join(meaningful[:2])
    written = WRITES.search(" ".join(meaningful))
    return f"writes {written.group(1)}: {label}" if written and written.group(1) != "t" else label


def instrumented(definition: str, function: str, first_step: int) -> tuple[str, list[Step]]:
    """The function's definition (pg_get_functiondef) with the clock noted on
    entry to its body (after its DECLARE section) and after every statement
    of it (a line ending in a semicolon: a statement's last line in these
    functions)."""
    begin = BODY_BEGIN.search(definition)
    if begin is None:
        raise ProgressError(f"{function}: no BEGIN line to time its statements from")
    head, body = definition[: begin.end()], definition[begin.end() :]
    steps = [Step(f"{SETTING}{first_step}", function, "(entry)")]
    out = [f"PERFORM set_config('{steps[0].setting}', clock_timestamp()::text, false);"]
    pending: list[str] = []
    for line in body.split("\n"):
        out.append(line)
        pending.append(line)
        text = line.strip()
        if not text.endswith(";") or text.startswith("--") or TRIVIAL.match(text):
            continue
        step = Step(f"{SETTING}{first_step + len(steps)}", function, statement_label(pending))
        steps.append(step)
        out.append(f"PERFORM set_config('{step.setting}', clock_timestamp()::text, false);")
        pending = []
    return head + "\n".join(out), steps


def install(conn: psycopg.Connection, kind: str) -> list[Step]:
    steps: list[Step] = []
    for function in PROFILED[kind]:
        definition = conn.execute("SELECT pg_get_functiondef(%s::regproc)", [function]).fetchone()[0]  # type: ignore[index]
        sql, added = instrumented(definition, function, len(steps))
        conn.execute(sql)
        steps += added
    return steps


def drain_once(conn: psycopg.Connection, steps: list[Step]) -> tuple[float, dict[str, float]]:
    """One timed drain; each step's milliseconds since the step before it, in
    the order the steps ran."""
    session = measure.Session("table", conn)
    session.execute("SELECT " + ", ".join(f"set_config('{s.setting}', '', false)" for s in steps))
    # The steps of the call that refreshes; then the calls until the queue is
    # empty, which count in the drain's time only.
    started = time.perf_counter()
    session.execute("SELECT * FROM drain_progress_refresh_queue()")
    seconds = time.perf_counter() - started
    noted = session.execute(
        "SELECT "
        + ", ".join(f"extract(epoch FROM nullif(current_setting('{s.setting}', true), '')::timestamptz)" for s in steps)
    )[0]
    seconds += session.drain()[0]
    fired = sorted((float(at), step.setting) for at, step in zip(noted, steps, strict=True) if at is not None)
    return seconds * 1000, {setting: (at - before) * 1000 for (before, _), (at, setting) in itertools.pairwise(fired)}


def record(profile: Profile, regime: str, drain_ms: float, steps: dict[str, float]) -> None:
    samples = profile.samples.setdefault(regime, {})
    for setting, ms in steps.items():
        samples.setdefault(setting, []).append(ms)
    samples.setdefault(OUTSIDE, []).append(drain_ms - sum(steps.values()))
    for place, setting in enumerate(steps):
        profile.places.setdefault(setting, []).append(place)
    profile.drains.setdefault(regime, []).append(drain_ms)


def run(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    dbs = server_databases(args.dsn, log)
    name = database_name(args.size, "profile")
    label, make = SCENARIOS[args.scenario]
    try:
        dbs.create(name)
        with open_db(dbs.server_dsn, name) as conn:
            migrate(conn)
            log(f"generating size {args.size}")
            data.generate(conn, data.SIZES[args.size], seed=args.seed, log=log)
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            measure.Session("table", conn).settle()
        with open_db(dbs.server_dsn, name) as writer:
            changes = measure.Change(measure.Targets(writer))
            writes = measure.Session("table", writer)
            kind, _ = make(changes)[0]
            profile = Profile(steps=install(writer, kind))

            def change() -> None:
                make(changes)[1](writes)

            with open_db(dbs.server_dsn, name) as drainer:
                change()
                drain_once(drainer, profile.steps)  # plans the session's statements: not counted
                log(f"{label}: {args.repeat} warm drains")
                for _ in range(args.repeat):
                    change()
                    record(profile, "warm", *drain_once(drainer, profile.steps))
            log(f"{label}: {args.sessions} drains, each in a new session")
            for _ in range(args.sessions):
                change()
                with open_db(dbs.server_dsn, name) as fresh:
                    fresh.execute("SELECT 1")
                    record(profile, "first", *drain_once(fresh, profile.steps))
    finally:
        dbs.drop_all()
    return summarize(args, label, profile)


def summarize(args: argparse.Namespace, label: str, profile: Profile) -> dict[str, Any]:
    names = {s.setting: s for s in profile.steps}
    timed = [s.setting for s in profile.steps if s.setting in profile.samples.get("warm", {})]
    order = [*sorted(timed, key=lambda setting: statistics.median(profile.places[setting])), OUTSIDE]
    rows = []
    for setting in order:
        step = names.get(setting)
        rows.append(
            {
                "function": step.function if step else "",
                "statement": step.statement if step else OUTSIDE,
                **{
                    regime: statistics.median(profile.samples[regime][setting])
                    if profile.samples.get(regime, {}).get(setting)
                    else None
                    for regime in ("warm", "first")
                },
            }
        )
    return {
        "size": args.size,
        "scenario": args.scenario,
        "label": label,
        "repeat": args.repeat,
        "sessions": args.sessions,
        "drain_ms": {regime: statistics.median(ms) for regime, ms in profile.drains.items()},
        "steps": rows,
        **source_version(),
    }


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render(result: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    lines = [
        f"Drain of {result['label']} at {result['size']}, step by step (ms, medians of "
        f"{result['repeat']} warm drains and {result['sessions']} first of a session)",
        "",
        "| function | statement | warm | first of session |",
        "|---|---|---:|---:|",
    ]
    for row in result["steps"]:
        function = row["function"].removeprefix("progress_")
        lines.append(f"| {function} | {short(row['statement'], 48)} | {ms(row['warm'])} | {ms(row['first'])} |")
    drains = result["drain_ms"]
    lines.append(f"| **drain** | until it returns no rows | {ms(drains.get('warm'))} | {ms(drains.get('first'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def profile() -> int:
        result = run(args, Log())
        save_table(args.out, f"profile_{args.size.lower()}_{args.scenario}", result, render(result))
        return 0

    return run_guarded(profile, "interrupted: benchmark databases dropped")
