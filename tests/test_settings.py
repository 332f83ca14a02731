"""One configuration: every setting from one module, one batch size for SQL and
Python drains, and `progress-refresh config` saying where each value comes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration import settings
from orchestration.db import gateway
from orchestration.refresh import RefreshPolicy, drain_queue

CONSOLE_SCRIPT = Path(sys.executable).parent / "progress-refresh"


def queue_text_versions(db, count: int) -> None:
    db.execute("INSERT INTO language_entities (id, name) VALUES (gen_random_uuid(), 'L')")
    db.execute(
        "INSERT INTO text_versions (language_entity_id, name) SELECT id, 'T' || n FROM language_entities,"
        " generate_series(1, %s) n",
        [count],
    )


def run_config(dsn: str, **env: str) -> dict[str, dict]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}
    environment.update(PROGRESS_DATABASE_URL=dsn, **env)
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "config", "--json"], capture_output=True, text=True, env=environment, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return {row["setting"]: row for row in json.loads(result.stdout)}


def test_database_defaults_are_what_migrate_writes(db) -> None:
    stored = gateway.settings(db)
    assert {key: stored[key] for key in settings.DATABASE_DEFAULTS} == {
        key: str(value) for key, value in settings.DATABASE_DEFAULTS.items()
    }


def test_python_and_sql_drains_claim_the_same_batch_size(db, monkeypatch) -> None:
    monkeypatch.delenv("PROGRESS_BATCH_SIZE", raising=False)
    db.execute("UPDATE progress_refresh_settings SET value = '2' WHERE key = 'drain_batch_size'")
    queue_text_versions(db, 5)
    report = drain_queue(db)
    assert (len(report.refreshed), report.batches) == (5, 3)  # 2 + 2 + 1
    queue_text_versions(db, 3)
    assert len(gateway.drain_sql_batch(db)) == 2


def test_environment_overrides_the_database_for_python_drains(db, monkeypatch) -> None:
    monkeypatch.setenv("PROGRESS_BATCH_SIZE", "4")
    monkeypatch.setenv("PROGRESS_LEASE_SECONDS", "60")
    policy = RefreshPolicy.from_env(db)
    assert (policy.batch_size, policy.lease_seconds) == (4, 60.0)


def test_config_names_the_source_of_each_value(dsn: str) -> None:
    from orchestration.db.connection import connect

    with connect(dsn) as conn:
        conn.execute("UPDATE progress_refresh_settings SET value = '5' WHERE key = 'max_attempts'")
    shown = run_config(dsn, PROGRESS_SENSOR_MIN_DEPTH="7")
    assert {name: (row["value"], row["source"]) for name, row in shown.items()}.items() >= {
        "sensor_min_depth": ("7", "environment PROGRESS_SENSOR_MIN_DEPTH"),
        "max_attempts": ("5", "database progress_refresh_settings"),
        "batch_size": ("25", "database progress_refresh_settings"),
        "sensor_interval_seconds": ("5", "default"),
    }.items()
    assert set(shown) == {s.name for s in settings.SETTINGS}


@pytest.mark.parametrize(
    "command, variable, value",
    [
        ("refresh", "PROGRESS_BATCH_SIZE", "zero"),
        ("config", "PROGRESS_SENSOR_MAX_AGE_SECONDS", "-1"),
        ("config", "PROGRESS_SENSOR_MAX_AGE_SECONDS", "nan"),
        ("config", "PROGRESS_QUEUE_STALE_SECONDS", "inf"),
        ("refresh", "PROGRESS_LOCK_TIMEOUT", "forever"),
        ("config", "PROGRESS_STATEMENT_TIMEOUT", "-5s"),
        ("refresh", "PROGRESS_STATEMENT_TIMEOUT", "5 minutes"),
        ("refresh", "PROGRESS_LOCK_TIMEOUT", "30d"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(dsn: str, command: str, variable: str, value: str) -> None:
    environment = dict(os.environ, PROGRESS_DATABASE_URL=dsn, **{variable: value})
    result = subprocess.run([str(CONSOLE_SCRIPT), command], capture_output=True, text=True, env=environment, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {variable} must be {_expected(variable)}, got {value!r}"]


def _expected(variable: str) -> str:
    return next(s.expected for s in settings.SETTINGS if s.env == variable)


@pytest.mark.parametrize("value", ["5s", "500ms", "1.5s", "2min", "250", "0", "1 h", "90us", "24d"])
def test_a_timeout_accepted_here_is_accepted_by_postgresql(db, value: str) -> None:
    parsed = settings.LOCK_TIMEOUT.parse(value)
    db.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)", [parsed] * 2)
