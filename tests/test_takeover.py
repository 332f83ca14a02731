"""Taking over a database that runs the previous design: plain migrate refuses
and changes nothing; --adopt swaps our read models in while a reader polls
them, keeps pending queue entries and readers' grants, and is a no-op the
second time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

from bench.previous_design import APP_ROLE, READER_ROLE, PollingReader, install_previous_design, make_changes, pending
from builders import assert_read_models_match, drain
from orchestration.db.connection import connect
from orchestration.db.inspection import TAKEOVER_SETTING
from orchestration.db.migrations import ForeignObjectsError, migrate, plan_migrate
from orchestration.errors import ProgressError
from orchestration.read_models import READ_MODELS
from test_migrations import schema_of


@pytest.fixture
def previous_dsn(empty_dsn: str) -> str:
    install_previous_design(empty_dsn)
    return empty_dsn


def ensure_roles(conn: psycopg.Connection, *names: str) -> None:
    """Roles are the server's, not the database's: made once, kept by later tests."""
    for name in names:
        if conn.execute("SELECT FROM pg_roles WHERE rolname = %s", [name]).fetchone() is None:
            conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(psycopg.sql.Identifier(name)))


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestration", *args],
        env={**os.environ, "PROGRESS_DATABASE_URL": dsn, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["migrate", "dry run"])
def test_plain_migrate_refuses_names_what_it_found_and_changes_nothing(previous_dsn: str, dry_run: list[str]) -> None:
    with connect(previous_dsn) as conn:
        before = schema_of(conn)
    result = _cli(previous_dsn, "migrate", *dry_run)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "progress-refresh migrate --adopt" in result.stderr
    # One line per finding: the queue triggers by their own names, the read models, the API.
    assert "note_media_file_change on media_files" in result.stderr
    assert "note_verse_text_change on verse_texts" in result.stderr
    assert "read model as a materialized view mv_audio_verse_coverage" in result.stderr
    assert "read model as a view language_entity_best_text_version" in result.stderr
    assert "drain_progress_refresh_queue()" in result.stderr
    # A trigger that does not write the queue is not in the way: a note says it stays.
    assert "note: other trigger blank_verse_text_is_null on verse_texts: left alone" in result.stderr
    assert "found: other trigger" not in result.stderr
    with connect(previous_dsn) as conn:
        assert schema_of(conn) == before


@pytest.mark.parametrize("command", [["status"], ["refresh"], ["enqueue", f"audio:{uuid.uuid4()}"]])
def test_other_commands_on_the_previous_design_point_to_the_take_over(previous_dsn: str, command: list[str]) -> None:
    result = _cli(previous_dsn, *command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the database holds the previous design, not yet taken over: run "
        "`progress-refresh migrate --adopt --dry-run`, then `progress-refresh migrate --adopt`"
    ]


def test_dry_run_prints_the_take_over_plan_and_changes_nothing(previous_dsn: str) -> None:
    with connect(previous_dsn) as conn:
        before = schema_of(conn)
    result = _cli(previous_dsn, "migrate", "--adopt", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "take over: queue trigger note_media_file_change" in result.stdout
    assert "note: other trigger blank_verse_text_is_null on verse_texts: left alone" in result.stdout
    assert "build mv_audio_verse_coverage beside the current one and swap it in" in result.stdout
    with connect(previous_dsn) as conn:
        assert schema_of(conn) == before


@pytest.mark.parametrize("strategy", ["table", "matview"])
def test_adopt_swaps_in_while_a_reader_polls_keeps_queue_and_grants(previous_dsn: str, strategy: str) -> None:
    with connect(previous_dsn) as conn:
        queued_before = pending(conn)
        assert queued_before, "the fixture leaves changes queued"
        # The dashboard reads the plain views too (nested ones among them: a
        # reader holds the outer view while it waits for the inner one).
        with PollingReader(previous_dsn, logical_views=True) as reader:
            changes = migrate(conn, strategy=strategy, adopt=True)
            time.sleep(0.2)
        assert reader.log.errors == []
        assert reader.log.empty == []
        assert reader.log.reads > 4 * len(READ_MODELS)
        print(f"\nslowest read during the take-over ({strategy}): {reader.log.slowest_seconds * 1000:.1f} ms")

        assert pending(conn) >= queued_before
        kinds = dict(
            conn.execute(
                "SELECT relname, relkind::text FROM pg_class WHERE relname = ANY (%s)", [[m.name for m in READ_MODELS]]
            ).fetchall()
        )
        assert set(kinds.values()) == {"r" if strategy == "table" else "m"}
        # Readers keep reading every read model under their own role.
        for model in READ_MODELS:
            granted = conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", [READER_ROLE, model.name])
            assert granted.fetchone() == (True,), model.name
        # The old queue triggers are gone, the apps' other trigger stays.
        triggers = {row[0] for row in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        assert not {"note_media_file_change", "note_media_file_verse_change", "note_verse_text_change"} & triggers
        assert "blank_verse_text_is_null" in triggers
        report = "\n".join(changes)
        assert "dropped queue trigger note_media_file_change on media_files" in report
        assert APP_ROLE in report  # it could drain before; the report says what to grant instead

        drain(conn)
        assert_read_models_match(conn)
        assert pending(conn) == set()


def test_changes_committed_during_the_take_over_are_captured(previous_dsn: str) -> None:
    stop = threading.Event()
    written = [0]

    def write() -> None:
        with connect(previous_dsn) as writer:
            while not stop.is_set():
                make_changes(writer, salt=written[0] + 1)
                writer.execute(
                    "UPDATE text_versions SET deleted_at = now() WHERE id = "
                    "(SELECT id FROM text_versions WHERE deleted_at IS NULL ORDER BY id LIMIT 1)"
                )
                written[0] += 1
                time.sleep(0.05)

    thread = threading.Thread(target=write, daemon=True)
    with connect(previous_dsn) as conn:
        thread.start()
        try:
            migrate(conn, adopt=True)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert written[0] > 0
        drain(conn)
        assert_read_models_match(conn)


def test_an_apps_own_trigger_that_queues_keeps_working_for_the_role_granted_it(previous_dsn: str) -> None:
    """An app table of their own queues through enqueue_progress_refresh() from a
    trigger, as a role granted EXECUTE on it by name: after the take-over that
    role's writes still succeed and still queue; the plan names the trigger."""
    role = "previous_design_notes_app"
    with connect(previous_dsn) as conn:
        ensure_roles(conn, role)
        conn.execute(
            f"""
            CREATE TABLE version_notes (id serial PRIMARY KEY, audio_version_id uuid, note text);
            CREATE FUNCTION queue_noted_version() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN PERFORM enqueue_progress_refresh('audio', NEW.audio_version_id); RETURN NEW; END $f$;
            CREATE TRIGGER version_notes_queue AFTER INSERT ON version_notes
                FOR EACH ROW EXECUTE FUNCTION queue_noted_version();
            GRANT USAGE ON SCHEMA public TO {role};
            GRANT INSERT ON version_notes TO {role};
            GRANT USAGE ON SEQUENCE version_notes_id_seq TO {role};
            GRANT EXECUTE ON FUNCTION enqueue_progress_refresh(text, uuid) TO {role};
            CREATE FUNCTION queue_through_helper(v uuid) RETURNS void LANGUAGE plpgsql AS $f$
            BEGIN PERFORM enqueue_progress_refresh('audio', v); END $f$;
            CREATE TABLE version_ratings (audio_version_id uuid, stars int);
            CREATE FUNCTION queue_rated_version() RETURNS trigger LANGUAGE plpgsql AS $f$
            BEGIN PERFORM queue_through_helper(NEW.audio_version_id); RETURN NEW; END $f$;
            CREATE TRIGGER version_ratings_queue AFTER INSERT ON version_ratings
                FOR EACH ROW EXECUTE FUNCTION queue_rated_version();
            """
        )
        version = conn.execute("SELECT id FROM audio_versions LIMIT 1").fetchone()[0]
        plan = "\n".join(plan_migrate(conn, adopt=True).lines())
        assert "trigger calling the SQL API version_notes_queue on version_notes: left alone" in plan, plan
        assert "trigger calling the SQL API version_ratings_queue on version_ratings: left alone" in plan, plan
        changes = "\n".join(migrate(conn, adopt=True))
        assert f"kept EXECUTE on enqueue_progress_refresh() for {role}" in changes, changes
        drain(conn)
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute("INSERT INTO version_notes (audio_version_id, note) VALUES (%s, 'after')", [version])
        assert ("audio", str(version)) in pending(conn)
        # A version already gone (or none) is nothing to queue: the app's write goes on.
        gone = uuid.uuid4()
        with conn.transaction():
            conn.execute(f"SET LOCAL ROLE {role}")
            conn.execute(
                "INSERT INTO version_notes (audio_version_id, note) VALUES (%s, 'gone'), (NULL, 'none')", [gone]
            )
        assert ("audio", str(gone)) not in pending(conn)
        # Called directly, an unknown version is still an error.
        with pytest.raises(psycopg.errors.NoDataFound), conn.transaction():
            conn.execute("SELECT enqueue_progress_refresh('audio', %s)", [gone])
        # A later migrate keeps it too.
        migrate(conn)
        granted = conn.execute(
            "SELECT has_function_privilege(%s, 'enqueue_progress_refresh(text, uuid)', 'EXECUTE')", [role]
        ).fetchone()
        assert granted == (True,)
        cannot_drain = conn.execute(
            "SELECT has_function_privilege(%s, 'drain_progress_refresh_queue()', 'EXECUTE')", [role]
        ).fetchone()
        assert cannot_drain == (False,)


def test_the_api_roles_and_their_groups_lose_the_enqueue_grant_an_app_role_keeps(previous_dsn: str) -> None:
    """Supabase's API roles (anon, authenticated) and any role they are members
    of could call the previous design's enqueue function: after the take-over
    none of them can (a browser key would queue refreshes at will), while an
    app's own role granted it by name keeps it, and the advice names the
    roles that lost it."""
    app, group = "previous_design_queue_writer", "previous_design_api_group"
    with connect(previous_dsn) as conn:
        ensure_roles(conn, "anon", "authenticated", app, group)
        conn.execute(f"GRANT {group} TO anon")
        conn.execute(
            f"GRANT EXECUTE ON FUNCTION enqueue_progress_refresh(text, uuid) TO anon, authenticated, {group}, {app}"
        )
        changes = "\n".join(migrate(conn, adopt=True))
        assert f"kept EXECUTE on enqueue_progress_refresh() for {app} " in changes, changes
        lost = re.search(r"roles that could run the old SQL API no longer can: ([^.]*)\.", changes)
        assert lost is not None, changes
        assert {"anon", "authenticated", group} <= set(lost.group(1).split(", ")), lost.group(1)
        assert app not in lost.group(1).split(", ")
        may_enqueue = dict(
            conn.execute(
                "SELECT r, has_function_privilege(r, 'enqueue_progress_refresh(text, uuid)', 'EXECUTE')"
                "  FROM unnest(%s::text[]) AS r",
                [["anon", "authenticated", group, app]],
            ).fetchall()
        )
        assert may_enqueue == {"anon": False, "authenticated": False, group: False, app: True}


def test_adopt_twice_changes_nothing_the_second_time(previous_dsn: str) -> None:
    with connect(previous_dsn) as conn:
        migrate(conn, adopt=True)
        after_first = schema_of(conn)
        assert migrate(conn, adopt=True) == []
        assert schema_of(conn) == after_first
        assert migrate(conn) == []


def test_a_partial_previous_design_is_taken_over_and_the_rest_made(previous_dsn: str) -> None:
    """The previous design was rolled out in steps and its fine-grained
    materialized views given up: the take-over keeps what stands (queue,
    grants) and makes and populates the read models that are missing."""
    with connect(previous_dsn) as conn:
        conn.execute("DROP MATERIALIZED VIEW mv_audio_verse_coverage, mv_text_verse_coverage")
        conn.execute("DROP VIEW language_entity_best_text_version")
        queued = pending(conn)
        plan = "\n".join(plan_migrate(conn, adopt=True).lines())
        assert "note: not here mv_audio_verse_coverage: created (and populated) by ours" in plan
        assert "build mv_audio_verse_coverage and put it in place" in plan
        with PollingReader(previous_dsn, role=None) as reader:
            changes = "\n".join(migrate(conn, adopt=True))
        # (Reading the two that were not there fails until they are.)
        assert [e for e in reader.log.errors if "does not exist" not in e] == []
        assert "added mv_audio_verse_coverage, populated" in changes
        assert "took over mv_audio_chapter_coverage" in changes
        granted = conn.execute("SELECT has_table_privilege(%s, 'mv_audio_chapter_coverage', 'SELECT')", [READER_ROLE])
        assert granted.fetchone() == (True,)
        assert pending(conn) >= queued
        drain(conn)
        assert_read_models_match(conn)


def test_someone_elses_view_on_a_read_model_is_refused(previous_dsn: str) -> None:
    with connect(previous_dsn) as conn:
        conn.execute("CREATE VIEW dashboard_numbers AS SELECT * FROM mv_audio_version_progress_summary")
        with pytest.raises(ProgressError, match="dashboard_numbers"):
            migrate(conn, adopt=True)
        assert conn.execute("SELECT to_regclass('progress_read_model_definitions')").fetchone() == (None,)


def test_functions_and_policies_that_a_take_over_would_drop_are_refused_by_name(previous_dsn: str) -> None:
    """Replacing a read model takes with it what depends on it: an RPC returning
    its rows, a computed column taking one, a row-level security policy reading
    it (dropped, it would show the rows it hides)."""
    with connect(previous_dsn) as conn:
        conn.execute(
            "CREATE FUNCTION version_progress(v uuid) RETURNS SETOF mv_audio_version_progress_summary"
            " LANGUAGE sql STABLE AS $$ SELECT * FROM mv_audio_version_progress_summary WHERE audio_version_id = v $$"
        )
        conn.execute(
            "CREATE FUNCTION percent_done(s mv_text_version_progress_summary) RETURNS numeric"
            " LANGUAGE sql AS $$ SELECT round(100 * s.verse_fraction, 1) $$"
        )
        conn.execute("CREATE TABLE release_requests (id serial PRIMARY KEY, audio_version_id uuid)")
        conn.execute("ALTER TABLE release_requests ENABLE ROW LEVEL SECURITY")
        conn.execute(
            "CREATE POLICY only_complete ON release_requests AS RESTRICTIVE FOR SELECT USING (EXISTS ("
            " SELECT FROM mv_audio_version_progress_summary s"
            " WHERE s.audio_version_id = release_requests.audio_version_id AND s.verse_fraction = 1))"
        )
        before = schema_of(conn)
        with pytest.raises(ProgressError) as refused:
            migrate(conn, adopt=True)
        for named in ("version_progress(uuid)", "percent_done(", "policy only_complete on release_requests"):
            assert named in str(refused.value)
        assert schema_of(conn) == before
        assert conn.execute("SELECT count(*) FROM pg_policy WHERE polname = 'only_complete'").fetchone() == (1,)


def test_a_take_over_keeps_exactly_the_readers_a_read_model_had(empty_dsn: str) -> None:
    """Default privileges (Supabase grants every privilege on new tables to its
    API roles) would give a new read model readers its predecessor had taken
    away; a role that owned one keeps reading it."""
    with connect(empty_dsn) as conn:
        ensure_roles(conn, "anon", "dashboard_owner")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon")
    install_previous_design(empty_dsn)
    with connect(empty_dsn) as conn:
        conn.execute("GRANT SELECT ON mv_text_book_coverage TO anon")
        conn.execute("REVOKE ALL ON mv_text_verse_coverage FROM anon")
        conn.execute("ALTER MATERIALIZED VIEW mv_audio_book_coverage OWNER TO dashboard_owner")
        changes = "\n".join(migrate(conn, adopt=True))

        def privileges(role: str, relation: str) -> set[str]:
            wanted = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
            return {
                p
                for p in wanted
                if conn.execute("SELECT has_table_privilege(%s, %s, %s)", [role, relation, p]).fetchone()[0]
            }

        assert privileges("anon", "mv_text_verse_coverage") == set()
        assert privileges("anon", "mv_text_book_coverage") == {"SELECT"}
        assert "SELECT" in privileges("dashboard_owner", "mv_audio_book_coverage")
        assert re.search(r"took over mv_audio_book_coverage \(.*dashboard_owner", changes), changes
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM anon")


def test_a_repeatable_read_reader_open_across_the_take_over_never_sees_a_read_model_empty(
    previous_dsn: str,
) -> None:
    """A new read model's rows are written after an older snapshot: swapped in
    under a REPEATABLE READ transaction that began before them, it would look
    empty to it. The swap waits for such transactions to end."""
    finished = threading.Event()
    failures: list[BaseException] = []

    def take_over() -> None:
        try:
            with connect(previous_dsn) as conn:
                migrate(conn, adopt=True)
        except BaseException as exc:
            failures.append(exc)
        finally:
            finished.set()

    adopter = threading.Thread(target=take_over)
    with psycopg.connect(previous_dsn, autocommit=True) as reader:
        adopter.start()
        # The snapshot is taken once ours is installed, while the new read models are built.
        until = time.monotonic() + 60
        while not (
            reader.execute("SELECT to_regclass('progress_refresh_settings')").fetchone() != (None,)
            and reader.execute("SELECT 1 FROM progress_refresh_settings WHERE key = %s", [TAKEOVER_SETTING]).fetchone()
        ):
            assert time.monotonic() < until and not finished.is_set(), failures
            time.sleep(0.01)
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT 1")
        # It touches no read model meanwhile (its lock would hold the swap up anyway).
        finished.wait(timeout=8)
        covered = reader.execute("SELECT count(*) FROM mv_audio_verse_coverage").fetchone()[0]
        reader.execute("COMMIT")
    adopter.join(timeout=120)
    assert failures == []
    assert covered > 0
    with connect(previous_dsn) as conn:
        kind = conn.execute("SELECT relkind::text FROM pg_class WHERE relname = 'mv_audio_verse_coverage'").fetchone()
        assert kind == ("r",)


def test_what_a_take_over_does_not_keep_is_named(previous_dsn: str) -> None:
    """Someone's column, index or comment on a replaced read model is not kept:
    said, with an index's definition to make it again."""
    with connect(previous_dsn) as conn:
        conn.execute("CREATE INDEX mv_audio_verse_by_verse ON mv_audio_verse_coverage (verse_id)")
        conn.execute("COMMENT ON MATERIALIZED VIEW mv_audio_version_progress_summary IS 'for the dashboard'")
        conn.execute("DROP MATERIALIZED VIEW mv_text_book_coverage")
        conn.execute(
            "CREATE MATERIALIZED VIEW mv_text_book_coverage AS"
            " SELECT c.*, b.name AS book_name FROM text_book_coverage c JOIN books b ON b.id = c.book_id"
        )
        report = "\n".join(migrate(conn, adopt=True))
    assert (
        "not kept from the replaced mv_audio_verse_coverage: index CREATE INDEX mv_audio_verse_by_verse"
        " ON public.mv_audio_verse_coverage USING btree (verse_id)" in report
    ), report
    assert "not kept from the replaced mv_audio_version_progress_summary: its comment" in report, report
    assert "not kept from the replaced mv_text_book_coverage: column book_name" in report, report
    assert "not kept from the replaced mv_text_verse_coverage" not in report, report  # its key's index has a match


def test_queue_triggers_writing_through_helpers_elsewhere_or_nested_are_dropped(previous_dsn: str) -> None:
    """A trigger counts as the old queue's when it writes the queue through
    helpers in another schema, or through a helper calling another."""
    with connect(previous_dsn) as conn:
        conn.execute("CREATE SCHEMA private")
        conn.execute(
            "CREATE FUNCTION private.queue_version(k text, v uuid) RETURNS void LANGUAGE sql AS $$"
            " INSERT INTO public.progress_refresh_queue (kind, version_id) VALUES (k, v) ON CONFLICT DO NOTHING $$"
        )
        conn.execute(
            "CREATE FUNCTION note_text_version() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM private.queue_version('text', NEW.id); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER note_text_version_change AFTER UPDATE ON text_versions"
            " FOR EACH ROW EXECUTE FUNCTION note_text_version()"
        )
        conn.execute(
            "CREATE FUNCTION legacy_queue_version(k text, v uuid) RETURNS void LANGUAGE sql AS $$"
            " INSERT INTO progress_refresh_queue (kind, version_id) VALUES (k, v) ON CONFLICT DO NOTHING $$"
        )
        conn.execute(
            "CREATE FUNCTION legacy_queue_audio(v uuid) RETURNS void LANGUAGE sql"
            " AS $$ SELECT legacy_queue_version('audio', v) $$"
        )
        conn.execute(
            "CREATE FUNCTION note_audio_version() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN PERFORM legacy_queue_audio(NEW.id); RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER note_audio_version_change AFTER UPDATE ON audio_versions"
            " FOR EACH ROW EXECUTE FUNCTION note_audio_version()"
        )
        report = "\n".join(migrate(conn, adopt=True))
        for trigger in ("note_text_version_change on text_versions", "note_audio_version_change on audio_versions"):
            assert f"dropped queue trigger {trigger}" in report, report
        triggers = {row[0] for row in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        assert not {"note_text_version_change", "note_audio_version_change"} & triggers


def test_someone_elses_table_under_a_read_model_name_is_refused(empty_dsn: str) -> None:
    with connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE mv_text_book_coverage (id int)")
        with pytest.raises(ProgressError, match="mv_text_book_coverage is a table"):
            plan_migrate(conn, adopt=True)


def test_a_database_of_ours_needs_no_adoption(db) -> None:  # type: ignore[no-untyped-def]
    plan = plan_migrate(db, adopt=True)
    assert not plan.inspection.needs_adoption
    assert plan.shadows == []
    with pytest.raises(ForeignObjectsError):
        db.execute(
            "CREATE FUNCTION stray_enqueue() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN INSERT INTO progress_refresh_queue (kind, version_id) VALUES ('text', '{uuid.uuid4()}');"
            " RETURN NULL; END $$"
        )
        db.execute(
            "CREATE TRIGGER stray AFTER INSERT ON verse_texts FOR EACH STATEMENT EXECUTE FUNCTION stray_enqueue()"
        )
        migrate(db)


def test_a_take_over_that_cannot_swap_leaves_the_previous_design_working(previous_dsn: str) -> None:
    with connect(previous_dsn) as conn, connect(previous_dsn) as long_reader:
        queued = pending(conn)
        # A report that never ends holds its read lock: the swap cannot get in.
        long_reader.execute("SET application_name = 'long report'")
        long_reader.execute("BEGIN")
        long_reader.execute("SELECT count(*) FROM mv_text_book_coverage")
        reader_pid = long_reader.info.backend_pid
        with pytest.raises(ProgressError, match="could not swap") as refused:
            migrate(conn, adopt=True)
        long_reader.execute("ROLLBACK")
        # Who is in the way, so the operator knows whom to wait for.
        assert re.search(
            rf"pid {reader_pid} \(long report, idle in transaction for \d+ s\) on [a-z_, ]*mv_text_book_coverage",
            str(refused.value),
        ), refused.value

        triggers = {row[0] for row in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
        assert {"note_media_file_change", "note_media_file_verse_change", "note_verse_text_change"} <= triggers
        assert not any(t.startswith("progress_capture_") for t in triggers)
        shadows = conn.execute("SELECT relname FROM pg_class WHERE relname LIKE '%\\_\\_next'").fetchall()
        assert shadows == []
        assert conn.execute(
            "SELECT relkind::text FROM pg_class WHERE relname = 'mv_text_book_coverage'"
        ).fetchone() == ("m",)
        assert pending(conn) >= queued
        # The previous design's own capture still works, and a later --adopt completes.
        make_changes(conn, salt=5)
        migrate(conn, adopt=True)
        drain(conn)
        assert_read_models_match(conn)


def test_another_rendition_best_versions_as_materialized_views_and_a_queue_without_its_key(
    previous_dsn: str,
) -> None:
    with connect(previous_dsn) as conn:
        for kind in ("audio", "text"):
            name = f"language_entity_best_{kind}_version"
            definition = conn.execute("SELECT pg_get_viewdef(%s::regclass)", [name]).fetchone()[0]  # type: ignore[index]
            conn.execute(f"DROP VIEW {name}")
            conn.execute(f"CREATE MATERIALIZED VIEW {name} AS {definition}")
            conn.execute(f"GRANT SELECT ON {name} TO {READER_ROLE}")
        conn.execute("ALTER TABLE progress_refresh_queue DROP CONSTRAINT progress_refresh_queue_kind_version_id_key")
        conn.execute(
            "INSERT INTO progress_refresh_queue (kind, version_id)"
            " SELECT kind, version_id FROM progress_refresh_queue ORDER BY id LIMIT 1"
        )
        queued = pending(conn)
        found = "\n".join(f.line() for f in plan_migrate(conn, adopt=True).inspection.findings)
        assert "read model as a materialized view language_entity_best_audio_version" in found
        assert "queue trigger note_media_file_verse_change on media_files_verses" in found  # through a helper

        with PollingReader(previous_dsn) as reader:
            migrate(conn, adopt=True)
        assert (reader.log.errors, reader.log.empty) == ([], [])
        assert pending(conn) == queued
        duplicates = conn.execute("SELECT count(*) - count(DISTINCT (kind, version_id)) FROM progress_refresh_queue")
        assert duplicates.fetchone() == (0,)
        drain(conn)
        assert_read_models_match(conn)


def test_column_grants_and_grants_on_the_plain_views_are_kept(previous_dsn: str) -> None:
    """A role reading some columns of a summary, and the reader role reading the
    plain views (re-created by the take-over where their columns differ),
    read the same after --adopt."""
    role = f"columns_{uuid.uuid4().hex[:8]}"
    with connect(previous_dsn) as conn:
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(
                f"GRANT SELECT (audio_version_id, verse_fraction) ON mv_audio_version_progress_summary TO {role}"
            )
            migrate(conn, adopt=True)
            privileges = conn.execute(
                "SELECT has_column_privilege(%(r)s, 'mv_audio_version_progress_summary', 'verse_fraction', 'SELECT'),"
                "       has_column_privilege(%(r)s, 'mv_audio_version_progress_summary', 'total_verses', 'SELECT')",
                {"r": role},
            ).fetchone()
            assert privileges == (True, False)
            for model in READ_MODELS:
                if model.level != "best":
                    granted = conn.execute(
                        "SELECT has_table_privilege(%s, %s, 'SELECT')", [READER_ROLE, model.logical_view]
                    )
                    assert granted.fetchone() == (True,), model.logical_view
        finally:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
