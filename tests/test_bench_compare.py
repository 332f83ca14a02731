"""`python -m bench compare`: this checkout's drains side by side with another
commit's, end to end at size XS against HEAD (a database HEAD migrated,
upgraded by the working tree), and its one-line answer to a commit that does
not exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from orchestration.db.connection import connect

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "bench", "compare"]


def test_compare_rejects_an_unknown_commit_in_one_line(server_dsn, tmp_path):
    result = subprocess.run(
        [*COMMAND, "--against", "no-such-commit", "--dsn", server_dsn, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown commit 'no-such-commit': give a commit, tag or branch of this repository"
    ]
    assert not (tmp_path / "compare.json").exists()


def test_compare_times_both_sides_drains_and_writes_and_drops_its_databases(server_dsn, tmp_path):
    options = ["--against", "HEAD", "--size", "XS", "--baseline-size", "XS", "--repeat", "2"]
    scenarios = ["--scenarios", "audio_chapter,text_verse,capture_single"]
    result = subprocess.run(
        [*COMMAND, *options, *scenarios, "--dsn", server_dsn, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    against = head.stdout.strip()
    assert f"| change | {against} | ours | ours / {against} |" in result.stdout
    assert "| 1,000 single-row verse_texts INSERTs, capture triggers |" in result.stdout
    assert "| 1,000 single-row verse_texts INSERTs, no triggers |" in result.stdout

    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["against"] == against and saved["size"] == "XS"
    assert [s["scenario"] for s in saved["scenarios"]] == [
        "audio_chapter",
        "text_verse",
        "capture_single",
        "capture_single_no_triggers",
    ]
    for scenario in saved["scenarios"]:
        assert {len(v) for v in scenario["samples_ms"].values()} == {2}
        assert scenario["against_ms"] > 0 and scenario["ours_ms"] > 0

    # Every database the run created is gone.
    prefix = re.search(r"in (bench_\d+_)xs_template", result.stderr)
    assert prefix is not None, result.stderr
    with connect(server_dsn) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix.group(1)]
        ).fetchall()
    assert left == []
