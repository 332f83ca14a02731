"""Asset checks: is each read model equal to its logical view, and is the queue
being drained? Generated from read_models.READ_MODELS.

Equality is the product's correctness test (SPEC section 3). A check compares
only settled scopes: versions still queued (or dead-lettered) are expected to
lag and are left out, and the comparison runs in one REPEATABLE READ snapshot,
so a change committed meanwhile (queued in the writer's own transaction) can
never look like a wrong read model. Two checks per read model, so a passing
status never stands for rows nobody compared: matches_logical_view compares
the whole table (run on its own, and after a full backfill);
refreshed_versions_match compares the versions the latest refresh
wrote (a sample; after the refresh, in the same run), cheap whatever the size.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg

# Not exported at dagster's top level (1.13): the materialization an evaluation
# reported outside a run is aimed at, which the UI needs to show it as current.
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,
)

from orchestration import settings
from orchestration.assets import version_labels
from orchestration.db import gateway
from orchestration.read_models import KINDS, READ_MODELS, ReadModel, of_kind
from orchestration.resources import PostgresResource

MATCHES_LOGICAL_VIEW = "matches_logical_view"
REFRESHED_VERSIONS_MATCH = "refreshed_versions_match"
QUEUE_NOT_STALE = "queue_not_stale"
STALE_SECONDS_ENV = settings.QUEUE_STALE_SECONDS.env
DEFAULT_STALE_SECONDS = settings.QUEUE_STALE_SECONDS.default
# After a refresh, the equality checks compare at most this many of the refreshed versions.
CHECK_SAMPLE_VERSIONS = 5


def stale_after_seconds() -> float:
    return float(settings.value(settings.QUEUE_STALE_SECONDS))


@contextmanager
def snapshot(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """One read-only REPEATABLE READ transaction: the queue and the tables as of one instant."""
    previous = conn.isolation_level, conn.read_only
    conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
    try:
        with conn.transaction():
            yield conn
    finally:
        conn.isolation_level, conn.read_only = previous


def _scope_column(model: ReadModel) -> str:
    return model.key_columns[0]


@dataclass(frozen=True)
class Sample:
    """The refreshed versions a check compares, out of how many the run refreshed."""

    versions: list[uuid.UUID]
    refreshed: int

    @property
    def label(self) -> str:
        return f"{len(self.versions)} of {self.refreshed} refreshed version(s) sampled"


def refreshed_sample(context: dg.AssetCheckExecutionContext, model: ReadModel) -> Sample | None:
    """A sample (at most CHECK_SAMPLE_VERSIONS) of the versions the latest refresh of
    the model wrote (this run's, when it refreshed the model): comparing with a
    logical view computes it live, so a check after a big refresh stays cheap.
    None: that refresh rebuilt every version (a full backfill), compare everything.
    An empty sample: no refresh recorded yet."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey(model.name))
    if event is None or event.asset_materialization is None:
        return Sample([], 0)
    metadata = event.asset_materialization.metadata
    mode, listed, count = metadata.get("mode"), metadata.get("versions"), metadata.get("versions_refreshed")
    if listed is None or count is None or (mode is not None and mode.value == "all"):
        return None
    versions = [uuid.UUID(v["id"]) for v in listed.value[:CHECK_SAMPLE_VERSIONS]]
    return Sample(versions, int(count.value))


def compare(conn: psycopg.Connection, model: ReadModel, versions: list[uuid.UUID] | None) -> dict[str, Any]:
    """Mismatching rows among settled scopes (only those of `versions` when given), in one snapshot."""
    column = _scope_column(model)
    by_entity = column == "language_entity_id"
    with snapshot(conn):
        unsettled = gateway.unsettled_scopes(conn, model.kind, by_entity)
        if versions is None:
            compared = "all settled"
            mismatching = gateway.mismatches(conn, model.name, model.logical_view, column, exclude=unsettled)
        else:
            scope = gateway.affected_language_entities(conn, model.kind, versions) if by_entity else versions
            settled = [s for s in scope if s not in set(unsettled)]
            compared = str(len(settled))
            mismatching = gateway.mismatches(conn, model.name, model.logical_view, column, settled) if settled else 0
    return {"mismatching_rows": mismatching, "scopes_compared": compared, "scopes_left_out": len(unsettled)}


def equality_check_specs(kind: str) -> list[dg.AssetCheckSpec]:
    def spec(model: ReadModel, name: str, description: str) -> dg.AssetCheckSpec:
        return dg.AssetCheckSpec(name=name, asset=model.name, blocking=False, description=description)

    return [
        spec_made
        for model in of_kind(kind)  # type: ignore[arg-type]
        for spec_made in (
            spec(
                model,
                MATCHES_LOGICAL_VIEW,
                f"{model.name} holds exactly the rows of its logical view {model.logical_view}, "
                "whole table (versions still queued are left out: they are expected to lag). "
                "Computes every logical view: run on its own, and after full_backfill.",
            ),
            spec(
                model,
                REFRESHED_VERSIONS_MATCH,
                f"The versions the latest refresh of {model.name} wrote (up to "
                f"{CHECK_SAMPLE_VERSIONS} of them) hold exactly the rows of {model.logical_view}. "
                "Runs after refresh_queued_versions refreshes, in the same run.",
            ),
        )
    ]


def check_keys(name: str) -> list[dg.AssetCheckKey]:
    """The given check of every read model that has it."""
    models = [summary_of(kind) for kind in KINDS] if name == QUEUE_NOT_STALE else READ_MODELS
    return [dg.AssetCheckKey(dg.AssetKey(model.name), name) for model in models]


def build_equality_checks(kind: str) -> dg.AssetChecksDefinition:
    models = of_kind(kind)  # type: ignore[arg-type]

    @dg.multi_asset_check(
        name=f"check_{kind}_read_models",
        specs=equality_check_specs(kind),
        can_subset=True,
        description=f"Compares {kind} read models with their logical views, row for row.",
    )
    def check_read_models(
        context: dg.AssetCheckExecutionContext, postgres: PostgresResource
    ) -> Iterator[dg.AssetCheckResult]:
        """Why: the read models are maintained incrementally, per version; the logical views
        compute the same rows live. Any difference is a refresh bug users would read."""
        with postgres.connect() as conn:
            for model in models:
                for name in (MATCHES_LOGICAL_VIEW, REFRESHED_VERSIONS_MATCH):
                    if dg.AssetCheckKey(dg.AssetKey(model.name), name) not in context.selected_asset_check_keys:
                        continue
                    sample = refreshed_sample(context, model) if name == REFRESHED_VERSIONS_MATCH else None
                    yield _equality_result(context, conn, model, name, sample)

    return check_read_models


def _equality_result(
    context: dg.AssetCheckExecutionContext,
    conn: psycopg.Connection,
    model: ReadModel,
    name: str,
    sample: Sample | None,
) -> dg.AssetCheckResult:
    result: dict[str, Any]
    if sample is not None and not sample.versions:
        result = {"mismatching_rows": 0, "scopes_compared": "0", "scopes_left_out": 0}
    else:
        result = compare(conn, model, None if sample is None else sample.versions)
    passed = result["mismatching_rows"] == 0
    if not passed:
        context.log.error(f"{model.name} differs from {model.logical_view} in {result['mismatching_rows']} row(s)")
    if sample is None:
        scope = "whole table (every settled scope)"
    elif not sample.versions:
        scope = "no refresh recorded yet: nothing compared"
    else:
        scope = sample.label
    return dg.AssetCheckResult(
        asset_key=model.name,
        check_name=name,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else f"{result['mismatching_rows']} row(s) differ from {model.logical_view}",
        metadata={
            "mismatching_rows": dg.MetadataValue.int(result["mismatching_rows"]),
            "scope": dg.MetadataValue.text(scope),
            "scopes_compared": dg.MetadataValue.text(result["scopes_compared"]),
            "scopes_left_out_as_queued": dg.MetadataValue.int(result["scopes_left_out"]),
            "versions_sampled": dg.MetadataValue.json(
                version_labels(conn, model.kind, sample.versions if sample else [])
            ),
        },
    )


@dataclass(frozen=True)
class Staleness:
    """The queue_not_stale verdict for one kind, as the check and the sensor report it."""

    kind: str
    passed: bool
    description: str | None
    metadata: dict[str, dg.MetadataValue]

    @property
    def asset_key(self) -> dg.AssetKey:
        return dg.AssetKey(summary_of(self.kind).name)

    def evaluation(self, instance: dg.DagsterInstance | None) -> dg.AssetCheckEvaluation:
        """The verdict as a check evaluation outside any run (what a sensor reports),
        aimed at the summary's latest materialization: the UI shows a check's status
        for that one, and an evaluation aimed at none as "not evaluated"."""
        return dg.AssetCheckEvaluation(
            asset_key=self.asset_key,
            check_name=QUEUE_NOT_STALE,
            passed=self.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=self.description,
            metadata=self.metadata,
            target_materialization_data=latest_materialization(instance, self.asset_key),
        )


def latest_materialization(
    instance: dg.DagsterInstance | None, key: dg.AssetKey
) -> AssetCheckEvaluationTargetMaterializationData | None:
    records = instance.get_asset_records([key]) if instance is not None else []
    latest = records[0].asset_entry.last_materialization_record if records else None
    if latest is None:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=latest.storage_id, run_id=latest.run_id, timestamp=latest.timestamp
    )


def summary_of(kind: str) -> ReadModel:
    return next(m for m in of_kind(kind) if m.level == "summary")  # type: ignore[arg-type]


def queue_staleness(conn: psycopg.Connection, kind: str) -> Staleness:
    """Whether the oldest queued change of a kind is younger than the stale limit."""
    limit = stale_after_seconds()
    state = gateway.queue_state(conn, kind)
    depth, age = int(state["depth"]), float(state["oldest_age_seconds"])
    passed = depth == 0 or age < limit
    return Staleness(
        kind,
        passed,
        None if passed else f"oldest queued {kind} change is {age:.0f}s old (limit {limit:.0f}s), {depth} queued",
        {
            "queue_depth": dg.MetadataValue.int(depth),
            "ready": dg.MetadataValue.int(int(state["ready"])),
            "oldest_age_seconds": dg.MetadataValue.float(round(age, 1)),
            "limit_seconds": dg.MetadataValue.float(limit),
        },
    )


def build_staleness_check(kind: str) -> dg.AssetChecksDefinition:
    summary = summary_of(kind)

    @dg.asset_check(
        asset=summary.name,
        name=QUEUE_NOT_STALE,
        blocking=False,
        description=f"The oldest queued {kind} change is younger than ${STALE_SECONDS_ENV} "
        f"(default {DEFAULT_STALE_SECONDS:.0f}s): otherwise {summary.name} is showing old progress. "
        "refresh_queue_sensor reports it too, outside any run, whenever its verdict changes.",
    )
    def queue_not_stale(context: dg.AssetCheckExecutionContext, postgres: PostgresResource) -> dg.AssetCheckResult:
        """Why: the sensor and schedules should drain the queue within minutes. An old entry
        means refreshes stopped (daemon down, versions failing) and users see stale progress."""
        with postgres.connect() as conn:
            verdict = queue_staleness(conn, kind)
        if not verdict.passed:
            context.log.error(f"{kind} queue is stale: {verdict.description}")
        return dg.AssetCheckResult(
            passed=verdict.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=verdict.description,
            metadata=verdict.metadata,
        )

    return queue_not_stale


equality_checks: list[dg.AssetChecksDefinition] = [build_equality_checks(kind) for kind in KINDS]
staleness_checks: list[dg.AssetChecksDefinition] = [build_staleness_check(kind) for kind in KINDS]
all_checks: list[dg.AssetChecksDefinition] = [*equality_checks, *staleness_checks]
