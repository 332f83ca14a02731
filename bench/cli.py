"""`python -m bench`: generate, install both strategies, measure, report."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench import data, measure, report
from bench.server import Databases, baseline_embedded_dsn, open_db
from orchestration.db.migrations import migrate
from orchestration.errors import ProgressError

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """--out, --dsn and --seed, as every benchmark command takes them."""
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder; default bench/results/")
    parser.add_argument("--dsn", default=None, help="PostgreSQL server DSN; default: the embedded server")
    parser.add_argument("--seed", type=float, default=0.42, help="random seed of the data generator (-1..1)")


def add_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="M", help="data size: XS, S, M (default) or L")


def checked_size(parser: argparse.ArgumentParser, size: str) -> str:
    """A --size value, upper-cased; an unknown one ends the command with one line."""
    size = size.strip().upper()
    if size not in data.SIZES:
        parser.error(f"unknown size {size}: choose from {', '.join(data.SIZES)}")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the per-version refresh (table strategy) against the seed's "
        "materialized views (matview strategy), side by side on the same data.",
    )
    parser.add_argument(
        "--sizes",
        default="S,M",
        help="comma-separated sizes: S (20+20 versions), M (200+200), L (1,000+1,000); default S,M",
    )
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per measurement (median); default 5")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder; default bench/results/")
    parser.add_argument("--dsn", default=None, help="PostgreSQL server DSN; default: the embedded server")
    parser.add_argument(
        "--baseline-dsn",
        default=None,
        help="PostgreSQL server DSN for the baseline (matview); default: a second embedded server, "
        "or the --dsn server when --dsn is given",
    )
    parser.add_argument("--lookups", type=int, default=200, help="lookups per read-latency metric; default 200")
    parser.add_argument("--seed", type=float, default=0.42, help="random seed of the data generator (-1..1)")
    args = parser.parse_args(argv)
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in data.SIZES]
    if not sizes or unknown:
        parser.error(f"unknown size(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(data.SIZES)}")
    if args.repeat < 1 or args.lookups < 1:
        parser.error("--repeat and --lookups must be at least 1")
    args.sizes = sizes
    return args


class Log:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.prefix = ""

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.started
        print(f"[bench {elapsed:7.1f}s{self.prefix}] {message}", file=sys.stderr, flush=True)


def run_size(servers: dict[str, Databases], size: data.Size, args: argparse.Namespace, log: Log) -> dict[str, Any]:
    """Measures one size: the data generated once per server (the same seed
    makes the same rows: checked), cloned per strategy, measured, dropped."""
    from bench.server import database_name

    log.prefix = f" {size.name}"
    names = {"table": database_name(size.name, "table"), "matview": database_name(size.name, "matview")}
    # A template per server (both strategies may share one), named apart: two
    # DSNs may reach one server.
    templates = {servers["table"]: database_name(size.name, "template")}
    templates.setdefault(servers["matview"], database_name(size.name, "baseline_template"))
    info: dict[str, Any] = {}
    try:
        fingerprints = []
        for dbs, template in templates.items():
            where = f" on {dbs.label}" if len(templates) > 1 else ""
            log(f"generating {size.audio_versions} audio + {size.text_versions} text versions in {template}{where}")
            dbs.create(template)
            with open_db(dbs.server_dsn, template) as conn:
                migrate(conn, strategy="table")
                counts = data.generate(conn, size, seed=args.seed, log=log)
                if len(templates) > 1:
                    fingerprints.append(data.fingerprint(conn))
            log(
                f"generated in {counts['seconds']:.1f}s: {counts['media_files']:,} media files, "
                f"{counts['media_files_verses']:,} mappings, {counts['verse_texts']:,} verse_texts"
            )
        if len(set(fingerprints)) > 1:
            raise ProgressError(f"the servers generated different data from seed {args.seed}: results not comparable")
        info.update({k: v for k, v in counts.items() if k != "seconds"}, generate_seconds=counts["seconds"])
        sessions: dict[str, measure.Session] = {}
        for strategy, name in names.items():
            dbs = servers[strategy]
            started = time.perf_counter()
            dbs.create(name, template=templates[dbs])
            conn = open_db(dbs.server_dsn, name)
            if strategy == "matview":
                migrate(conn, strategy="matview")
            log(f"{name}: cloned and set up ({strategy}) in {time.perf_counter() - started:.1f}s; populating")
            started = time.perf_counter()
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            info[f"populate_{strategy}_seconds"] = round(time.perf_counter() - started, 2)
            sessions[strategy] = measure.Session(strategy, conn)
            sessions[strategy].settle()
            log(f"{name}: populated in {info[f'populate_{strategy}_seconds']:.1f}s")
        # The loads leave gigabytes of dirty pages at L: written out now, on each
        # server, not by a checkpoint under the first measurements.
        for session in sessions.values():
            with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
                session.execute("CHECKPOINT")
        ours = sessions["table"]
        info["read_model_rows"] = ours.read_model_rows()
        info["audio_verse_rows"] = int(ours.execute("SELECT count(*) FROM mv_audio_verse_coverage")[0][0])
        info["text_verse_rows"] = int(ours.execute("SELECT count(*) FROM mv_text_verse_coverage")[0][0])
        info["database_bytes"] = {
            s: int(sess.execute("SELECT pg_database_size(current_database())")[0][0]) for s, sess in sessions.items()
        }
        try:
            metrics, info["mismatching_rows"] = measure.run_all(sessions, args.repeat, args.lookups, log)
        finally:
            for session in sessions.values():
                session.conn.close()
        return {"data": info, "metrics": {m.id: m.as_dict() for m in metrics}}
    finally:
        for strategy, name in names.items():
            servers[strategy].drop(name)
        for dbs, template in templates.items():
            dbs.drop(template)
        log("databases dropped")
        log.prefix = ""


def source_version() -> dict[str, Any]:
    """The commit the SQL and Python come from, and whether sql/ has local edits."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "sql_modified": bool(git("status", "--porcelain", "--", "sql", "orchestration")),
    }


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(run: Callable[[], int], interrupted: str) -> int:
    """Runs a benchmark command: a ProgressError is one line on stderr and exit 1;
    Ctrl-C or SIGTERM (after run's own clean-up) says `interrupted` and exits 130."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run()
    except ProgressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def save_table(out: Path, stem: str, result: dict[str, Any], table: str) -> tuple[Path, Path]:
    """Writes out/<stem>.json and out/<stem>.md, prints the table; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    return out / f"{stem}.md", out / f"{stem}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = Log()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.dsn is None:
            from orchestration.db.embedded import start_embedded

            log("starting (or joining) the embedded PostgreSQL")
            args.dsn = start_embedded()
            if args.baseline_dsn is None:
                log("starting (or joining) a second embedded PostgreSQL for the baseline")
                args.baseline_dsn = baseline_embedded_dsn()
        ours = Databases(args.dsn, log, "our server")
        servers = {
            "table": ours,
            "matview": ours
            if args.baseline_dsn in (None, args.dsn)
            else Databases(args.baseline_dsn, log, "the baseline's server"),
        }
        results: dict[str, Any] = {
            "meta": {
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "sizes": args.sizes,
                "repeat": args.repeat,
                "lookups": args.lookups,
                "seed": args.seed,
                "server": ours.server_info(),
                "baseline_server": servers["matview"].server_info() if servers["matview"] is not ours else None,
                "source": source_version(),
            },
            "sizes": {},
        }
        try:
            for name in args.sizes:
                results["sizes"][name] = run_size(servers, data.SIZES[name], args, log)
                # Partial results survive a later size failing or being interrupted.
                report.write(results, args.out)
        finally:
            for dbs in dict.fromkeys(servers.values()):
                dbs.drop_all()
        results["meta"]["seconds"] = round(time.perf_counter() - log.started, 1)
        paths = report.write(results, args.out)
        print(paths["markdown"].read_text())
        log(f"wrote {paths['markdown']}, {paths['json']} and {paths['chart']}")
        return 0
    except ProgressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: benchmark databases dropped", file=sys.stderr)
        return 130
