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
import tempfile
import venv
from collections.abc import Mapping
from pathlib import Path
from xml.etree import ElementTree

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
    PROGRESS_TEST_DATABASE_URL alone, when given). Ends by saying which servers the
    suite ran on, with its counts, and which pass it skipped."""
    sources = [name for name in ("orchestration", "tests", "bench") if (ROOT / name).is_dir()]
    gates = [
        ("ruff check", [str(BIN / "ruff"), "check", *sources]),
        ("ruff format", [str(BIN / "ruff"), "format", "--check", *sources]),
        ("mypy", [str(BIN / "mypy")]),
    ]
    for name, args in gates:
        print(f"==> {name}", flush=True)
        code = subprocess.run(args, cwd=ROOT).returncode
        if code != 0:
            print(f"==> {name} failed ({code})", flush=True)
            return code
    passes, skipped = suite_passes(os.environ, PG15_BIN)
    for line in skipped:
        print(f"==> {line}", flush=True)
    results: list[str] = []
    code = 0
    with tempfile.TemporaryDirectory() as reports:
        for number, (name, env) in enumerate(passes):
            report = Path(reports) / f"pass{number}.xml"
            print(f"==> tests on {name}", flush=True)
            args = [_python(), "-m", "pytest", f"--junitxml={report}", *extra]
            code = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}).returncode
            results.append(summarize(report, name))
            if code != 0:
                print(f"==> tests on {name} failed ({code})", flush=True)
                break
    print(f"==> ran on {'; '.join(results + skipped)}", flush=True)
    return code


def suite_passes(environ: Mapping[str, str], pg15_bin: Path) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """The servers to run the suite on (name, extra environment), and the passes skipped, said plainly."""
    if environ.get("PROGRESS_TEST_DATABASE_URL"):
        return [("the server of PROGRESS_TEST_DATABASE_URL", {})], []
    embedded: tuple[str, dict[str, str]] = ("the embedded PostgreSQL", {})
    if pg15_bin.joinpath("postgres").exists():
        return [embedded, ("PostgreSQL 15", {"PROGRESS_TEST_POSTGRES_BIN": str(pg15_bin)})], []
    return [embedded], [f"PostgreSQL 15: SKIPPED, not installed in {pg15_bin} (apt-get install postgresql-15)"]


def summarize(report: Path, name: str) -> str:
    """'PostgreSQL 18.1: 215 passed, 2 skipped' from pytest's JUnit report (the
    server's version is recorded by the tests' server fixture)."""
    if not report.exists():
        return f"{name}: no report"
    root = ElementTree.parse(report).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return f"{name}: no report"
    count = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    version = next((p.get("value") for p in suite.iter("property") if p.get("name") == "postgresql_version"), None)
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    parts = [f"{passed} passed"] + [f"{count[key]} {key}" for key in ("failures", "errors", "skipped") if count[key]]
    return f"{f'PostgreSQL {version}' if version else name}: {', '.join(parts)}"


if __name__ == "__main__":
    sys.exit(main())
