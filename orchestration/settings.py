"""Every setting of the product: its environment variable, its default, and
where the effective value comes from.

A value comes from the first of: the environment, the database table
`progress_refresh_settings` (for the settings the SQL API uses too, so that a
drain from psql and a drain from Python agree), the default below. The
database's defaults are written by the migrations; `DATABASE_DEFAULTS` says
what they are and a test keeps the two equal. `progress-refresh config` prints
the effective values and their sources.

The batch size is one value: `drain_batch_size` (25) in the database, used by
the SQL drain and by Python drains alike; PROGRESS_BATCH_SIZE overrides it for
the Python drains of one process.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestration.db.dsn import mask_dsn
from orchestration.errors import ProgressError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

ENV = "environment"
DATABASE = "database"
DEFAULT = "default"


def _positive_int(text: str) -> int:
    number = int(text)
    if number <= 0:
        raise ValueError(text)
    return number


def _finite_float(text: str) -> float:
    """A number of seconds: "nan" and "inf" parse as floats but compare false (or
    true) with everything, so a threshold set to them would silently never (or always) hold."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _non_negative_float(text: str) -> float:
    number = _finite_float(text)
    if number < 0:
        raise ValueError(text)
    return number


def _positive_float(text: str) -> float:
    number = _finite_float(text)
    if number <= 0:
        raise ValueError(text)
    return number


# PostgreSQL's units for a time setting, in milliseconds (its default unit).
_DURATION_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?")
_MAX_MILLISECONDS = 2**31 - 1


def _postgres_duration(text: str) -> str:
    """A timeout as PostgreSQL reads it (5s, 500ms, 2min; a bare number is
    milliseconds; 0 is no limit), kept as written: refused here, by its
    variable's name, rather than by the server on the first refresh."""
    match = _DURATION.fullmatch(text)
    if match is None or float(match[1]) * _DURATION_UNITS[match[2] or ""] > _MAX_MILLISECONDS:
        raise ValueError(text)
    return text


@dataclass(frozen=True)
class Setting:
    """One setting. database_key: kept in progress_refresh_settings under this key
    (the environment variable, when there is one, overrides it for this process)."""

    name: str
    env: str | None
    default: Any
    meaning: str
    parse: Callable[[str], Any] = str
    expected: str = "text"
    database_key: str | None = None
    secret: bool = False

    def shown(self, value: Any) -> str:
        """The value as `config` prints it: URLs masked, unset said so."""
        if value is None:
            return "unset"
        return mask_dsn(str(value)) if self.secret else str(value)


@dataclass(frozen=True)
class Effective:
    setting: Setting
    value: Any
    source: str


DATABASE_URL = Setting(
    "database_url",
    "PROGRESS_DATABASE_URL",
    None,
    "libpq URL of the product database; unset: the embedded PostgreSQL",
    secret=True,
)
STATE_DIR = Setting(
    "state_dir",
    "PROGRESS_STATE_DIR",
    PROJECT_ROOT / ".progress",
    "embedded server data and DAGSTER_HOME of `dev`",
    parse=lambda text: Path(text).resolve(),
    expected="a folder",
)
DAGSTER_PG_URL = Setting(
    "dagster_pg_url",
    "DAGSTER_PG_URL",
    None,
    "Dagster's own storage (postgresql+psycopg2://…); unset: a `dagster` database on the embedded server",
    secret=True,
)
BATCH_SIZE = Setting(
    "batch_size",
    "PROGRESS_BATCH_SIZE",
    25,
    "versions a drain claims at a time (SQL and Python drains)",
    parse=_positive_int,
    expected="a positive integer",
    database_key="drain_batch_size",
)
LEASE_SECONDS = Setting(
    "lease_seconds",
    "PROGRESS_LEASE_SECONDS",
    300,
    "how long a claim holds before another worker may take it",
    parse=_positive_int,
    expected="a positive integer",
    database_key="lease_seconds",
)
MAX_ATTEMPTS = Setting(
    "max_attempts",
    None,
    3,
    "failed attempts before a version moves to the dead letter table",
    parse=_positive_int,
    database_key="max_attempts",
)
RETRY_BACKOFF_SECONDS = Setting(
    "retry_backoff_seconds",
    None,
    30,
    "wait before retrying a failed version, doubled per attempt",
    parse=_positive_int,
    database_key="retry_backoff_seconds",
)
STORAGE_STRATEGY = Setting(
    "storage_strategy",
    None,
    "table",
    "read-model storage (`migrate --strategy table|matview` switches it)",
    database_key="storage_strategy",
)
LOCK_TIMEOUT = Setting(
    "lock_timeout",
    "PROGRESS_LOCK_TIMEOUT",
    "5s",
    "a refresh waiting longer for a lock fails that version (retried later)",
    parse=_postgres_duration,
    expected="a PostgreSQL duration such as 5s, 500ms or 2min (0: no limit)",
)
STATEMENT_TIMEOUT = Setting(
    "statement_timeout",
    "PROGRESS_STATEMENT_TIMEOUT",
    "300s",
    "a longer refresh statement fails that version",
    parse=_postgres_duration,
    expected="a PostgreSQL duration such as 5s, 500ms or 2min (0: no limit)",
)
SENSOR_INTERVAL_SECONDS = Setting(
    "sensor_interval_seconds",
    "PROGRESS_SENSOR_INTERVAL_SECONDS",
    # The daemon evaluates sensors at most every 5 s (its loop's floor): shorter buys nothing.
    5,
    "how often refresh_queue_sensor looks at the queue",
    parse=_positive_int,
    expected="a positive integer",
)
SENSOR_MIN_DEPTH = Setting(
    "sensor_min_depth",
    "PROGRESS_SENSOR_MIN_DEPTH",
    25,
    "ready versions that start a refresh at once",
    parse=_positive_int,
    expected="a positive integer",
)
SENSOR_MAX_AGE_SECONDS = Setting(
    "sensor_max_age_seconds",
    "PROGRESS_SENSOR_MAX_AGE_SECONDS",
    # 0: a ready change starts a run at the next tick. Batching needs no wait: a run
    # drains everything queued by the time it starts, and keeps draining.
    0.0,
    "age of the oldest ready change that starts a refresh (0: the next tick)",
    parse=_non_negative_float,
    expected="a number of seconds",
)
REFRESH_WORKERS = Setting(
    "refresh_workers",
    "PROGRESS_REFRESH_WORKERS",
    # Two connections refreshing at once suit the embedded server on a small machine.
    2,
    "workers a Dagster refresh run drains with, each with its own connection; dagster.yaml's limits follow it",
    parse=_positive_int,
    expected="a positive integer",
)
RUN_IDLE_SECONDS = Setting(
    "run_idle_seconds",
    "PROGRESS_RUN_IDLE_SECONDS",
    10.0,
    "a sensor's run keeps draining new changes until the queue has had nothing ready this long",
    parse=_non_negative_float,
    expected="a number of seconds",
)
RUN_MAX_SECONDS = Setting(
    "run_max_seconds",
    "PROGRESS_RUN_MAX_SECONDS",
    120.0,
    "a sensor's run claims nothing new after draining this long (the sensor starts the next)",
    parse=_non_negative_float,
    expected="a number of seconds",
)
DAGSTER_EXECUTOR = Setting(
    "dagster_executor",
    "PROGRESS_DAGSTER_EXECUTOR",
    "default",
    "executor of both jobs: default (in process), celery or k8s (docs/scaling-out.md)",
)
QUEUE_STALE_SECONDS = Setting(
    "queue_stale_seconds",
    "PROGRESS_QUEUE_STALE_SECONDS",
    1800.0,
    "the queue_not_stale check fails past this age",
    parse=_non_negative_float,
    expected="a number of seconds",
)
FRESHNESS_TARGET_SECONDS = Setting(
    "freshness_target_seconds",
    "PROGRESS_FRESHNESS_TARGET_SECONDS",
    30.0,
    "latency aimed at from a change's commit to its refresh; the read models' freshness policy follows it",
    parse=_positive_float,
    expected="a positive number of seconds",
)
OBSERVATION_INTERVAL_SECONDS = Setting(
    "observation_interval_seconds",
    "PROGRESS_OBSERVATION_INTERVAL_SECONDS",
    10,
    "how often outside_refresh_sensor reports refreshes made outside Dagster",
    parse=_positive_int,
    expected="a positive integer",
)
TEST_DATABASE_URL = Setting(
    "test_database_url",
    "PROGRESS_TEST_DATABASE_URL",
    None,
    "server the tests create their databases on; unset: the embedded server",
    secret=True,
)
TEST_POSTGRES_BIN = Setting(
    "test_postgres_bin",
    "PROGRESS_TEST_POSTGRES_BIN",
    None,
    "run the tests on these PostgreSQL binaries instead",
    parse=Path,
    expected="a folder",
)

SETTINGS: tuple[Setting, ...] = (
    DATABASE_URL,
    STATE_DIR,
    DAGSTER_PG_URL,
    BATCH_SIZE,
    LEASE_SECONDS,
    MAX_ATTEMPTS,
    RETRY_BACKOFF_SECONDS,
    STORAGE_STRATEGY,
    LOCK_TIMEOUT,
    STATEMENT_TIMEOUT,
    SENSOR_INTERVAL_SECONDS,
    SENSOR_MIN_DEPTH,
    SENSOR_MAX_AGE_SECONDS,
    REFRESH_WORKERS,
    RUN_IDLE_SECONDS,
    RUN_MAX_SECONDS,
    DAGSTER_EXECUTOR,
    QUEUE_STALE_SECONDS,
    FRESHNESS_TARGET_SECONDS,
    OBSERVATION_INTERVAL_SECONDS,
    TEST_DATABASE_URL,
    TEST_POSTGRES_BIN,
)

# What the migrations write into progress_refresh_settings (tests/test_settings.py keeps them equal).
DATABASE_DEFAULTS = {s.database_key: s.default for s in SETTINGS if s.database_key}


def from_env(setting: Setting) -> Any | None:
    """The setting's value from the environment, None when unset or empty; one clear
    line (never the value of a secret) when it does not parse."""
    if setting.env is None:
        return None
    raw = os.environ.get(setting.env, "").strip()
    if not raw:
        return None
    try:
        return setting.parse(raw)
    except ValueError:
        shown = "" if setting.secret else f", got {raw!r}"
        raise ProgressError(f"{setting.env} must be {setting.expected}{shown}") from None


def resolve(setting: Setting, database: dict[str, str] | None = None) -> Effective:
    """The effective value and its source; database: the rows of progress_refresh_settings, when read."""
    env_value = from_env(setting)
    if env_value is not None:
        return Effective(setting, env_value, f"{ENV} {setting.env}")
    if setting.database_key and database and setting.database_key in database:
        raw = database[setting.database_key]
        try:
            return Effective(setting, setting.parse(raw), f"{DATABASE} progress_refresh_settings")
        except ValueError:
            raise ProgressError(
                f"progress_refresh_settings.{setting.database_key} must be {setting.expected}, got {raw!r}"
            ) from None
    return Effective(setting, setting.default, DEFAULT)


def value(setting: Setting, database: dict[str, str] | None = None) -> Any:
    return resolve(setting, database).value


def effective(database: dict[str, str] | None = None) -> list[Effective]:
    return [resolve(setting, database) for setting in SETTINGS]


def state_dir() -> Path:
    """The folder (ignored by git) holding the embedded server's data and Dagster's home."""
    return Path(value(STATE_DIR))


def configured_database_url() -> str | None:
    """PROGRESS_DATABASE_URL, or None: use the embedded server."""
    return from_env(DATABASE_URL)
