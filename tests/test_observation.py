"""Refreshes outside Dagster and writes to the base tables, reported by
outside_refresh_sensor, evaluated against a real database."""

from __future__ import annotations

import uuid
from dataclasses import replace

import dagster as dg
import psycopg
import pytest
from dagster._core.definitions.observe import observe
from dagster._core.test_utils import create_run_for_test

import builders as b
from orchestration.assets import BASE_TABLES
from orchestration.db.connection import connect
from orchestration.observation import observe_base_tables, outside_refresh_sensor
from orchestration.read_models import of_kind
from orchestration.refresh import RefreshPolicy, drain_queue
from orchestration.resources import PostgresResource

# They read the refresh log up to the server's snapshot horizon (see conftest.Copies).
pytestmark = pytest.mark.quiet_server

TEXT_READ_MODELS = {model.name for model in of_kind("text")}


class Sensor:
    """Ticks of the sensor, each from the cursor the last one left, on one instance."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.instance = dg.DagsterInstance.ephemeral()
        self.cursor: str | None = None

    def tick(self):
        with dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources={"postgres": PostgresResource(database_url=self.dsn)}
        ) as context:
            result = outside_refresh_sensor.evaluate_tick(context)
        self.cursor = result.cursor
        return result


def materialized(result) -> dict[str, dict]:
    return {
        e.asset_key.to_user_string(): e.metadata for e in result.asset_events if isinstance(e, dg.AssetMaterialization)
    }


def observed(result) -> dict[str, dict]:
    return {e.asset_key.to_user_string(): e.metadata for e in result.asset_events if isinstance(e, dg.AssetObservation)}


@pytest.fixture
def text(db: psycopg.Connection) -> uuid.UUID:
    b.bible(db, "kjv", {"Gen": [3, 3]})
    version = b.text_version(db, "kjv", b.language(db, "English"), name="King James text")
    b.verse_texts(db, version, ["kjv-Gen-1-1", "kjv-Gen-1-2"])
    flush_statistics(db)
    return version


def flush_statistics(conn: psycopg.Connection) -> None:
    """Write counters reach other sessions when a session goes idle, at most once a
    second; forced here so the sensor's next tick sees these writes."""
    conn.execute("SELECT pg_stat_force_next_flush()")


def refresh(dsn: str, source: str | None = None) -> None:
    with connect(dsn) as conn:
        policy = RefreshPolicy.from_env()
        drain_queue(conn, policy if source is None else replace(policy, source=source))


def test_first_tick_observes_every_base_table_and_reports_no_earlier_refresh(dsn, text):
    refresh(dsn)  # before the sensor ever looked
    result = Sensor(dsn).tick()
    assert materialized(result) == {}
    tables = observed(result)
    assert set(tables) == set(BASE_TABLES)
    assert tables["verse_texts"]["dagster/row_count"].value == 2
    assert tables["verses"]["dagster/row_count"].value == 6
    assert tables["verse_texts"]["row_count_estimated"].value is False


def test_a_command_line_refresh_is_reported_on_each_read_model_with_source_and_lag(db, dsn, text):
    sensor = Sensor(dsn)
    sensor.tick()
    db.execute(
        "UPDATE progress_refresh_queue SET enqueued_at = now() - interval '40 seconds' WHERE version_id = %s", [text]
    )
    refresh(dsn)

    result = sensor.tick()
    reported = materialized(result)
    assert set(reported) == TEXT_READ_MODELS
    assert "reported 1 text version(s) by cli" in (result.skip_message or "")  # the tick list's line
    summary = reported["mv_text_version_progress_summary"]
    assert summary["source"].value == "cli"
    assert summary["versions"].value == [{"version": "King James text", "language": "English", "id": str(text)}]
    assert summary["lag_seconds_max"].value == pytest.approx(40, abs=3)
    assert summary["rows_written_all_levels"].value > 0
    assert summary["rows_written"].value == 1  # its one row, inserted
    assert reported["mv_text_verse_coverage"]["rows_written"].value == 2
    assert 0 < summary["duration_seconds"].value < 30
    assert summary["oldest_queued_age_seconds"].value == 0
    assert summary["dagster/row_count"].value == 1
    assert summary["table_size_bytes"].value > 0
    assert sensor.tick().asset_events == []  # reported once


def test_a_drain_by_the_sql_api_is_reported_as_sql(db, dsn, text):
    sensor = Sensor(dsn)
    sensor.tick()
    b.drain(db)
    reported = materialized(sensor.tick())
    verses = reported["mv_text_verse_coverage"]
    assert verses["source"].value == "sql"
    assert verses["rows_written"].value == 2
    assert 0 < verses["duration_seconds"].value < 30
    # Refreshed once for the drain's batch, not logged per version: not known.
    assert reported["language_entity_best_text_version"]["rows_written"].value is None
    db.execute("UPDATE text_versions SET deleted_at = now() WHERE id = %s", [text])
    db.execute("SELECT * FROM refresh_progress_version('text', %s)", [text])  # by name: with its language entity
    reported = materialized(sensor.tick())
    assert reported["language_entity_best_text_version"]["rows_written"].value == 1  # its row, deleted
    assert reported["mv_text_version_progress_summary"]["rows_written"].value == 1


def test_runs_of_this_instance_are_not_reported_again_but_other_instances_runs_are(dsn, text):
    sensor = Sensor(dsn)
    sensor.tick()
    own_run = create_run_for_test(sensor.instance, job_name="refresh_queued_versions")
    refresh(dsn, source=f"dagster:{own_run.run_id}")
    assert materialized(sensor.tick()) == {}

    with connect(dsn) as conn:
        b.verse_texts(conn, text, ["kjv-Gen-2-1"])
    refresh(dsn, source="dagster:run-of-another-deployment")
    assert materialized(sensor.tick())["mv_text_verse_coverage"]["source"].value == (
        "dagster:run-of-another-deployment"
    )


def test_only_written_base_tables_are_observed_again(db, dsn, text):
    sensor = Sensor(dsn)
    sensor.tick()
    b.verse_texts(db, text, ["kjv-Gen-2-1", "kjv-Gen-2-2"])
    flush_statistics(db)

    tables = observed(sensor.tick())
    assert "verse_texts" in tables and "books" not in tables
    assert tables["verse_texts"]["dagster/row_count"].value == 4
    assert tables["verse_texts"]["rows_written_since_last_observation"].value == 2


def test_nothing_new_skips_and_says_why(dsn, text):
    sensor = Sensor(dsn)
    sensor.tick()
    result = sensor.tick()
    assert result.asset_events == []
    assert "no refreshes outside Dagster and no writes to the base tables" in (result.skip_message or "")


def test_base_tables_can_be_observed_on_demand(dsn, text):
    result = observe([observe_base_tables], resources={"postgres": PostgresResource(database_url=dsn)})
    observations = {
        e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert set(observations) == set(BASE_TABLES)
    assert observations["verse_texts"]["dagster/row_count"].value == 2
