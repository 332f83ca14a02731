"""What happened in the database without Dagster, reported to Dagster.

Refreshes also run from the command line and from the SQL API (a pg_cron job
calling drain_progress_refresh_queue()); the database logs every finished
refresh with its source (progress_refresh_log). `outside_refresh_sensor`
reports the ones this Dagster instance did not run as materializations of
the read models they refreshed, so the last refresh the UI shows is the real
one, with its source and lag. It also observes the base tables the apps
write (rows, and rows written since the last look); the base tables are
observable source assets, so the catalog shows when they were last observed.
"""

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import dagster as dg

from orchestration import settings
from orchestration.assets import BASE_TABLES, base_table_specs, version_labels
from orchestration.db import gateway
from orchestration.read_models import of_kind
from orchestration.resources import PostgresResource

OBSERVATION_INTERVAL_ENV = settings.OBSERVATION_INTERVAL_SECONDS.env
DEFAULT_OBSERVATION_INTERVAL_SECONDS = settings.OBSERVATION_INTERVAL_SECONDS.default
DAGSTER_SOURCE_PREFIX = "dagster:"


def observation_interval_seconds() -> int:
    return int(settings.value(settings.OBSERVATION_INTERVAL_SECONDS))


@dataclass
class ObservationCursor:
    """Where the refresh log was read up to (a transaction horizon), and each base
    table's write counter at its last observation."""

    log_horizon: int | None = None
    rows_changed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> "ObservationCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(data.get("log_horizon"), dict(data.get("rows_changed", {})))

    def dump(self) -> str:
        return json.dumps({"log_horizon": self.log_horizon, "rows_changed": self.rows_changed})


def is_own_run(instance: dg.DagsterInstance, source: str) -> bool:
    """A refresh by a run of this Dagster instance, which reported it itself."""
    if not source.startswith(DAGSTER_SOURCE_PREFIX):
        return False
    return instance.get_run_by_id(source.removeprefix(DAGSTER_SOURCE_PREFIX)) is not None


def _seconds(value: float | None) -> dg.MetadataValue:
    return dg.MetadataValue.float(round(value, 3)) if value is not None else dg.MetadataValue.null()


def outside_refresh_events(
    refreshes: gateway.LoggedRefreshes,
    labels: list[dict[str, str]],
    oldest_queued_age: float,
    sizes: dict[str, dict[str, int]],
) -> list[dg.AssetMaterialization]:
    """One materialization per read model of the refreshed kind: a version's refresh
    rewrites every level of it."""
    metadata: dict[str, dg.MetadataValue] = {
        "source": dg.MetadataValue.text(refreshes.source),
        "outcome": dg.MetadataValue.text(
            f"{refreshes.refreshes} {refreshes.kind} refresh(es) by {refreshes.source}, reported from the refresh log"
        ),
        "versions_refreshed": dg.MetadataValue.int(len(refreshes.version_ids)),
        "versions": dg.MetadataValue.json(labels),
        "rows_written_all_levels": dg.MetadataValue.int(refreshes.rows_written or 0),
        "duration_seconds": _seconds(refreshes.busy_seconds),
        "first_refreshed_at": dg.MetadataValue.timestamp(refreshes.first_refreshed_at),
        "last_refreshed_at": dg.MetadataValue.timestamp(refreshes.last_refreshed_at),
        "lag_seconds_p50": _seconds(refreshes.lag_p50),
        "lag_seconds_p95": _seconds(refreshes.lag_p95),
        "lag_seconds_max": _seconds(refreshes.lag_max),
        "oldest_queued_age_seconds": dg.MetadataValue.float(round(oldest_queued_age, 3)),
    }
    return [
        dg.AssetMaterialization(
            asset_key=model.name,
            metadata={
                **metadata,
                "rows_written": (
                    dg.MetadataValue.int(refreshes.rows_by_read_model[model.name])
                    if model.name in refreshes.rows_by_read_model
                    else dg.MetadataValue.null()
                ),
                "dagster/row_count": dg.MetadataValue.int(sizes.get(model.name, {}).get("rows", 0)),
                "table_size_bytes": dg.MetadataValue.int(sizes.get(model.name, {}).get("bytes", 0)),
            },
        )
        for model in of_kind(refreshes.kind)  # type: ignore[arg-type]
    ]


def base_table_metadata(table: gateway.TableActivity, previous: int | None) -> dict[str, dg.MetadataValue]:
    return {
        "dagster/row_count": dg.MetadataValue.int(table.row_count),
        "row_count_estimated": dg.MetadataValue.bool(table.estimated),
        "rows_written_since_last_observation": dg.MetadataValue.int(
            0 if previous is None else max(table.rows_changed - previous, 0)
        ),
        "rows_written_since_stats_reset": dg.MetadataValue.int(table.rows_changed),
    }


def base_table_observations(
    activity: list[gateway.TableActivity], cursor: ObservationCursor
) -> list[dg.AssetObservation]:
    """Tables written since their last observation (every table at the first look)."""
    observed = []
    for table in activity:
        previous = cursor.rows_changed.get(table.table)
        if previous is not None and previous == table.rows_changed:
            continue
        observed.append(dg.AssetObservation(asset_key=table.table, metadata=base_table_metadata(table, previous)))
        cursor.rows_changed[table.table] = table.rows_changed
    return observed


def _observe_base_tables(context: dg.AssetExecutionContext, postgres: PostgresResource) -> Iterator[dg.ObserveResult]:
    """Why: the apps write the base tables, not Dagster; observing them shows their size and
    activity upstream of the read models. outside_refresh_sensor observes them as they change;
    this observes them on demand (the catalog's "Observe" button)."""
    with postgres.connect() as conn:
        activity = gateway.table_activity(conn, [key.path[-1] for key in sorted(context.selected_asset_keys)])
    for table in activity:
        yield dg.ObserveResult(asset_key=table.table, metadata=base_table_metadata(table, None))


# multi_observable_source_asset is marked beta in the pinned Dagster; its warning says nothing to users.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.BetaWarning)
    observe_base_tables = dg.multi_observable_source_asset(
        specs=base_table_specs,
        name="observe_base_tables",
        can_subset=True,
        description="Rows of the base tables and rows the apps wrote, as the database counts them.",
    )(_observe_base_tables)


@dg.sensor(
    minimum_interval_seconds=observation_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports refreshes done outside this Dagster instance (command line, SQL API, pg_cron) "
    "as materializations with their source and lag, and observes the base tables "
    f"(every ${OBSERVATION_INTERVAL_ENV} seconds, default {DEFAULT_OBSERVATION_INTERVAL_SECONDS}).",
)
def outside_refresh_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    """Why: a read model refreshed by pg_cron at 10:02 must not look as if its last refresh
    was a Dagster run at 09:00. The database logs every refresh; this turns the ones Dagster
    did not run into materializations, from the sensor's first tick on. A refresh is
    reported once every transaction older than it has ended (see
    progress_refresh_log_horizon), so a long write transaction delays reports, never loses one."""
    cursor = ObservationCursor.parse(context.cursor)
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    reported: list[str] = []
    with postgres.connect() as conn:
        horizon = gateway.refresh_log_horizon(conn)
        logged = gateway.refreshes_between(conn, cursor.log_horizon, horizon) if cursor.log_horizon is not None else []
        outside = [r for r in logged if not is_own_run(context.instance, r.source)]
        sizes = gateway.read_model_sizes(conn) if outside else {}
        for refreshes in outside:
            labels = version_labels(conn, refreshes.kind, refreshes.version_ids)
            oldest = float(gateway.queue_state(conn, refreshes.kind)["oldest_age_seconds"])
            events.extend(outside_refresh_events(refreshes, labels, oldest, sizes))
            reported.append(f"{len(refreshes.version_ids)} {refreshes.kind} version(s) by {refreshes.source}")
        activity = gateway.table_activity(conn, list(BASE_TABLES))
    started = cursor.log_horizon is None
    cursor.log_horizon = horizon
    observed = base_table_observations(activity, cursor)
    events.extend(observed)
    # The tick list shows this line for every tick (this sensor starts no runs).
    if not events:
        summary = "no refreshes outside Dagster and no writes to the base tables since the last tick"
    else:
        parts = [f"reported {'; '.join(reported)}"] if reported else []
        if observed:
            parts.append(
                f"observed {len(observed)} base table(s): {', '.join(str(o.asset_key.path[-1]) for o in observed)}"
            )
        if started:
            parts.append("first tick: refreshes are reported from now on")
        summary = "; ".join(parts)
    context.log.info(summary)
    return dg.SensorResult(asset_events=events, skip_reason=summary, cursor=cursor.dump())
