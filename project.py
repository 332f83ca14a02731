#!/usr/bin/env python3
"""The project's two commands, needing nothing but Python 3.11+:

    python3 project.py run    # the product on its embedded PostgreSQL (Dagster UI on 127.0.0.1:3000)
    python3 project.py test   # the test suite

Both create .venv/ and install the project into it on first use (again
whenever pyproject.toml changes); extra arguments go to the command.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-from"


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
        args = [str(BIN / "progress-refresh"), "dev", *extra]
    else:
        args = [_python(), "-m", "pytest", *extra]
    return subprocess.run(args, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
