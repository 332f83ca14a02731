"""The read models as Dagster assets, generated from read_models.READ_MODELS.

PostgreSQL does the refreshing; Dagster orchestrates and observes it. Refreshing
a version rewrites all of its levels (verse, chapter, book, summary, best) in
one SQL transaction, so the read models are ONE multi-asset (one step) whose
specs are the ten read models: a run drains the queue with its workers, oldest
change first whatever its kind, and reports, per read model, what it wrote and
the lag of what it refreshed. One step rather than one per chain, because steps
of a run execute one after the other: a run that keeps draining audio would keep
text changes waiting. A run of a subset (say the audio models) drains only that
kind. A read
model materialises only when the run refreshed at least one version of its kind
(every level of that version was recomputed, whether or not rows changed); a
run with nothing to refresh says so in its log and records nothing. The base
tables the apps write are external assets upstream, so the lineage reads from a
recording to a summary.
"""

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import dagster as dg
import psycopg
from pydantic import Field

from orchestration.db import gateway
from orchestration.db.connection import connect as open_connection
from orchestration.errors import ProgressError
from orchestration.read_models import KINDS, READ_MODELS, ReadModel
from orchestration.refresh import RefreshPolicy, RefreshReport, drain_queue, refresh_versions
from orchestration.resources import APPLICATION_NAME, PostgresResource
from orchestration.schemas import BASE_TABLE_COLUMNS, READ_MODEL_COLUMNS, table_schema

# The Dagster pool every refresh step claims a slot of; dagster.yaml sizes it from
# the number of refresh workers.
REFRESH_POOL = "progress_refresh"
REFRESH_STEP = "refresh_progress"
# A run tagged so (the full_backfill job's runs) refreshes every version whatever
# its op config says: a job's default op config is replaced by any a run gives
# (say, only workers), so it could not carry "all versions" itself.
ALL_VERSIONS_TAG = "progress/all_versions"
# Set by a backfill once it has queued every version of a kind ("<run id>:audio,text"):
# a retry of the step, or a re-execution of the run, resumes those kinds.
BACKFILL_QUEUED_TAG = "progress/backfill_queued"
BASE_TABLES_GROUP = "base_tables"
# Versions listed in metadata (the count is always complete).
MAX_IDS_IN_METADATA = 20
# Versions in the summary's before/after preview table.
PREVIEW_VERSIONS = 10

BASE_TABLES: dict[str, str] = {
    "language_entities": "Languages; each one's best audio and text version is chosen among its versions.",
    "bible_versions": "Bible versions (versifications); every version covers the books of its own.",
    "books": "Books of each bible version; book coverage lists every one of them.",
    "chapters": "Chapters with their verse counts; chapter coverage compares against total_verses.",
    "verses": "Verses with their canonical global_order; verse ranges of audio files resolve through it.",
    "audio_versions": "Audio versions apps record into; deleted ones have no rows in any read model.",
    "text_versions": "Text versions apps type into; deleted ones have no rows in any read model.",
    "media_files": "Recordings; only live bible audio (published, uploaded, undeleted audio) counts.",
    "media_files_verses": "Per-verse mappings of recordings to verses.",
    "verse_texts": "Typed verse texts of text versions.",
}

base_table_specs: list[dg.AssetSpec] = [
    dg.AssetSpec(
        key=name,
        description=f"{description} Written by the apps; triggers queue the versions a change can alter.",
        group_name=BASE_TABLES_GROUP,
        kinds={"postgres"},
        metadata={"dagster/table_name": name, "dagster/column_schema": table_schema(BASE_TABLE_COLUMNS[name])},
    )
    for name, description in BASE_TABLES.items()
]


def read_model_spec(model: ReadModel) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=model.name,
        description=model.description,
        group_name=model.group,
        kinds={"postgres"},
        deps=[*model.upstreams, *model.base_tables],
        # A run that refreshed nothing of this kind yields no materialization for it.
        skippable=True,
        metadata={
            "dagster/table_name": model.name,
            "dagster/column_schema": table_schema(READ_MODEL_COLUMNS[model.name]),
            "logical_view": model.logical_view,
            "key_columns": ", ".join(model.key_columns),
            "sync_function": model.sync_function,
        },
        tags={"level": model.level, "kind": model.kind},
    )


class RefreshConfig(dg.Config):
    """What a refresh run covers. Default: the versions queued by changes."""

    versions: list[str] = Field(
        default_factory=list,
        description='Refresh these versions now, queued or not, e.g. ["audio:0b6e…"]. '
        "Versions of a kind the run does not select are left out.",
    )
    all_versions: bool = Field(
        default=False,
        description="Queue every version of the selected kinds, then drain in batches "
        "(resumable: a retried run continues with what is still queued).",
    )
    max_versions: int | None = Field(
        default=None, ge=1, description="Refresh at most this many queued versions in this run."
    )
    keep_draining: bool = Field(
        default=False,
        description="Keep claiming changes that arrive while the run drains, until the queue has had nothing "
        "ready for $PROGRESS_RUN_IDLE_SECONDS (10) or the run has drained for $PROGRESS_RUN_MAX_SECONDS (120). "
        "The sensor's runs do, so a stream of writes is one run, not one per tick.",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="Workers refreshing in parallel, each with its own connection; "
        "default $PROGRESS_REFRESH_WORKERS (2).",
    )


@dataclass
class ChainRun:
    """What one chain (kind) got from a run, ready to be turned into metadata."""

    mode: str
    report: RefreshReport
    total: int
    note: str
    # Summaries of the first versions the run was to refresh, as they were before it.
    preview_before: list[gateway.VersionSummary] = field(default_factory=list)


def version_labels(conn: psycopg.Connection, kind: str, versions: Sequence[uuid.UUID]) -> list[dict[str, str]]:
    """Versions as people know them: name and language, with the id for tools."""
    shown = list(versions[:MAX_IDS_IN_METADATA])
    return [
        {"version": v.name or "(no name)", "language": v.language or "", "id": str(v.version_id)}
        for v in gateway.version_summaries(conn, kind, shown)
    ]


def _queued_by_this_backfill(context: dg.AssetExecutionContext) -> set[str]:
    """The kinds whose every version this backfill has queued already: in this run
    (the step retried by its retry policy) or in the failed or canceled runs it
    re-executes. What is done has left the queue since, so those resume; a kind
    whose queueing never happened (an attempt lost before it) is queued now."""
    run_id: str | None = context.run.run_id
    while run_id:
        run = context.instance.get_run_by_id(run_id)
        if run is None or (
            run_id != context.run.run_id
            and run.status not in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        ):
            break
        # A re-execution inherits its parent's tags: only the run a tag names queued.
        queued_by, _, kinds = run.tags.get(BACKFILL_QUEUED_TAG, "").partition(":")
        if queued_by == run_id:
            return {kind for kind in kinds.split(",") if kind}
        run_id = run.parent_run_id
    return set()


def _record_queued(context: dg.AssetExecutionContext, kinds: set[str]) -> None:
    run_id = context.run.run_id
    context.instance.add_run_tags(run_id, {BACKFILL_QUEUED_TAG: f"{run_id}:{','.join(sorted(kinds))}"})


def _progress_logger(context: dg.AssetExecutionContext, total: int, every: int):
    done = [0]

    def on_version(outcome: gateway.VersionOutcome) -> None:
        done[0] += 1
        if outcome.error is not None:
            context.log.warning(f"{outcome.kind}:{outcome.version_id} failed: {outcome.error}")
        if done[0] % every == 0:
            context.log.info(f"{done[0]}/{max(total, done[0])} versions processed")

    return on_version


def _named_versions(
    context: dg.AssetExecutionContext, kinds: Sequence[str], names: Sequence[str]
) -> list[tuple[str, uuid.UUID]]:
    try:
        parsed = [gateway.parse_version(name) for name in names]
    except ProgressError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
    mine = [(kind, version_id) for kind, version_id in parsed if kind in kinds]
    if len(mine) < len(parsed):
        context.log.info(f"{len(parsed) - len(mine)} named version(s) of a kind this run does not select are left out")
    return mine


def _chain_note(kind: str, mode: str, report: RefreshReport, total: int) -> str:
    if mode == "named":
        if not report.outcomes:
            return f"no {kind} versions named: nothing to refresh"
        return f"refreshed {len(report.refreshed)} named {kind} version(s)"
    if not report.outcomes:
        return f"nothing queued for {kind}: nothing refreshed, no materialization recorded"
    done = len(report.outcomes)
    if report.failed:
        return (
            f"{kind}: {done}/{max(total, done)} versions processed in {report.seconds:.2f}s: "
            f"{len(report.refreshed)} refreshed, {len(report.failed)} failed"
        )
    return f"{kind}: {done}/{max(total, done)} versions refreshed in {report.seconds:.2f}s"


def run_refresh(
    context: dg.AssetExecutionContext,
    conn: psycopg.Connection,
    kinds: Sequence[str],
    config: RefreshConfig,
    connect: Callable[[], psycopg.Connection],
) -> dict[str, ChainRun]:
    """Refreshes the selected kinds' versions as the config asks (the queue with
    parallel workers, named versions, or all) and logs progress as n/total.
    The refresh log names this run as the source of what it refreshed."""
    policy = replace(RefreshPolicy.from_env(conn), source=f"dagster:{context.run.run_id}")
    totals: dict[str, int]
    before: dict[str, list[gateway.VersionSummary]]
    all_versions = config.all_versions or context.run.tags.get(ALL_VERSIONS_TAG) == "true"
    if config.versions and all_versions:
        raise dg.Failure(
            description="a run refreshes named versions or all versions, not both: "
            "name versions in a refresh_queued_versions run, without all_versions",
            allow_retries=False,
        )
    if config.versions:
        named = _named_versions(context, kinds, config.versions)
        mode = "named"
        ids = {kind: [v for k, v in named if k == kind] for kind in kinds}
        totals = {kind: len(ids[kind]) for kind in kinds}
        before = {kind: gateway.version_summaries(conn, kind, ids[kind][:PREVIEW_VERSIONS]) for kind in kinds}
        on_version = _progress_logger(context, len(named), policy.batch_size)
        try:
            report = refresh_versions(conn, named, policy, on_version=on_version)
        except ProgressError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
    else:
        if all_versions:
            mode = "all"
            queued = _queued_by_this_backfill(context)
            totals = {}
            for kind in kinds:
                if kind in queued:
                    totals[kind] = int(gateway.queue_state(conn, kind)["depth"])
                    context.log.info(f"{kind}: resuming a backfill, {totals[kind]} version(s) still queued")
                else:
                    totals[kind] = gateway.enqueue_all_versions(conn, kind)
                    queued.add(kind)
                    _record_queued(context, queued)
                    context.log.info(f"{kind}: queued all {totals[kind]} version(s) for a backfill")
        else:
            mode = "queued"
            totals = {kind: int(gateway.queue_state(conn, kind)["ready"]) for kind in kinds}
        if config.max_versions is not None:
            totals = {kind: min(total, config.max_versions) for kind, total in totals.items()}
        before = {
            kind: gateway.version_summaries(conn, kind, gateway.next_queued_versions(conn, kind, PREVIEW_VERSIONS))
            for kind in kinds
        }
        workers = config.workers or policy.workers
        follow = config.keep_draining and mode == "queued"
        context.log.info(
            f"draining {' and '.join(kinds)} with {workers} worker(s)"
            + (
                f", following new changes until the queue is quiet for {policy.idle_seconds:.0f}s "
                f"(at most {policy.max_run_seconds:.0f}s)"
                if follow
                else ""
            )
        )
        on_version = _progress_logger(context, sum(totals.values()), policy.batch_size)
        report = drain_queue(
            conn,
            policy,
            kinds=kinds,
            max_versions=config.max_versions,
            on_version=on_version,
            connect=connect,
            workers=workers,
            follow=follow,
        )
    runs = {}
    for kind in kinds:
        part = report.of_kind(kind)
        total = totals.get(kind, 0)
        runs[kind] = ChainRun(mode, part, total, _chain_note(kind, mode, part, total), before.get(kind, []))
        context.log.info(runs[kind].note)
    return runs


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{fraction * 100:.1f}%"


def preview_markdown(before: list[gateway.VersionSummary], after: list[gateway.VersionSummary], total: int) -> str:
    """A small table of refreshed versions: verse, chapter and book fractions before → after."""
    was = {v.version_id: v for v in before}
    lines = [
        f"{len(after)} of {total} refreshed version(s):",
        "",
        "| version | language | verses | chapters | books |",
        "|---|---|---|---|---|",
    ]
    for now in after:
        old = was.get(now.version_id)
        cells = [
            f"{_percent(getattr(old, name, None))} → {_percent(getattr(now, name))}"
            for name in ("verse_fraction", "chapter_fraction", "book_fraction")
        ]
        name = (now.name or str(now.version_id)).replace("|", "/")
        lines.append(f"| {name} | {(now.language or '').replace('|', '/')} | {' | '.join(cells)} |")
    return "\n".join(lines)


def lag_metadata(lag: gateway.RefreshLag) -> dict[str, dg.MetadataValue]:
    """Seconds from each refreshed change's first enqueue to its refresh's commit."""

    def seconds(value: float | None) -> dg.MetadataValue:
        return dg.MetadataValue.float(round(value, 3)) if value is not None else dg.MetadataValue.null()

    return {
        "lag_seconds_p50": seconds(lag.p50),
        "lag_seconds_p95": seconds(lag.p95),
        "lag_seconds_max": seconds(lag.max),
        "oldest_queued_age_seconds": dg.MetadataValue.float(round(lag.oldest_queued_age_seconds, 3)),
    }


@dataclass
class RunFacts:
    """What the database says after a chain's run, shared by its read models' metadata."""

    source: str
    sizes: dict[str, dict[str, int]]
    dead_letters: int
    lag: gateway.RefreshLag
    versions: list[dict[str, str]]
    failed: list[dict[str, str | None]]
    preview: str


def materialization_metadata(model: ReadModel, run: ChainRun, facts: RunFacts) -> dict[str, dg.MetadataValue]:
    """The same keys on every materialisation, so the UI can plot them over time."""
    report = run.report
    refreshed = report.versions_of(model.kind)
    counts = report.totals().get(model.name, gateway.ReadModelCounts(model.name, 0, 0, 0))
    size = facts.sizes.get(model.name, {"rows": 0, "bytes": 0})
    extra = {"preview": dg.MetadataValue.md(facts.preview)} if model.level == "summary" and facts.preview else {}
    return {
        "mode": dg.MetadataValue.text(run.mode),
        "outcome": dg.MetadataValue.text(run.note),
        "source": dg.MetadataValue.text(facts.source),
        "versions_refreshed": dg.MetadataValue.int(len(refreshed)),
        "versions": dg.MetadataValue.json(facts.versions),
        "rows_inserted": dg.MetadataValue.int(counts.inserted),
        "rows_updated": dg.MetadataValue.int(counts.updated),
        "rows_deleted": dg.MetadataValue.int(counts.deleted),
        "rows_written": dg.MetadataValue.int(counts.written),
        "duration_seconds": dg.MetadataValue.float(round(report.seconds, 3)),
        "dagster/row_count": dg.MetadataValue.int(size["rows"]),
        "table_size_bytes": dg.MetadataValue.int(size["bytes"]),
        "failed_versions_count": dg.MetadataValue.int(len(report.failed)),
        "failed_versions": dg.MetadataValue.json(facts.failed),
        "dead_letters": dg.MetadataValue.int(facts.dead_letters),
        **lag_metadata(facts.lag),
        **extra,
    }


def run_facts(conn: psycopg.Connection, kind: str, run: ChainRun, source: str) -> RunFacts:
    refreshed = run.report.versions_of(kind)
    failed_ids = [o.version_id for o in run.report.failed if o.kind == kind][:MAX_IDS_IN_METADATA]
    errors = {o.version_id: o.error for o in run.report.failed}
    failed: list[dict[str, str | None]] = [
        {**label, "error": errors.get(uuid.UUID(label["id"]))} for label in version_labels(conn, kind, failed_ids)
    ]
    shown = [v.version_id for v in run.preview_before if v.version_id in set(refreshed)]
    after = gateway.version_summaries(conn, kind, shown)
    return RunFacts(
        source=source,
        sizes=gateway.read_model_sizes(conn),
        dead_letters=int(gateway.queue_state(conn, kind).get("dead_letters", 0)),
        lag=gateway.refresh_lag(conn, kind, source),
        versions=version_labels(conn, kind, refreshed),
        failed=failed,
        preview=preview_markdown(run.preview_before, after, len(refreshed)) if after else "",
    )


def _selected_kinds(context: dg.AssetExecutionContext) -> list[str]:
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    return [kind for kind in KINDS if any(m.kind == kind and m.name in selected for m in READ_MODELS)]


def build_refresh_asset() -> dg.AssetsDefinition:
    @dg.multi_asset(
        name=REFRESH_STEP,
        specs=[read_model_spec(model) for model in READ_MODELS],
        can_subset=True,
        pool=REFRESH_POOL,
        description="Refreshes the read models of the queued (or named, or all) versions: every level of a "
        "version in one transaction, so readers never see a half-refreshed version.",
    )
    def refresh_progress(
        context: dg.AssetExecutionContext, config: RefreshConfig, postgres: PostgresResource
    ) -> Iterator[dg.MaterializeResult]:
        """Why: apps change recordings and texts all day; this keeps the read models
        equal to their logical views by refreshing only the versions that changed."""
        started = time.perf_counter()
        kinds = _selected_kinds(context)
        dsn = postgres.dsn()
        source = f"dagster:{context.run.run_id}"
        with postgres.connect() as conn:
            runs = run_refresh(
                context, conn, kinds, config, lambda: open_connection(dsn, application_name=APPLICATION_NAME)
            )
            facts = {}
            for kind, run in runs.items():
                if run.report.versions_of(kind):
                    facts[kind] = run_facts(conn, kind, run, source)
                else:
                    context.log.info(f"{kind}: no version refreshed, so no {kind} read model materialises in this run")
        unselected = [
            m.name for m in READ_MODELS if m.kind in facts and dg.AssetKey(m.name) not in context.selected_asset_keys
        ]
        if unselected:
            # A version's levels are refreshed together (one transaction): a subset
            # cannot leave some out, and Dagster records only what was selected.
            context.log.warning(
                "refreshed every level of the versions above; not selected, so not recorded as "
                f"materialized: {', '.join(unselected)}"
            )
        for model in READ_MODELS:
            if dg.AssetKey(model.name) in context.selected_asset_keys and model.kind in facts:
                yield dg.MaterializeResult(
                    asset_key=model.name, metadata=materialization_metadata(model, runs[model.kind], facts[model.kind])
                )
        # A kind whose every version failed fails the step (after the other kind's
        # materializations); it is not retried as a step: the database retries
        # failed versions with backoff.
        all_failed = [kind for kind, run in runs.items() if run.report.failed and not run.report.refreshed]
        if all_failed:
            failed = [o for kind in all_failed for o in runs[kind].report.failed]
            raise dg.Failure(
                allow_retries=False,
                description=f"every {' and '.join(all_failed)} version of this run failed ({len(failed)}); "
                f"first error: {failed[0].error}",
                metadata={
                    "failed_versions": dg.MetadataValue.json(
                        [
                            {"version": f"{o.kind}:{o.version_id}", "error": o.error}
                            for o in failed[:MAX_IDS_IN_METADATA]
                        ]
                    )
                },
            )
        context.log.debug(f"refresh finished in {time.perf_counter() - started:.2f}s")

    return refresh_progress


refresh_progress = build_refresh_asset()

read_model_assets: list[dg.AssetsDefinition] = [refresh_progress]
