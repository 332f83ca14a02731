"""`python -m bench soak`: how fresh the read models stay under steady writes,
with `progress-refresh dev` (Dagster's webserver and daemon) at the shipped defaults.

The benchmark starts `progress-refresh dev` against a temporary state folder (its
own embedded PostgreSQL, demo data, Dagster storage), adds soak versions with no
coverage yet (so every change adds covered verses, and its effect is known),
then for each rate commits one change at a time at that steady rate for
--duration seconds: a new verse text of a random soak text version, or a new
chapter recording of a random soak audio version. A poller reads the summary
read models every 0.2 s; a change is visible once its version's
`covered_verses` reaches what the change made it. It reports, per rate:

* lag from commit to visible: p50, p95, max (and changes never visible: lost);
* queue depth over time (every second);
* Dagster runs started (from the webserver's GraphQL API), and by whom;
* database time per change: the time spent in the refresh functions
  (pg_stat_user_functions, with track_functions = 'all' set on the database).

JSON and a PNG (lag histogram and queue depth over time) go to --out. Every
server it starts is stopped at the end, on Ctrl-C or SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.cli import DEFAULT_OUT, Log, run_guarded, save_table, source_version
from orchestration.db.connection import connect
from orchestration.errors import ProgressError

STARTUP_TIMEOUT_SECONDS = 300
POLL_SECONDS = 0.2
DEPTH_EVERY_SECONDS = 1.0
# Functions whose time is the refresh's database work (claims, refreshes, settling).
REFRESH_FUNCTIONS = ("progress_claim_batch", "progress_refresh_claimed", "progress_finish")
PENDING = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}
RUNS_QUERY = """
query { runsOrError(filter: {pipelineName: "refresh_queued_versions"}) {
  ... on Runs { results { runId status creationTime startTime endTime tags { key value } } } } }
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench soak",
        description="Steady writes against `progress-refresh dev` at the defaults; lag from commit to "
        "visible in the summary read models, queue depth, runs started, database time per change.",
    )
    parser.add_argument("--rates", default="0.5,5", help="changes per second, comma-separated; default 0.5,5")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of writes per rate; default 300")
    parser.add_argument("--versions", type=int, default=20, help="soak versions of each kind; default 20")
    parser.add_argument(
        "--settle", type=float, default=120.0, help="seconds to wait for the last changes to show; default 120"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder; default bench/results/")
    parser.add_argument("--seed", type=int, default=11, help="random seed of the writes")
    parser.add_argument("--port", type=int, default=0, help="Dagster UI port; default: a free one")
    args = parser.parse_args(argv)
    try:
        args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error("--rates takes comma-separated numbers, e.g. 0.5,5")
    if not args.rates or min(args.rates) <= 0 or args.duration <= 0 or args.versions < 1:
        parser.error("--rates and --duration must be positive and --versions at least 1")
    return args


@dataclass
class Change:
    kind: str
    version_id: uuid.UUID
    expected_covered: int
    committed: float  # epoch seconds
    visible: float | None = None

    @property
    def lag(self) -> float | None:
        return None if self.visible is None else self.visible - self.committed


@dataclass
class Phase:
    rate: float
    started: float
    ended: float = 0.0  # the last write
    settled: float = 0.0  # the last change visible (or the wait given up)
    changes: list[Change] = field(default_factory=list)
    depth: list[tuple[float, int]] = field(default_factory=list)
    function_ms: dict[str, float] = field(default_factory=dict)


# --- the product under test -------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


class DevServer:
    """`progress-refresh dev` in a temporary state folder, stopped (with its embedded server) on exit."""

    def __init__(self, state: Path, port: int, log: Log) -> None:
        self.state, self.port, self.log = state, port, log
        self.output = state / "dev.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROGRESS_", "DAGSTER_"))}
        env["PROGRESS_STATE_DIR"] = str(state)
        command = [str(Path(sys.executable).with_name("progress-refresh")), "dev", "--port", str(port)]
        with self.output.open("w") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_until_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProgressError(f"progress-refresh dev exited: {self.tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                if graphql(self.port, "{ version }").get("data"):
                    return
            time.sleep(1)
        raise ProgressError(f"progress-refresh dev did not serve within {STARTUP_TIMEOUT_SECONDS}s: {self.tail()}")

    def tail(self) -> str:
        return " | ".join(self.output.read_text(errors="replace").strip().splitlines()[-5:])

    def runs(self) -> list[dict[str, Any]]:
        results = graphql(self.port, RUNS_QUERY)["data"]["runsOrError"]["results"]
        return [{**run, "tags": {t["key"]: t["value"] for t in run["tags"]}} for run in results]

    def wait_until_no_run_pending(self, timeout: float) -> None:
        """Until the runs so far have ended (a run that keeps draining ends once the queue is quiet)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(run["status"] in PENDING for run in self.runs()):
                return
            time.sleep(1)
        raise ProgressError(f"a refresh run was still pending after {timeout:.0f}s")

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: dev stops Dagster, then its embedded server; the rest is killed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _stop_leftover_postgres(self.state / "pgdata")


def _stop_leftover_postgres(pgdata: Path) -> None:
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, ProcessLookupError, OSError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown
            for _ in range(100):
                if not pid_file.exists():
                    break
                time.sleep(0.1)


def product_dsn(state: Path) -> str:
    """The DSN of the embedded server `dev` started in the state folder."""
    from orchestration.db.embedded import _running_postmaster

    info = _running_postmaster(state / "pgdata")
    if info is None:
        raise ProgressError(f"no embedded PostgreSQL running in {state / 'pgdata'}")
    return str(info.get_uri())


# --- the workload -------------------------------------------------------------


class Workload:
    """Soak versions with nothing covered, and changes that each add known coverage."""

    def __init__(self, conn: psycopg.Connection, versions: int, seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        bible = conn.execute("SELECT id FROM bible_versions WHERE id = 'kjv'").fetchone()
        if bible is None:
            raise ProgressError("the demo's KJV structure is missing")
        language = uuid.uuid4()
        conn.execute("INSERT INTO language_entities (id, name) VALUES (%s, 'Soak language')", [language])
        self.versions: dict[str, list[uuid.UUID]] = {"audio": [], "text": []}
        self.covered: dict[uuid.UUID, int] = {}
        for kind in ("audio", "text"):
            for i in range(versions):
                version = uuid.uuid4()
                conn.execute(
                    f"INSERT INTO {kind}_versions (id, language_entity_id, bible_version_id, name)"
                    " VALUES (%s, %s, 'kjv', %s)",
                    [version, language, f"Soak {kind} {i + 1}"],
                )
                self.versions[kind].append(version)
                self.covered[version] = 0
        chapters = conn.execute(
            "SELECT c.id, c.total_verses FROM chapters c JOIN books b ON b.id = c.book_id"
            " WHERE b.bible_version_id = 'kjv' ORDER BY b.book_number, c.chapter_number"
        ).fetchall()
        verses = [
            row[0]
            for row in conn.execute(
                "SELECT v.id FROM verses v JOIN chapters c ON c.id = v.chapter_id JOIN books b ON b.id = c.book_id"
                " WHERE b.bible_version_id = 'kjv'"
            )
        ]
        # Each version takes chapters (audio) or verses (text) in its own random order, never twice.
        self.todo: dict[uuid.UUID, list[Any]] = {}
        for version in self.versions["audio"]:
            self.todo[version] = self.rng.sample(chapters, len(chapters))
        for version in self.versions["text"]:
            self.todo[version] = self.rng.sample(verses, len(verses))

    def wait_until_refreshed(self, timeout: float) -> None:
        """The soak versions' summary rows exist (the sensor's run refreshed them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(read_covered(self.conn, self.versions)) == sum(len(v) for v in self.versions.values()):
                return
            time.sleep(0.5)
        raise ProgressError("the soak versions were not refreshed in time: is the sensor running?")

    def change(self) -> Change:
        kind = self.rng.choice(("audio", "text"))
        version = self.rng.choice(self.versions[kind])
        item = self.todo[version].pop()
        with self.conn.transaction():
            if kind == "audio":
                chapter, verses = item
                self.conn.execute(
                    "INSERT INTO media_files (audio_version_id, media_type, is_bible_audio, upload_status,"
                    " publish_status, chapter_id) VALUES (%s, 'audio', true, 'completed', 'published', %s)",
                    [version, chapter],
                )
            else:
                verses = 1
                self.conn.execute(
                    "INSERT INTO verse_texts (text_version_id, verse_id, verse_text) VALUES (%s, %s, 'soak')",
                    [version, item],
                )
        committed = time.time()
        self.covered[version] += verses
        return Change(kind, version, self.covered[version], committed)


def read_covered(conn: psycopg.Connection, versions: dict[str, list[uuid.UUID]]) -> dict[uuid.UUID, int]:
    rows = conn.execute(
        "SELECT audio_version_id, covered_verses FROM mv_audio_version_progress_summary"
        " WHERE audio_version_id = ANY(%s)"
        " UNION ALL SELECT text_version_id, covered_verses FROM mv_text_version_progress_summary"
        " WHERE text_version_id = ANY(%s)",
        [versions["audio"], versions["text"]],
    ).fetchall()
    return {version: int(covered) for version, covered in rows}


class Poller(threading.Thread):
    """Marks changes visible as the summaries show them; samples the queue depth."""

    def __init__(self, dsn: str, versions: dict[str, list[uuid.UUID]]) -> None:
        super().__init__(daemon=True, name="soak-poller")
        self.dsn, self.versions = dsn, versions
        self.pending: list[Change] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.phase: Phase | None = None
        self.error: BaseException | None = None

    def add(self, change: Change) -> None:
        with self.lock:
            self.pending.append(change)

    def outstanding(self) -> int:
        with self.lock:
            return len(self.pending)

    def run(self) -> None:
        try:
            with connect(self.dsn, application_name="progress-soak-poller") as conn:
                next_depth = 0.0
                while not self.stop.is_set():
                    covered = read_covered(conn, self.versions)
                    now = time.time()
                    with self.lock:
                        still = []
                        for change in self.pending:
                            if covered.get(change.version_id, 0) >= change.expected_covered:
                                change.visible = now
                            else:
                                still.append(change)
                        self.pending = still
                    if self.phase is not None and now >= next_depth:
                        (depth,) = conn.execute("SELECT count(*)::int FROM progress_refresh_queue").fetchone() or (0,)
                        self.phase.depth.append((now, depth))
                        next_depth = now + DEPTH_EVERY_SECONDS
                    self.stop.wait(POLL_SECONDS)
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc


def function_times(conn: psycopg.Connection) -> dict[str, float]:
    """Milliseconds spent in each refresh function so far (all sessions, this database)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = conn.execute(
        "SELECT funcname, sum(total_time) FROM pg_stat_user_functions WHERE funcname = ANY(%s) GROUP BY funcname",
        [list(REFRESH_FUNCTIONS)],
    ).fetchall()
    return {name: float(ms) for name, ms in rows}


# --- running a phase and reporting --------------------------------------------


def run_phase(workload: Workload, poller: Poller, conn: psycopg.Connection, rate: float, args, log: Log) -> Phase:
    phase = Phase(rate, time.time())
    before = function_times(conn)
    poller.phase = phase
    interval = 1.0 / rate
    next_at = time.monotonic()
    end = next_at + args.duration
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        change = workload.change()
        phase.changes.append(change)
        poller.add(change)
        next_at += interval
        if poller.error is not None:
            raise ProgressError(f"poller failed: {poller.error}")
    phase.ended = time.time()
    log(f"rate {rate:g}/s: {len(phase.changes)} changes committed; waiting for the last to show")
    deadline = time.monotonic() + args.settle
    while poller.outstanding() and time.monotonic() < deadline:
        time.sleep(0.5)
    phase.settled = time.time()
    # Let the run that kept draining settle its last entries, so the function times include them.
    time.sleep(2)
    poller.phase = None
    after = function_times(conn)
    phase.function_ms = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in REFRESH_FUNCTIONS}
    return phase


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(phase: Phase, runs: list[dict[str, Any]]) -> dict[str, Any]:
    lags = [c.lag for c in phase.changes if c.lag is not None]
    started = [
        r for r in runs if phase.started <= r["creationTime"] <= phase.settled and r["tags"].get("progress/trigger")
    ]
    db_ms = sum(phase.function_ms.values())
    return {
        "rate_per_second": phase.rate,
        "duration_seconds": round(phase.ended - phase.started, 1),
        "changes": len(phase.changes),
        "lost": len(phase.changes) - len(lags),
        "lag_seconds": {
            "p50": percentile(lags, 0.5),
            "p95": percentile(lags, 0.95),
            "max": max(lags) if lags else None,
            "mean": statistics.fmean(lags) if lags else None,
            "all": [round(x, 2) for x in lags],
        },
        "queue_depth": {
            "max": max((d for _, d in phase.depth), default=0),
            "series": [[round(t - phase.started, 1), d] for t, d in phase.depth],
        },
        "runs_started": len(started),
        "runs": [
            {
                "run_id": r["runId"],
                "status": r["status"],
                "trigger": r["tags"].get("progress/trigger"),
                "by": r["tags"].get("dagster/sensor_name") or r["tags"].get("dagster/schedule_name") or "manual",
                "created_after_seconds": round(r["creationTime"] - phase.started, 1),
                "seconds": round(r["endTime"] - r["startTime"], 1) if r.get("endTime") and r.get("startTime") else None,
            }
            for r in started
        ],
        "database_ms": {name: round(ms, 1) for name, ms in phase.function_ms.items()},
        "database_ms_per_change": round(db_ms / len(phase.changes), 2) if phase.changes else None,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "| rate | duration | changes | lost | lag p50 | lag p95 | lag max | max queue depth | runs started "
        "| DB time per change |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def sec(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f} s"

    for p in result["phases"]:
        lag = p["lag_seconds"]
        lines.append(
            f"| {p['rate_per_second']:g}/s | {p['duration_seconds']:.0f} s | {p['changes']} | {p['lost']} "
            f"| {sec(lag['p50'])} | {sec(lag['p95'])} | {sec(lag['max'])} | {p['queue_depth']['max']} "
            f"| {p['runs_started']} | {p['database_ms_per_change']} ms |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["phases"]
    fig, axes = plt.subplots(2, len(phases), figsize=(6 * len(phases), 7), squeeze=False)
    for i, p in enumerate(phases):
        lags = p["lag_seconds"]["all"]
        top, bottom = axes[0][i], axes[1][i]
        top.hist(lags, bins=30, color="tab:blue")
        for name, color in (("p50", "tab:green"), ("p95", "tab:orange")):
            if p["lag_seconds"][name] is not None:
                top.axvline(
                    p["lag_seconds"][name], color=color, linestyle="--", label=f"{name} {p['lag_seconds'][name]:.1f} s"
                )
        top.set_title(f"{p['rate_per_second']:g} changes/s: commit to visible in the summary")
        top.set_xlabel("lag (s)")
        top.set_ylabel("changes")
        top.legend()
        series = p["queue_depth"]["series"]
        bottom.plot([t for t, _ in series], [d for _, d in series], color="tab:purple", label="queue depth")
        for run in p["runs"]:
            bottom.axvline(run["created_after_seconds"], color="tab:gray", alpha=0.5, linewidth=0.8)
        bottom.set_title(f"queue depth over time ({p['runs_started']} runs started, grey lines)")
        bottom.set_xlabel("seconds since the phase started")
        bottom.set_ylabel("queued versions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: soak(args), "interrupted: servers stopped")


def soak(args: argparse.Namespace) -> int:
    log = Log()
    started_at = time.gmtime()
    state = Path(tempfile.mkdtemp(prefix="progress-soak-"))
    server: DevServer | None = None
    try:
        port = args.port or free_port()
        log(f"starting progress-refresh dev on port {port} in {state}")
        server = DevServer(state, port, log)
        server.wait_until_serving()
        dsn = product_dsn(state)
        with connect(dsn, application_name="progress-soak") as conn:
            # Sessions opened from now on (the runs' workers) count time spent in functions.
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET track_functions = 'all'").format(sql.Identifier(conn.info.dbname))
            )
            workload = Workload(conn, args.versions, args.seed)
            log(f"added {args.versions} audio + {args.versions} text soak versions; waiting for their first refresh")
            workload.wait_until_refreshed(timeout=180)
            poller = Poller(dsn, workload.versions)
            poller.start()
            phases = []
            for rate in args.rates:
                # Each rate starts with no run pending, so its runs are its own.
                server.wait_until_no_run_pending(timeout=args.settle + 300)
                log(f"rate {rate:g}/s for {args.duration:.0f}s")
                phases.append(run_phase(workload, poller, conn, rate, args, log))
            poller.stop.set()
            poller.join()
            runs = server.runs()
        result = {
            "meta": {
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", started_at),
                "rates": args.rates,
                "duration_seconds": args.duration,
                "versions_per_kind": args.versions,
                "cpus": os.cpu_count(),
                "source": source_version(),
                "database_time": "pg_stat_user_functions (track_functions = all): " + ", ".join(REFRESH_FUNCTIONS),
            },
            "phases": [summarize(p, runs) for p in phases],
        }
        markdown, saved = save_table(args.out, "soak", result, render(result))
        plot(result, args.out / "soak.png")
        log(f"wrote {markdown}, {saved} and {args.out / 'soak.png'}")
        return 0
    finally:
        if server is not None:
            log("stopping progress-refresh dev")
            server.stop()
        shutil.rmtree(state, ignore_errors=True)
