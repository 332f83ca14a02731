"""Smoke test of the benchmark (bench/): the whole pipeline (generate, clone,
install both strategies, every measurement, report) at size XS (every
coverage style, 4 + 4 versions) with one repetition, against the test server;
about half a minute on 2 cores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from psycopg.conninfo import make_conninfo

from bench import data
from orchestration.db.connection import connect
from orchestration.db.migrations import migrate
from orchestration.read_models import READ_MODELS

ROOT = Path(__file__).resolve().parents[1]

METRICS = {
    "refresh_first_in_session",
    "refresh_1_audio_chapter",
    "refresh_1_audio_range",
    "refresh_1_audio_mapping",
    "refresh_1_text",
    "refresh_1_text_verse",
    "refresh_1_audio_whole",
    "refresh_10_mixed",
    "full_rebuild",
    "full_rebuild_vs_concurrently",
    "concurrent_rebuild",
    "full_rebuild_wal",
    "capture_bulk_insert",
    "capture_single_inserts",
    "unchanged_time",
    "unchanged_rows",
    "unchanged_wal",
    "one_chapter_time",
    "one_chapter_rows",
    "one_chapter_wal",
    "read_summary_audio",
    "read_summary_text",
    "read_chapters_audio",
    "read_chapters_text",
}


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench …` in the repository; it succeeds without a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    return result


def test_benchmark_smoke(server_dsn: str, tmp_path: Path) -> None:
    result = run_bench(
        "--sizes",
        "XS",
        "--repeat",
        "1",
        "--lookups",
        "10",
        "--dsn",
        server_dsn,
        # Another DSN of the same server: the run takes it for the baseline's
        # own server, as it does a second embedded server by default.
        "--baseline-dsn",
        make_conninfo(server_dsn, application_name="progress-bench-baseline"),
        "--out",
        str(tmp_path),
    )
    # Progress lines on stderr, the Markdown table on stdout.
    assert "refresh after changed versions" in result.stderr
    assert "| measurement | baseline | ours | ours / baseline |" in result.stdout

    # The data was generated on each server, and the same seed made the same rows.
    assert "bench_" in result.stderr and "_xs_baseline_template on the baseline's server" in result.stderr

    results = json.loads((tmp_path / "results.json").read_text())
    assert {"meta", "sizes", "targets"} <= set(results)
    assert results["meta"]["baseline_server"]["server_version"] == results["meta"]["server"]["server_version"]
    assert results["meta"]["repeat"] == 1
    size = results["sizes"]["XS"]
    assert {"audio_versions", "text_versions", "verse_texts", "read_model_rows"} <= set(size["data"])
    assert size["data"]["audio_versions"] == 4 and size["data"]["text_versions"] == 4
    assert set(size["metrics"]) == METRICS
    for metric_id, metric in size["metrics"].items():
        assert {"label", "unit", "baseline", "ours", "ratio"} <= set(metric), metric_id
        assert metric["baseline"]["samples"] and metric["ours"]["samples"], metric_id
        assert metric["baseline"]["median"] is not None and metric["ours"]["median"] is not None, metric_id
    # A refresh of an unchanged version writes no read-model rows.
    assert size["metrics"]["unchanged_rows"]["ours"]["median"] == 0
    # Every drain refreshed exactly the changed versions.
    for metric_id in (
        "refresh_first_in_session",
        "refresh_1_audio_chapter",
        "refresh_1_audio_range",
        "refresh_1_audio_mapping",
        "refresh_1_text",
        "refresh_10_mixed",
    ):
        assert not size["metrics"][metric_id]["note"], size["metrics"][metric_id]["note"]
    # After those drains, every read model of ours equals its logical view.
    mismatching = size["data"]["mismatching_rows"]
    assert set(mismatching) == {m.name for m in READ_MODELS}
    assert not any(mismatching.values()), mismatching
    assert all({"id", "target", "measured", "met"} <= set(t) for t in results["targets"])

    markdown = (tmp_path / "results.md").read_text()
    assert "## Size XS" in markdown and "## Targets" in markdown
    assert "Each strategy on a server of its own" in markdown
    assert "every read model of ours equalled its logical view" in markdown
    assert (tmp_path / "refresh_vs_versions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Every database the run created is gone.
    prefix = re.search(r"in (bench_\d+_)xs_template", result.stderr)
    assert prefix is not None, result.stderr
    with connect(server_dsn) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix.group(1)]
        ).fetchall()
    assert left == []


def test_generated_data_fingerprint_tells_seeds_apart(dsn: str, empty_dsn: str) -> None:
    """The check that makes a two-server run comparable (the same seed made the
    same rows on both) would catch data that differs."""
    fingerprints = []
    for url, seed in ((dsn, 0.42), (empty_dsn, 0.43)):
        with connect(url) as conn:
            migrate(conn, strategy="table")
            data.generate(conn, data.SIZES["S"], seed=seed, log=lambda _message: None)
            fingerprints.append(data.fingerprint(conn))
    assert all(part is not None for part in fingerprints[0])
    assert fingerprints[0] != fingerprints[1]


def test_drain_profile_times_every_step_of_a_chapter_drain(server_dsn: str, tmp_path: Path) -> None:
    """`python -m bench profile`: every level's statement timed, warm and first
    of a session, the steps within the drain; its database is dropped."""
    result = run_bench(
        "profile",
        "--size",
        "XS",
        "--scenario",
        "audio_chapter",
        "--repeat",
        "5",
        "--sessions",
        "2",
        "--dsn",
        server_dsn,
        "--out",
        str(tmp_path),
    )
    profile = json.loads((tmp_path / "profile_xs_audio_chapter.json").read_text())
    statements = [row["statement"] for row in profile["steps"]]
    # The chapter refresh's difference statements, each level's, in order.
    written = [s.split(":")[0] for s in statements if s.startswith("writes mv_audio_")]
    assert written == [
        "writes mv_audio_verse_coverage",
        "writes mv_audio_chapter_coverage",
        "writes mv_audio_book_coverage",
        "writes mv_audio_version_progress_summary",
    ]
    # Each step and the rest of the drain (the last row) take time; the steps
    # happen within the drain (medians: roughly, not exactly, its parts).
    for regime in ("warm", "first"):
        steps = [row[regime] for row in profile["steps"] if row[regime] is not None]
        assert len(steps) > 10 and all(ms >= 0 for ms in steps), regime
        assert profile["steps"][-1]["statement"] == "outside the statements"
        assert 0 < sum(steps[:-1]) < 2 * profile["drain_ms"][regime], regime
    # A new session plans every statement: its drain is the slower one.
    assert profile["drain_ms"]["first"] > profile["drain_ms"]["warm"]
    assert "| function | statement | warm | first of session |" in result.stdout

    with connect(server_dsn) as admin:
        left = admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench%profile'").fetchall()
    assert left == []
