"""`python3 project.py run` as a user meets it: read models populated before
Dagster starts, a clean first screen, and SIGTERM stopping everything it
started, the embedded PostgreSQL included."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest

from orchestration.dagster_dev import populate_read_models
from orchestration.db import gateway
from orchestration.db.embedded import HANDLES_FILE, forget_stopped_processes
from orchestration.settings import PROJECT_ROOT

READY_TIMEOUT_SECONDS = 180
STOP_TIMEOUT_SECONDS = 60
NOISE = (
    "Traceback",
    "SupersessionWarning",
    "No cursor for event type",
    "XDG_RUNTIME_DIR",
    "Warning:",
    "Failed postgres command",
    "Failed to stop server",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serves(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": "{ version }"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(json.loads(response.read()).get("data"))
    except OSError:
        return False


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.mark.e2e
def test_sigterm_to_run_stops_dagster_and_the_embedded_postgresql(tmp_path: Path) -> None:
    state = tmp_path / "state"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PROGRESS_DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")}
    env.update(PROGRESS_STATE_DIR=str(state), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "project.py"), "run", "--no-demo", "--port", str(port)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not serves(port):
            assert process.poll() is None, "".join(output)
            assert time.monotonic() < deadline, f"not serving after {READY_TIMEOUT_SECONDS}s:\n{''.join(output)}"
            time.sleep(0.5)
        postmaster = postmaster_pid(state / "pgdata")
        started = [postmaster, *(p.pid for p in psutil.Process(process.pid).children(recursive=True))]

        stop_requested = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT_SECONDS)
        stopped_after = time.monotonic() - stop_requested
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=5)
    text = "".join(output)
    print(f"\nrun stopped {stopped_after:.1f}s after SIGTERM (exit {code})")
    left = [pid for pid in started if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"still running after run exited: {left}\n{text}"
    assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    assert json.loads((state / "pgdata" / HANDLES_FILE).read_text() or "[]") == []
    assert "read models: built in" in text.split("Dagster UI:")[0], text
    assert not [noise for noise in NOISE if noise in text], text


def test_read_models_are_populated_before_dagster_starts(db) -> None:
    db.execute("INSERT INTO language_entities (id, name) VALUES (gen_random_uuid(), 'L')")
    db.execute("INSERT INTO text_versions (language_entity_id, name) SELECT id, 'T' FROM language_entities")
    assert populate_read_models(db).startswith("read models: built in")
    assert db.execute("SELECT count(*) FROM mv_text_version_progress_summary").fetchone()[0] == 1
    assert gateway.queue_state(db)["depth"] == 0
    db.execute("INSERT INTO text_versions (language_entity_id, name) SELECT id, 'T2' FROM language_entities")
    assert populate_read_models(db).startswith("read models: refreshed 1 queued version(s)")
    assert db.execute("SELECT count(*) FROM mv_text_version_progress_summary").fetchone()[0] == 2


def test_stopped_processes_leave_the_embedded_servers_list(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    (tmp_path / HANDLES_FILE).write_text(json.dumps([ended.pid, os.getpid()]))
    assert forget_stopped_processes(tmp_path) == [os.getpid()]
    assert json.loads((tmp_path / HANDLES_FILE).read_text()) == [os.getpid()]


def test_stop_embedded_says_one_clean_line(tmp_path: Path) -> None:
    env = dict(os.environ, PROGRESS_STATE_DIR=str(tmp_path / f"state-{uuid.uuid4().hex[:6]}"))
    env.pop("XDG_RUNTIME_DIR", None)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "progress-refresh"), "stop-embedded"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "not running\n", "")


def test_a_process_that_started_the_embedded_server_and_stopped_it_exits_quietly(tmp_path: Path) -> None:
    """`dev` stops the server it started before it exits; the wheel's own exit
    handler must then find nothing left to stop rather than print a failed
    pg_ctl call under a clean stop."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROGRESS_DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["PROGRESS_STATE_DIR"] = str(tmp_path / "state")
    program = (
        "from orchestration.db.embedded import start_embedded, stop_embedded\nstart_embedded()\nprint(stop_embedded())"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "True\n", "")
    assert not (tmp_path / "state" / "pgdata" / "postmaster.pid").exists()
