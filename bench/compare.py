"""`python -m bench compare --against <commit>`: this checkout's drains side by
side with another commit's, on two copies of one generated database, in one
process.

The template database is installed by the other commit's code (its
`orchestration` and `sql/`, taken with `git archive`), so it stands for a
database that release migrated; the copy called `ours` is then upgraded by this
checkout's `migrate`. Each repetition, for each side in turn (the order
alternates): a matview drain on a third, separate database (the main
benchmark's baseline refresh, which leaves every drain of ours as cold as it
finds it there), one change, then the SQL API's drain, timed until it returns
no rows. Medians per scenario; the first repetition, which plans every
statement of the session, is left out.

The capture scenarios time writes instead: 1,000 single-row `verse_texts`
INSERTs, or one INSERT of a whole version's, each side with its own capture
triggers and, in the same repetition, with them disabled: the write's own
cost, the same code on both sides.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
from bench.server import database_dsn, database_name, open_db, server_databases
from orchestration.db.migrations import migrate
from orchestration.errors import ProgressError

ROOT = Path(__file__).resolve().parents[1]

# One change of each kind the chapter-scoped refresh aims at.
SCENARIOS: dict[str, tuple[str, Callable[[measure.Change], tuple[Any, Callable[[measure.Session], object]]]]] = {
    "audio_chapter": ("1 audio chapter file", lambda c: c.audio("audio_chapter")),
    "audio_range": ("1 audio verse-range file", lambda c: c.audio("audio_range")),
    "audio_mapping": ("1 audio verse mapping", lambda c: c.mapping()),
    "text_chapter": ("1 text chapter added", lambda c: c.text()),
    "text_verse": ("1 verse text added", lambda c: c.text(measure.ADD_VERSE_TEXT)),
    "audio_whole": ("whole audio version", lambda c: c.audio_version()),
}

# Writes timed with the capture triggers on and off (measure.CaptureWork).
CAPTURE_SCENARIOS: dict[str, tuple[str, Callable[[measure.CaptureWork], Callable[[], float]]]] = {
    "capture_single": ("1,000 single-row verse_texts INSERTs", lambda w: w.single_inserts),
    "capture_bulk": ("one INSERT of a version's verse_texts", lambda w: w.bulk_insert),
}

# A capture scenario's two rows: with each side's triggers, and without any
# (row suffix, label, triggers enabled).
WRITE_MODES = (("", "capture triggers", True), ("_no_triggers", "no triggers", False))


def result_rows(scenarios: list[str]) -> dict[str, str]:
    """The result table's rows and their labels: the drains first, then two
    rows for each capture scenario."""
    rows = {s: SCENARIOS[s][0] for s in scenarios if s in SCENARIOS}
    for s in scenarios:
        if s in CAPTURE_SCENARIOS:
            for suffix, mode, _ in WRITE_MODES:
                rows[s + suffix] = f"{CAPTURE_SCENARIOS[s][0]}, {mode}"
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench compare",
        description="Time this checkout's drains against another commit's, side by side on the same data.",
    )
    parser.add_argument("--against", required=True, help="the commit (or tag, branch) to compare with")
    add_size_option(parser)
    parser.add_argument(
        "--scenarios",
        default="audio_chapter,text_verse",
        help=f"comma-separated changes: {', '.join([*SCENARIOS, *CAPTURE_SCENARIOS])}; "
        "default audio_chapter,text_verse",
    )
    parser.add_argument("--repeat", type=int, default=13, help="drains per side and scenario; default 13")
    parser.add_argument("--baseline-size", default="S", help="size of the matview database refreshed before each drain")
    add_database_options(parser)
    args = parser.parse_args(argv)
    args.size = checked_size(parser, args.size)
    args.baseline_size = checked_size(parser, args.baseline_size)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    known = [*SCENARIOS, *CAPTURE_SCENARIOS]
    unknown = [s for s in args.scenarios if s not in known]
    if not args.scenarios or unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(known)}")
    if args.repeat < 2:
        parser.error("--repeat must be at least 2 (the first drain is left out)")
    return args


def _git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, timeout=120)


def export_commit(commit: str, into: Path) -> str:
    """The commit's `orchestration` and `sql/` in `into`; returns its short hash."""
    resolved = _git("rev-parse", "--short", "--verify", "--quiet", f"{commit}^{{commit}}")
    if resolved.returncode != 0:
        raise ProgressError(f"unknown commit {commit!r}: give a commit, tag or branch of this repository")
    archive = _git("archive", "--format=tar", commit, "orchestration", "sql")
    if archive.returncode != 0:
        raise ProgressError(f"commit {commit} has no orchestration/ and sql/ to compare with")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return resolved.stdout.decode().strip()


def migrate_with(code: Path, dsn: str) -> None:
    """Runs the exported commit's migrate on one database, in a process of its own."""
    program = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from orchestration.db.connection import connect\n"
        "from orchestration.db.migrations import migrate\n"
        "with connect(sys.argv[2]) as conn:\n"
        "    migrate(conn, strategy='table')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(code), dsn], cwd=code, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProgressError(f"the other commit's migrate failed: {last}")


def render(result: dict[str, Any]) -> str:
    ours = result["ours"] + (", with local changes" if result["ours_modified"] else "")
    writes = any(row["scenario"] not in SCENARIOS for row in result["scenarios"])
    lines = [
        f"Drains after one change, size {result['size']}: {result['against']} against ours ({ours}).",
        f"Median of {result['repeat'] - 1} drains a side (the first left out), each after",
        f"a matview drain at size {result['baseline_size']}"
        + (f"; writes: median of {result['repeat'] - 1} a side and mode." if writes else "."),
        "",
        f"| change | {result['against']} | ours | ours / {result['against']} |",
        "|---|---:|---:|---:|",
    ]
    for row in result["scenarios"]:
        lines.append(
            f"| {row['label']} | {row['against_ms']:.2f} ms | {row['ours_ms']:.2f} ms | "
            f"{row['ours_ms'] / row['against_ms']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: compare(args), "interrupted: benchmark databases dropped")


def compare(args: argparse.Namespace) -> int:
    log = Log()
    dbs = server_databases(args.dsn, log)
    args.dsn = dbs.server_dsn
    size = data.SIZES[args.size]
    names = {side: database_name(size.name, side) for side in ("template", "against", "ours", "baseline")}
    rows = result_rows(args.scenarios)
    samples: dict[str, dict[str, list[float]]] = {row: {"against": [], "ours": []} for row in rows}
    with tempfile.TemporaryDirectory(prefix="progress-compare-") as code:
        against = export_commit(args.against, Path(code))
        try:
            dbs.create(names["template"])
            migrate_with(Path(code), database_dsn(args.dsn, names["template"]))
            with open_db(args.dsn, names["template"]) as conn:
                log(f"generating size {size.name} in {names['template']}, migrated by {against}")
                data.generate(conn, size, seed=args.seed, log=log)
            sessions: dict[str, measure.Session] = {}
            for side in ("against", "ours"):
                dbs.create(names[side], template=names["template"])
                conn = open_db(args.dsn, names[side])
                if side == "ours":
                    migrate(conn)
                conn.execute("SELECT refresh_progress_materialized_views_full()")
                sessions[side] = measure.Session("table", conn)
                sessions[side].settle()
            dbs.create(names["baseline"])
            baseline_conn = open_db(args.dsn, names["baseline"])
            migrate(baseline_conn, strategy="matview")
            data.generate(baseline_conn, data.SIZES[args.baseline_size], seed=args.seed, log=log)
            baseline_conn.execute("SELECT refresh_progress_materialized_views_full()")
            baseline = measure.Session("matview", baseline_conn)
            baseline_targets = measure.Targets(baseline.conn)
            changes = {side: measure.Change(measure.Targets(s.conn)) for side, s in sessions.items()}
            log("populated; measuring")
            for scenario in [s for s in args.scenarios if s in SCENARIOS]:
                label, make = SCENARIOS[scenario]
                for _, order in measure.interleaved(args.repeat, ["against", "ours"]):
                    for side in order:
                        _, file_id = baseline_targets.take("audio_chapter")
                        baseline.execute(measure.TOGGLE_FILE, [file_id])
                        baseline.drain()
                        _, apply = make(changes[side])
                        apply(sessions[side])
                        seconds, _ = sessions[side].drain()
                        samples[scenario][side].append(seconds * 1000)
                log(f"{label}: {against} {fmt(samples[scenario]['against'])}, ours {fmt(samples[scenario]['ours'])}")
            time_writes(args, sessions, samples, rows, log, against)
            for session in [*sessions.values(), baseline]:
                session.conn.close()
        finally:
            dbs.drop_all()
    ours = source_version()
    result = {
        "size": size.name,
        "baseline_size": args.baseline_size,
        "repeat": args.repeat,
        "against": against,
        "ours": ours["commit"],
        "ours_modified": ours["sql_modified"],
        "scenarios": [
            {
                "scenario": s,
                "label": label,
                "against_ms": statistics.median(samples[s]["against"][1:]),
                "ours_ms": statistics.median(samples[s]["ours"][1:]),
                "samples_ms": {side: [round(x, 2) for x in xs] for side, xs in samples[s].items()},
            }
            for s, label in rows.items()
        ],
    }
    paths = save_table(args.out, "compare", result, render(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return 0


def time_writes(
    args: argparse.Namespace,
    sessions: dict[str, measure.Session],
    samples: dict[str, dict[str, list[float]]],
    labels: dict[str, str],
    log: Log,
    against: str,
) -> None:
    """Each repetition, each side in turn (the order alternating), and each
    mode in turn (alternating too): the capture scenarios' writes, timed."""
    scenarios = [s for s in args.scenarios if s in CAPTURE_SCENARIOS]
    if not scenarios:
        return
    works = {side: measure.CaptureWork(s) for side, s in sessions.items()}
    for work in works.values():
        work.checkpoint()  # after the set-up
    for scenario in scenarios:
        pick = CAPTURE_SCENARIOS[scenario][1]
        for rep, order in measure.interleaved(args.repeat, ["against", "ours"]):
            for side in order:
                work = works[side]
                for suffix, _, enabled in WRITE_MODES if rep % 2 == 0 else WRITE_MODES[::-1]:
                    samples[scenario + suffix][side].append(work.with_triggers(enabled, pick(work)) * 1000)
        for suffix, _, _ in WRITE_MODES:
            row = samples[scenario + suffix]
            log(f"{labels[scenario + suffix]}: {against} {fmt(row['against'])}, ours {fmt(row['ours'])}")


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values) + " ms"
