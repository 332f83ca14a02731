"""Where the database is: PROGRESS_DATABASE_URL, or the embedded server's folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

DATABASE_URL_ENV = "PROGRESS_DATABASE_URL"
TEST_DATABASE_URL_ENV = "PROGRESS_TEST_DATABASE_URL"
STATE_DIR_ENV = "PROGRESS_STATE_DIR"

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """The folder (ignored by git) holding the embedded server's data and Dagster's home."""
    configured = os.environ.get(STATE_DIR_ENV)
    return Path(configured).resolve() if configured else PROJECT_ROOT / ".progress"


def configured_database_url() -> str | None:
    value = os.environ.get(DATABASE_URL_ENV, "").strip()
    return value or None


def redact(dsn: str) -> str:
    """The DSN with any password masked, safe for logs, errors and metadata."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password=)\S+", r"\1***", dsn)
