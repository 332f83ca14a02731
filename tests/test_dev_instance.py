"""The Dagster instance configuration `progress-refresh dev` renders."""

from __future__ import annotations

import yaml
from dagster._core.instance.config import dagster_instance_config

from orchestration.dagster_dev import render_instance_config


def rendered(tmp_path, monkeypatch, workers: str | None) -> dict:
    if workers is None:
        monkeypatch.delenv("PROGRESS_REFRESH_WORKERS", raising=False)
    else:
        monkeypatch.setenv("PROGRESS_REFRESH_WORKERS", workers)
    home = tmp_path / f"home_{workers}"
    render_instance_config(home, with_postgres_storage=False)
    config, _ = dagster_instance_config(str(home))  # validates it as Dagster would at start
    return config


def test_pool_and_refresh_run_limits_follow_the_number_of_workers(tmp_path, monkeypatch):
    for workers, expected in ((None, 2), ("1", 1), ("4", 4)):
        config = rendered(tmp_path, monkeypatch, workers)
        assert config["concurrency"]["pools"]["default_limit"] == expected
        limits = {limit["key"]: limit["limit"] for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]}
        assert limits == {"progress/refresh": expected}


def test_runs_are_dequeued_every_second(tmp_path, monkeypatch):
    config = rendered(tmp_path, monkeypatch, None)
    assert config["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1
    assert "$" not in yaml.safe_dump(config)
