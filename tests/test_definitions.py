"""The code location a user sees: assets, lineage, jobs, schedules, sensor, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import yaml

from orchestration.assets import BASE_TABLES, REFRESH_POOL
from orchestration.automation import CONCURRENCY_TAG, SENSOR_INTERVAL_ENV
from orchestration.definitions import defs
from orchestration.read_models import READ_MODELS

READ_MODEL_NAMES = {model.name for model in READ_MODELS}


@pytest.fixture(scope="module")
def graph():
    return defs.resolve_asset_graph()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_exactly_the_ten_read_models_are_materialisable_assets(graph):
    materialisable = {key.to_user_string() for key in graph.materializable_asset_keys}
    assert materialisable == READ_MODEL_NAMES
    assert len(materialisable) == 10


def test_read_models_have_their_group_kind_and_description(graph):
    for model in READ_MODELS:
        node = graph.get(dg.AssetKey(model.name))
        assert node.group_name == f"{model.kind}_progress"
        assert node.kinds == {"postgres"}
        assert node.description == model.description


def test_read_model_lineage_is_verse_chapter_book_summary_best(graph):
    for kind in ("audio", "text"):

        def parents(name: str) -> set[str]:
            keys = graph.get(dg.AssetKey(name)).parent_keys
            return {k.to_user_string() for k in keys if k.to_user_string() in READ_MODEL_NAMES}

        assert parents(f"mv_{kind}_verse_coverage") == set()
        assert parents(f"mv_{kind}_chapter_coverage") == {f"mv_{kind}_verse_coverage"}
        assert parents(f"mv_{kind}_book_coverage") == {f"mv_{kind}_chapter_coverage"}
        assert parents(f"mv_{kind}_version_progress_summary") == {
            f"mv_{kind}_verse_coverage",
            f"mv_{kind}_chapter_coverage",
            f"mv_{kind}_book_coverage",
        }
        assert parents(f"language_entity_best_{kind}_version") == {f"mv_{kind}_version_progress_summary"}


def test_base_tables_are_external_assets_upstream(graph):
    assert len(BASE_TABLES) == 10
    for name in BASE_TABLES:
        node = graph.get(dg.AssetKey(name))
        assert node.is_external and not node.is_materializable
        assert node.group_name == "base_tables"
        assert node.kinds == {"postgres"}
    audio_verse = {k.to_user_string() for k in graph.get(dg.AssetKey("mv_audio_verse_coverage")).parent_keys}
    assert {"media_files", "media_files_verses", "audio_versions", "verses"} <= audio_verse
    text_verse = {k.to_user_string() for k in graph.get(dg.AssetKey("mv_text_verse_coverage")).parent_keys}
    assert {"verse_texts", "text_versions", "verses"} <= text_verse
    best = {k.to_user_string() for k in graph.get(dg.AssetKey("language_entity_best_audio_version")).parent_keys}
    assert "language_entities" in best


def test_read_models_are_one_subsettable_step_in_the_refresh_pool(graph):
    """One step, so a run that keeps draining never keeps the other kind waiting."""
    steps = {graph.assets_def_for_key(dg.AssetKey(model.name)) for model in READ_MODELS}
    assert len(steps) == 1
    (step,) = steps
    assert step.node_def.name == "refresh_progress"
    assert step.can_subset
    assert step.node_def.pool == REFRESH_POOL


def test_jobs_carry_the_tag_the_instance_limits(tmp_path):
    from orchestration.dagster_dev import render_instance_config

    instance = yaml.safe_load(render_instance_config(tmp_path).read_text())
    limits = {limit["key"]: limit["limit"] for limit in instance["concurrency"]["runs"]["tag_concurrency_limits"]}
    for name in ("refresh_queued_versions", "full_backfill"):
        job = defs.resolve_job_def(name)
        assert job.tags[CONCURRENCY_TAG] == "database"
        assert limits[CONCURRENCY_TAG] >= 1  # the tag names a limit the shipped instance sets
        selected = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
        assert selected == READ_MODEL_NAMES
    assert (
        "refreshes only the versions those changes queued"
        in defs.resolve_job_def("refresh_queued_versions").description
    )
    assert "Queues every version and drains the queue in batches" in defs.resolve_job_def("full_backfill").description


@pytest.mark.parametrize(
    "name, cron, job, description",
    [
        (
            "refresh_queued_every_15_minutes",
            "*/15 * * * *",
            "refresh_queued_versions",
            "Drains the queue every 15 minutes whatever the sensor thresholds say.",
        ),
        (
            "full_backfill_nightly",
            "0 3 * * *",
            "full_backfill",
            "Rebuilds every version nightly at 03:00 UTC, in batches.",
        ),
    ],
)
def test_schedules(name, cron, job, description):
    schedule = defs.resolve_schedule_def(name)
    assert schedule.cron_schedule == cron
    assert schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == job
    assert schedule.description == description


def sensor_seen_with(environment: dict[str, str]) -> dict:
    """The sensor as a fresh code location loads it under this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_SENSOR_")}
    script = (
        "import json; from orchestration.definitions import defs;"
        "s = defs.resolve_sensor_def('refresh_queue_sensor');"
        "print(json.dumps({'interval': s.minimum_interval_seconds, 'description': s.description}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**env, **environment}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sensor():
    sensor = defs.resolve_sensor_def("refresh_queue_sensor")
    assert sensor.job_name == "refresh_queued_versions"
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    default = sensor_seen_with({})
    # The daemon's loop runs at most every 5 s: the shipped interval is that floor.
    assert default["interval"] == 5
    assert "($PROGRESS_SENSOR_MIN_DEPTH, default 25)" in default["description"]
    assert "($PROGRESS_SENSOR_MAX_AGE_SECONDS, default 0s)" in default["description"]
    assert sensor_seen_with({SENSOR_INTERVAL_ENV: "7"})["interval"] == 7


def test_checks(graph):
    checks = {key.to_user_string() for key in graph.asset_check_keys}
    expected = {
        f"{name}:{check}" for name in READ_MODEL_NAMES for check in ("matches_logical_view", "refreshed_versions_match")
    } | {
        "mv_audio_version_progress_summary:queue_not_stale",
        "mv_text_version_progress_summary:queue_not_stale",
    }
    assert checks == expected


def test_the_database_url_reaches_dagster_as_an_env_var_never_as_its_value(monkeypatch):
    from orchestration.resources import postgres_resource

    url = "postgresql://app:s3cret@db.example.com/app"
    monkeypatch.setenv("PROGRESS_DATABASE_URL", url)
    resource = postgres_resource()
    # What the Dagster UI shows as the resource's configuration: the variable's name.
    assert resource._get_non_default_public_field_values() == {"database_url": "PROGRESS_DATABASE_URL"}
    assert resource.process_config_and_initialize().dsn() == url


def test_without_a_database_url_the_resource_uses_the_embedded_server(monkeypatch):
    from orchestration.resources import postgres_resource

    monkeypatch.delenv("PROGRESS_DATABASE_URL", raising=False)
    assert postgres_resource().database_url is None


def test_refresh_steps_retry_with_exponential_backoff_and_jitter():
    for name in ("refresh_queued_versions", "full_backfill"):
        policy = defs.resolve_job_def(name).op_retry_policy
        assert policy is not None and policy.max_retries >= 2
        assert policy.backoff == dg.Backoff.EXPONENTIAL
        assert policy.jitter == dg.Jitter.PLUS_MINUS


def test_additive_counts_are_split_from_the_definition_or_refused(tmp_path):
    from orchestration.errors import ProgressError
    from orchestration.read_models import parse_read_model

    header = (
        "-- Counts.\n--\n-- kind: text\n-- level: summary\n-- logical view: v\n-- key: text_version_id\n"
        "-- upstreams: -\n-- base tables: text_versions\n-- additive counts: counts\n"
    )
    good = tmp_path / "mv_v.sql"
    good.write_text(
        header + "WITH counts AS (SELECT id AS text_version_id, count(*) AS n FROM text_versions"
        " WHERE name <> ')' GROUP BY id)\nSELECT text_version_id, n, n / 2 AS half FROM counts\n"
    )
    model = parse_read_model(good)
    assert model.counts_sql == (
        "SELECT id AS text_version_id, count(*) AS n FROM text_versions WHERE name <> ')' GROUP BY id"
    )
    assert model.rows_sql == "WITH counts AS (<counts>) SELECT text_version_id, n, n / 2 AS half FROM counts"

    bad = tmp_path / "mv_bad.sql"
    bad.write_text(header + "SELECT id AS text_version_id FROM text_versions\n")
    with pytest.raises(ProgressError, match=r"mv_bad.sql: its SQL must begin with WITH counts AS"):
        parse_read_model(bad)
