"""The set-ups past one machine, as far as they can run here: the code location
loads with the Celery or the Kubernetes executor and accepts their run config,
and the Kubernetes run launcher's instance config is valid. Running steps on a
Celery broker or a Kubernetes cluster needs those services, which tests do not
have; docs/scaling-out.md says how to run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dagster._core.instance.config import dagster_instance_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"

# Loads the code location in a fresh interpreter (the executor is chosen at import)
# and validates the example run config against both jobs.
PROBE = """
import json, sys, yaml
import dagster as dg
from orchestration.definitions import defs
run_config = yaml.safe_load(open(sys.argv[1]))
out = {}
for name in ("refresh_queued_versions", "full_backfill"):
    job = defs.resolve_job_def(name)
    resolved = dg.validate_run_config(job, run_config)
    (config,) = resolved["execution"].values()
    out[name] = {"executor": job.executor_def.name, "config": config}
print(json.dumps(out))
"""


def load_with(executor: str, run_config: Path) -> dict:
    env = {**os.environ, "PROGRESS_DAGSTER_EXECUTOR": executor}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(run_config)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_jobs_run_on_celery_workers_with_the_documented_run_config():
    jobs = load_with("celery", EXAMPLES / "celery_run_config.yaml")
    for job in jobs.values():
        assert job["executor"] == "celery"
        assert job["config"]["broker"] == "pyamqp://guest@rabbitmq:5672//"


def test_jobs_run_as_kubernetes_jobs_with_the_documented_run_config():
    jobs = load_with("k8s", EXAMPLES / "k8s_run_config.yaml")
    for job in jobs.values():
        assert job["executor"] == "k8s"
        assert job["config"]["job_namespace"] == "progress"


def test_default_executor_still_runs_in_process():
    jobs = load_with("default", EXAMPLES / "multiprocess_run_config.yaml")
    assert jobs["refresh_queued_versions"]["executor"] == "multi_or_in_process_executor"


def test_an_unknown_executor_is_one_clear_line():
    env = {**os.environ, "PROGRESS_DAGSTER_EXECUTOR": "spark"}
    result = subprocess.run(
        [sys.executable, "-c", "import orchestration.definitions"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode != 0
    assert "unknown $PROGRESS_DAGSTER_EXECUTOR 'spark': expected one of default, celery, k8s" in result.stderr


def test_kubernetes_run_launcher_instance_config_is_valid(tmp_path):
    (tmp_path / "dagster.yaml").write_text((EXAMPLES / "dagster-k8s.yaml").read_text())
    config, _ = dagster_instance_config(str(tmp_path))
    launcher = config["run_launcher"]
    assert launcher["class"] == "K8sRunLauncher"
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher

    assert process_config(K8sRunLauncher.config_type(), launcher["config"]).success
