"""`python -m bench.takeover --size M`: how long `migrate --adopt` takes on a
database of the previous design at a benchmark size, and what a reader and a
writer working throughout notice.

The database gets the benchmark data (bench/data.py), the previous design
(bench/previous_design.sql) populated by its own full refresh, and a few
queued changes. Then `migrate --adopt` runs while one reader polls every read
model and one writer commits a change every 100 ms. It prints the adoption
time, the build and swap times, the slowest read and the slowest write, and
checks that a drain leaves every read model equal to its logical view.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time

from bench import data
from bench.cli import Log
from bench.previous_design import FIXTURE, PollingReader, make_changes, pending
from bench.server import Databases, database_dsn, database_name, open_db
from orchestration.db import gateway
from orchestration.db.connection import connect
from orchestration.db.migrations import load_migrations, migrate
from orchestration.refresh import drain_queue


class Writer:
    """Commits one app change every interval (a soft delete of a verse text) and keeps its slowest commit."""

    def __init__(self, dsn: str, interval: float = 0.1) -> None:
        self.dsn, self.interval = dsn, interval
        self.writes, self.slowest, self.errors = 0, 0.0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with connect(self.dsn) as conn:
            while not self._stop.wait(self.interval):
                started = time.perf_counter()
                try:
                    conn.execute(
                        "UPDATE verse_texts SET deleted_at = now() WHERE id = "
                        "(SELECT id FROM verse_texts WHERE deleted_at IS NULL OFFSET %s LIMIT 1)",
                        [self.writes * 7],
                    )
                except Exception as exc:  # recorded, not raised: the benchmark reports it
                    self.errors.append(" ".join(str(exc).split()))
                self.slowest = max(self.slowest, time.perf_counter() - started)
                self.writes += 1


def run(size: data.Size, strategy: str, log: Log) -> dict[str, float | int | str]:
    from orchestration.db.embedded import start_embedded

    dbs = Databases(start_embedded(), log)
    name = database_name(size.name, f"takeover_{strategy}")
    try:
        dbs.create(name)
        dsn = database_dsn(dbs.server_dsn, name)
        with open_db(dbs.server_dsn, name) as conn:
            conn.execute(load_migrations()[0].sql)
            conn.execute(FIXTURE.read_text(encoding="utf-8"))
            log(f"generating {size.audio_versions} audio + {size.text_versions} text versions")
            data.generate(conn, size, log=log)
            started = time.perf_counter()
            conn.execute("SELECT refresh_progress_materialized_views_full()")
            log(f"the previous design populated its materialized views in {time.perf_counter() - started:.1f}s")
            make_changes(conn)
            queued = pending(conn)
            log(f"{len(queued)} changes queued; adopting ({strategy}) with a reader and a writer at work")
            with PollingReader(dsn) as reader, Writer(dsn) as writer:
                started = time.perf_counter()
                changes = migrate(conn, strategy=strategy, adopt=True)
                adopt_seconds = time.perf_counter() - started
                time.sleep(0.5)
            summary = next(line for line in changes if line.startswith("built "))
            build, swap = re.findall(r"([\d.]+) ?(?:s|ms)", summary)[:2]
            log(summary)
            started = time.perf_counter()
            report = drain_queue(conn)
            drain_seconds = time.perf_counter() - started
            mismatching = sum(gateway.mismatches_by_read_model(conn).values())
            return {
                "size": size.name,
                "strategy": strategy,
                "adopt_seconds": round(adopt_seconds, 1),
                "build_seconds": float(build),
                "swap_ms": float(swap),
                "reads": reader.log.reads,
                "read_errors": len(reader.log.errors),
                "empty_reads": len(reader.log.empty),
                "slowest_read_ms": round(reader.log.slowest_seconds * 1000, 1),
                "writes": writer.writes,
                "write_errors": len(writer.errors),
                "slowest_write_ms": round(writer.slowest * 1000, 1),
                "queued_kept": len(queued),
                "drained_after": len(report.outcomes),
                "drain_seconds": round(drain_seconds, 1),
                "mismatching_rows_after_drain": mismatching,
            }
    finally:
        dbs.drop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="S", choices=sorted(data.SIZES), help="benchmark size; default S")
    parser.add_argument("--strategy", default="table", choices=["table", "matview"], help="default table")
    args = parser.parse_args(argv)
    result = run(data.SIZES[args.size], args.strategy, Log())
    width = max(len(key) for key in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    failed = result["read_errors"] or result["empty_reads"] or result["write_errors"]
    return 1 if failed or result["mismatching_rows_after_drain"] else 0


if __name__ == "__main__":
    sys.exit(main())
