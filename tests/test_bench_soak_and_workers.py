"""The soak and workers benchmarks, as far as they are cheap: the soak's report
from recorded phases (the soak itself runs `dagster dev` for minutes and stays
out of the suite), and the workers benchmark end to end at size XS."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from bench.soak import Change, Phase, plot, render, summarize

ROOT = Path(__file__).resolve().parents[1]


def recorded_phase() -> Phase:
    phase = Phase(rate=5.0, started=1000.0, ended=1060.0, settled=1070.0)
    version = uuid.uuid4()
    # 20 changes visible after 1..20 s, and one never visible.
    for i in range(20):
        phase.changes.append(Change("text", version, i + 1, committed=1000.0 + i, visible=1000.0 + i + (i + 1)))
    phase.changes.append(Change("audio", version, 99, committed=1059.0))
    phase.depth = [(1000.0 + t, d) for t, d in ((0, 0), (1, 4), (2, 9), (3, 2))]
    phase.function_ms = {"progress_claim_batch": 10.0, "progress_refresh_claimed": 400.0, "progress_finish": 10.0}
    return phase


def run(created: float, trigger: str | None = "oldest age 0s >= 0s", sensor: bool = True) -> dict:
    tags = {"progress/trigger": trigger} if trigger else {}
    if sensor:
        tags["dagster/sensor_name"] = "refresh_queue_sensor"
    return {"runId": f"r{created}", "status": "SUCCESS", "creationTime": created, "startTime": created + 6,
            "endTime": created + 30, "tags": tags}  # fmt: skip


def test_soak_summary_reports_lag_percentiles_lost_changes_depth_runs_and_database_time():
    runs = [run(990.0), run(1001.0), run(1065.0), run(1071.0), run(1002.0, trigger=None, sensor=False)]
    summary = summarize(recorded_phase(), runs)
    assert summary["changes"] == 21
    assert summary["lost"] == 1
    lag = summary["lag_seconds"]
    assert (lag["p50"], lag["p95"], lag["max"]) == (11.0, 19.0, 20.0)
    assert summary["queue_depth"]["max"] == 9
    # Runs created during the phase (writes and settling), not before or after.
    assert summary["runs_started"] == 2
    assert [r["by"] for r in summary["runs"]] == ["refresh_queue_sensor", "refresh_queue_sensor"]
    assert summary["database_ms_per_change"] == 20.0  # 420 ms over 21 changes


def test_soak_writes_a_table_and_a_chart(tmp_path):
    result = {"phases": [summarize(recorded_phase(), [run(1001.0)])]}
    table = render(result)
    assert "| 5/s | 60 s | 21 | 1 | 11.0 s | 19.0 s | 20.0 s | 9 | 1 | 20.0 ms |" in table
    plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:4] == b"\x89PNG"


def test_soak_rejects_bad_flags_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "bench", "soak", "--rates", "fast"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert "--rates takes comma-separated numbers" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_benchmark_prints_one_and_two_workers_side_by_side(tmp_path, server_dsn):
    command = [sys.executable, "-m", "bench", "workers", "--size", "XS", "--versions", "8", "--repeat", "1"]
    result = subprocess.run(
        [*command, "--dsn", server_dsn, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| workers | median | versions/s | vs 1 worker |" in result.stdout
    saved = json.loads((tmp_path / "workers.json").read_text())
    assert [d["workers"] for d in saved["drains"]] == [1, 2]
    assert all(len(d["seconds"]) == 1 for d in saved["drains"])
    assert saved["versions"] == 8
