#!/usr/bin/env python3
"""The project's two commands, needing nothing but Python 3.11+:

    python3 project.py run    # the product on its embedded PostgreSQL (Dagster UI on 127.0.0.1:3000)
    python3 project.py test   # lint (ruff, mypy) and the test suite, on PostgreSQL 18 and 15

Both create .venv/ and install the project into it on first use (again
whenever pyproject.toml changes); extra arguments go to the command.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"
# Debian's postgresql-15 package (the major version many Supabase projects run).
PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def _python() -> str:
    return str(BIN / "python")


def ensure_installed() -> None:
    """Creates the virtualenv and installs the project (with test extras) if needed."""
    if sys.version_info < (3, 11):
        sys.exit(f"error: Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing the project into .venv (first run takes a minute or two) ...", flush=True)
    subprocess.run([_python(), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([_python(), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print(__doc__.strip())
        return 2
    command, extra = sys.argv[1], sys.argv[2:]
    try:
        ensure_installed()
    except subprocess.CalledProcessError as exc:
        print(f"error: installing the project failed ({exc.returncode})", file=sys.stderr)
        return 1
    if command == "run":
        return run_until_stopped([str(BIN / "progress-refresh"), "dev", *extra])
    return run_tests(extra)


def run_until_stopped(args: list[str]) -> int:
    """Runs args and waits for it; SIGTERM, SIGINT or SIGHUP here is passed on as
    SIGTERM, and this process waits until the child has stopped everything it started
    (Dagster, the embedded PostgreSQL) before it exits itself."""
    child = subprocess.Popen(args, cwd=ROOT)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    return child.wait()


def run_tests(extra: list[str]) -> int:
    """Quality gates first, then the suite on the embedded PostgreSQL 18, then again
    on Debian's PostgreSQL 15 when its binaries are installed (or on the server of
    PROGRESS_TEST_DATABASE_URL alone, when given)."""
    sources = [name for name in ("orchestration", "tests", "bench") if (ROOT / name).is_dir()]
    steps: list[tuple[str, list[str], dict[str, str]]] = [
        ("ruff check", [str(BIN / "ruff"), "check", *sources], {}),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", *sources], {}),
        ("mypy", [str(BIN / "mypy")], {}),
        ("tests on the embedded PostgreSQL", [_python(), "-m", "pytest", *extra], {}),
    ]
    if PG15_BIN.joinpath("postgres").exists() and not os.environ.get("PROGRESS_TEST_DATABASE_URL"):
        steps.append(("tests on PostgreSQL 15", [_python(), "-m", "pytest", *extra],
                      {"PROGRESS_TEST_POSTGRES_BIN": str(PG15_BIN)}))
    for name, args, env in steps:
        print(f"==> {name}", flush=True)
        code = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}).returncode
        if code != 0:
            print(f"==> {name} failed ({code})", flush=True)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
