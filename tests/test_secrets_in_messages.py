"""No path prints a password: hostile database URLs through the command a user
runs, through the exception connect() raises, and through `config`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestration.db.connection import connect
from orchestration.db.dsn import UNPARSEABLE, mask_dsn
from orchestration.errors import ProgressError

CONSOLE_SCRIPT = Path(sys.executable).parent / "progress-refresh"

# (URL, fragments of the secret that must never be shown). Port 1 refuses at once.
HOSTILE_URLS = [
    ("postgresql://alice:Top Secret99@127.0.0.1:1/prod", ["Top Secret99", "Secret99"]),
    ("mysql://alice:S3cretMy@127.0.0.1/prod", ["S3cretMy"]),
    ("postgresql://alice:Sec@ret#99@127.0.0.1:1/prod", ["Sec@ret", "ret#99"]),
    ("postgresql://alice:Hash#Secret9@127.0.0.1:1/prod", ["Hash#", "Secret9"]),
    ("postgresql://alice:Sla/sh9Secret@127.0.0.1:1/prod", ["Sla/", "sh9Secret"]),
    ("postgresql://alice:pa%zzword9@127.0.0.1:1/prod", ["pa%zz", "zzword9"]),
    ('postgresql://alice:"Quo\'ted"pw9@127.0.0.1:1/prod', ["Quo'ted", 'ted"pw9']),
    ("postgresql://alice:Pässwörd9@127.0.0.1:1/prod", ["Pässwörd9", "sswörd9"]),
    ("postgresql://al@ice:UserAt9@127.0.0.1:1/prod", ["UserAt9"]),
    ("postgresql://alice:NoAtSecret9/prod", ["NoAtSecret9"]),
    ("host=127.0.0.1 port=1 user=alice password=KvSecret9 dbname=prod", ["KvSecret9"]),
    ("host=127.0.0.1 port=1 user=alice password='Kv Spaced9' dbname=prod", ["Kv Spaced9", "Spaced9"]),
    ("host=127.0.0.1 port=1 password=Two Words9 dbname=prod", ["Words9"]),
    ("host=127.0.0.1 port=1 password='Unterminated9", ["Unterminated9"]),
    ("host=127.0.0.1 port=1 pasword=TypoSecret9", ["TypoSecret9"]),
    ("postgresql://alice@127.0.0.1:1/prod?password=QuerySecret9", ["QuerySecret9"]),
    ("postgresql://127.0.0.1:1/prod?password=Query Spaced9&Tail9", ["Spaced9", "Tail9"]),
    ("postgresql://127.0.0.1:1/prod?pass%77ord=Encoded9", ["Encoded9"]),
    ("mysql://127.0.0.1/prod?password=MyQuery9", ["MyQuery9"]),
]


def run_status(url: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PROGRESS_DATABASE_URL=url)
    return subprocess.run([str(CONSOLE_SCRIPT), "status"], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("url, secrets", HOSTILE_URLS, ids=[url for url, _ in HOSTILE_URLS])
def test_status_never_prints_the_password(url: str, secrets: list[str]) -> None:
    result = run_status(url)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for secret in secrets:
        assert secret not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize("url, secrets", HOSTILE_URLS, ids=[url for url, _ in HOSTILE_URLS])
def test_connection_error_never_holds_the_password(url: str, secrets: list[str]) -> None:
    with pytest.raises(ProgressError) as raised:
        connect(url)
    for secret in secrets:
        assert secret not in str(raised.value)
        assert secret not in mask_dsn(url)


def test_config_never_prints_the_password() -> None:
    env = dict(os.environ, PROGRESS_DATABASE_URL="postgresql://alice:Sec@ret#99@127.0.0.1:1/prod")
    for args in (["config"], ["config", "--json"]):
        result = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)
        # Nothing listens on port 1: the settings are shown, the database's
        # values cannot be, and the exit status says so.
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("note: values kept in the database are shown as their defaults:")
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Sec@ret" not in result.stdout + result.stderr and "ret#99" not in result.stdout + result.stderr
    shown = {row["setting"]: row for row in json.loads(result.stdout)}["database_url"]
    assert shown["value"] == "postgresql://alice:***@127.0.0.1:1/prod"
    assert shown["source"] == "environment PROGRESS_DATABASE_URL"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://alice:Sec@ret#99@db.example.com:6543/prod", "postgresql://alice:***@db.example.com:6543/prod"),
        (
            "postgresql://alice@db.example.com/prod?sslmode=require",
            "postgresql://alice@db.example.com/prod?sslmode=require",
        ),
        ("postgresql://h1:5432,h2:5433/db?password=x&sslmode=require", "postgresql://h1:5432,h2:5433/db?password=***"),
        ("postgresql://postgres:@/postgres?host=/srv/pgdata", "postgresql://postgres@/postgres?host=/srv/pgdata"),
        ("postgresql://a:b@[::1]:5432/db", "postgresql://a:***@[::1]:5432/db"),
        ("host=db user=alice password='a b' dbname=prod", "host=db user=alice password=*** dbname=prod"),
        ("postgresql://alice:pw@127.0.0.1:notaport/prod", "postgresql://***@127.0.0.1/***"),
        ("postgresql://a:b@h/db?application_name=x@y", UNPARSEABLE),
        ("this is not a url", UNPARSEABLE),
    ],
)
def test_masked_url_keeps_what_helps_and_nothing_else(url: str, shown: str) -> None:
    assert mask_dsn(url) == shown


def test_bad_url_says_what_is_wrong_and_how_to_encode() -> None:
    line = run_status("postgresql://alice:Top Secret99@127.0.0.1:1/prod").stderr.strip()
    assert line.startswith("error: invalid database URL postgresql://alice:***@127.0.0.1:1/prod: a space")
    assert "percent-encode '@', '#', '%'" in line and "%40" in line
    line = run_status("mysql://alice:S3cretMy@127.0.0.1/prod").stderr.strip()
    assert "the scheme must be postgresql:// or postgres://, not mysql://" in line
    line = run_status("postgresql://alice:Sec@ret#99@127.0.0.1:1/prod").stderr.strip()
    assert "percent-encode" in line, "a password holding '@' gets the hint"


def test_a_user_without_a_password_is_shown_as_given() -> None:
    """Nothing secret in the URL: the message names it whole, scheme and user
    unmangled (the user "postgres" is not masked inside "postgresql")."""
    result = run_status("postgresql://postgres@127.0.0.1:1/prod")
    assert result.returncode == 2, result
    assert "postgresql://postgres@127.0.0.1:1/prod" in result.stderr, result.stderr
