"""`python -m bench workers`: draining queued versions with 1 and with 2 workers, side by side.

One database of the chosen size (bench/data.py), populated once. Each repetition
queues the same versions (`progress_enqueue_all_versions`, or the first
--versions of them) and drains them with `drain_queue(..., workers=N)`, each
worker a thread with its own connection. The versions are unchanged since the
populate, so each refresh computes everything and writes nothing: the figure is
the per-version compute a drain must do, which is what the workers share. Worker
counts are interleaved rep by rep, so drift on the server affects both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench import data
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
from orchestration.db.connection import connect
from orchestration.db.migrations import migrate
from orchestration.errors import ProgressError
from orchestration.refresh import RefreshPolicy, drain_queue


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench workers",
        description="Time draining queued versions with 1 and with 2 (or --workers) refresh workers.",
    )
    add_size_option(parser)
    parser.add_argument("--versions", type=int, default=400, help="versions queued per drain; default 400")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts; default 1,2 (first: baseline)")
    parser.add_argument("--repeat", type=int, default=3, help="drains per worker count (median); default 3")
    add_database_options(parser)
    args = parser.parse_args(argv)
    args.size = checked_size(parser, args.size)
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        parser.error("--workers takes comma-separated whole numbers, e.g. 1,2")
    if not args.workers or min(args.workers) < 1 or args.repeat < 1 or args.versions < 1:
        parser.error("--workers, --repeat and --versions must be at least 1")
    return args


def queue_versions(conn: Any, limit: int) -> int:
    """Queues the first `limit` versions (every kind, in id order); returns how many."""
    conn.execute("SELECT progress_enqueue_all_versions(NULL)")
    conn.execute(
        "DELETE FROM progress_refresh_queue WHERE id NOT IN"
        " (SELECT id FROM progress_refresh_queue ORDER BY kind, version_id LIMIT %s)",
        [limit],
    )
    return int(conn.execute("SELECT count(*) FROM progress_refresh_queue").fetchone()[0])


def render(result: dict[str, Any]) -> str:
    rows = result["drains"]
    base = rows[0]["median_seconds"]
    lines = [
        f"Draining {result['versions']} queued versions at size {result['size']} "
        f"(median of {result['repeat']}, {result['server_cpus']} CPUs visible to the benchmark)",
        "",
        "| workers | median | versions/s | vs 1 worker |",
        "|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['median_seconds']:.2f} s | {row['versions_per_second']:.1f} | "
            f"{base / row['median_seconds']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: measure(args), "interrupted: benchmark databases dropped")


def measure(args: argparse.Namespace) -> int:
    log = Log()
    dbs = server_databases(args.dsn, log)
    args.dsn = dbs.server_dsn
    size = data.SIZES[args.size]
    name = database_name(size.name, "workers")
    try:
        dbs.create(name)
        dsn = database_dsn(args.dsn, name)
        with open_db(args.dsn, name) as conn:
            migrate(conn, strategy="table")
            log(f"generating size {size.name} ({size.audio_versions} + {size.text_versions} versions)")
            data.generate(conn, size, seed=args.seed, log=log)
            started = time.perf_counter()
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            conn.execute("VACUUM ANALYZE")
            log(f"populated in {time.perf_counter() - started:.1f}s")
            samples: dict[int, list[float]] = {n: [] for n in args.workers}
            queued = 0
            for rep in range(args.repeat):
                order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
                for workers in order:
                    queued = queue_versions(conn, args.versions)
                    policy = RefreshPolicy.from_env(conn)
                    report = drain_queue(conn, policy, connect=lambda: connect(dsn), workers=workers)
                    if len(report.refreshed) != queued:
                        raise ProgressError(f"drain refreshed {len(report.refreshed)} of {queued} versions")
                    samples[workers].append(report.seconds)
                    log(f"rep {rep + 1}: {workers} worker(s) drained {queued} versions in {report.seconds:.2f}s")
    finally:
        dbs.drop_all()
    result = {
        "size": size.name,
        "versions": queued,
        "repeat": args.repeat,
        "server_cpus": os.cpu_count(),
        "source": source_version(),
        "drains": [
            {
                "workers": n,
                "seconds": [round(s, 3) for s in samples[n]],
                "median_seconds": statistics.median(samples[n]),
                "versions_per_second": queued / statistics.median(samples[n]),
            }
            for n in args.workers
        ],
    }
    paths = save_table(args.out, "workers", result, render(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return 0
