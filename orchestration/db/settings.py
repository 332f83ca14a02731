"""Where the database is. The settings themselves live in orchestration/settings.py;
these names stay importable from here for the modules that import them."""

from __future__ import annotations

from orchestration.db.dsn import mask_dsn as redact
from orchestration.settings import (
    DATABASE_URL,
    PROJECT_ROOT,
    STATE_DIR,
    TEST_DATABASE_URL,
    configured_database_url,
    state_dir,
)

DATABASE_URL_ENV = DATABASE_URL.env
TEST_DATABASE_URL_ENV = TEST_DATABASE_URL.env
STATE_DIR_ENV = STATE_DIR.env

__all__ = [
    "DATABASE_URL_ENV",
    "PROJECT_ROOT",
    "STATE_DIR_ENV",
    "TEST_DATABASE_URL_ENV",
    "configured_database_url",
    "redact",
    "state_dir",
]
