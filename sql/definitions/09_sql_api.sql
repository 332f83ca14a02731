-- The SQL API (SPEC section 5): the names callers (psql, pg_cron, a Supabase
-- RPC, the Dagster code location) use. Kept apart from the functions behind
-- them: a take-over of the previous design, whose functions hold these names,
-- replaces them in the same transaction that swaps the read models in.

-- Called from an app's own trigger (the previous design's enqueue only
-- inserted a row), a version that is not there, or none, is nothing to queue:
-- the app's write goes on. Called directly, it is an error.
CREATE OR REPLACE FUNCTION enqueue_progress_refresh(kind text, version_id uuid) RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM progress_check_version(kind, version_id);
    EXCEPTION WHEN no_data_found OR null_value_not_allowed THEN
        IF pg_trigger_depth() > 0 THEN
            RETURN;
        END IF;
        RAISE;
    END;
    PERFORM progress_enqueue_versions(kind, ARRAY[version_id]);
END
$$;

-- Refreshes one version now, queued or not; its queue entry, if any, is
-- settled as a drain would.
CREATE OR REPLACE FUNCTION refresh_progress_version(kind text, version_id uuid)
RETURNS SETOF progress_refresh_count SECURITY DEFINER SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan SET jit = off
LANGUAGE plpgsql AS $$
DECLARE
    queued_generation bigint;
    first_enqueued_at timestamptz;
    done progress_refresh_count[];
    started timestamptz := clock_timestamp();
BEGIN
    -- Waits for a full rebuild under way (see progress_full_rebuild_lock_key).
    PERFORM pg_advisory_xact_lock_shared(progress_full_rebuild_lock_key());
    PERFORM progress_check_version(kind, version_id);
    PERFORM progress_commit_refresh_lazily();
    -- The entry is locked before anything else, as in progress_refresh_claimed.
    SELECT q.generation, q.enqueued_at INTO queued_generation, first_enqueued_at FROM progress_refresh_queue q
     WHERE q.kind = refresh_progress_version.kind AND q.version_id = refresh_progress_version.version_id
       FOR UPDATE;
    done := ARRAY(SELECT c FROM progress_refresh_version(kind, version_id) AS c);
    PERFORM progress_log_refresh(kind, version_id, done, first_enqueued_at, started);
    PERFORM progress_prune_refresh_log();
    RETURN QUERY SELECT * FROM unnest(done);
    IF queued_generation IS NOT NULL THEN
        PERFORM progress_finish(kind, version_id, queued_generation, true);
    END IF;
END
$$;

-- Refreshes one batch of queued versions in this transaction and returns
-- those refreshed; call until it returns no rows. Failed versions are retried
-- later with backoff; language entities are refreshed once, at the end of the
-- batch, in sorted order, so concurrent drains never deadlock. The batch is
-- picked, refreshed and settled in this one transaction: its versions are
-- locked (other drains and workers skip them meanwhile), its queue rows are
-- not (writers never wait for it, see progress_pick_ready).
--
-- Every statement under a refresh is planned once per session (a generic
-- plan; the functions it calls inherit the setting): they are key lookups
-- whose plan does not depend on the values. Left to choose, PostgreSQL plans
-- a statement with parameters afresh on each of its first five runs in a
-- session: the first drains of a session (a CLI call, a pg_cron job, a
-- Dagster run) spent more time planning their bookkeeping (the queue claim,
-- the log) than running it.
CREATE OR REPLACE FUNCTION drain_progress_refresh_queue()
RETURNS TABLE (kind text, version_id uuid) SECURITY DEFINER SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan SET jit = off
LANGUAGE plpgsql AS $$
DECLARE
    batch progress_refresh_queue[];
    entry progress_refresh_queue;
    refreshed progress_refresh_queue[] := '{}';
    failure text;
    cancelled boolean;
    audio_entities uuid[] := '{}';
    text_entities uuid[] := '{}';
BEGIN
    -- The last call of a drain finds nothing: it says so at once. Read
    -- models filled by drains alone (pg_cron's) are recorded populated then,
    -- as the Python drains do, so the safe rebuild goes concurrent (once
    -- recorded, this is one settings lookup).
    IF NOT EXISTS (SELECT FROM progress_refresh_queue) THEN
        PERFORM progress_mark_populated_if_complete();
        RETURN;
    END IF;
    PERFORM progress_commit_refresh_lazily();
    IF progress_storage_strategy() = 'matview' THEN
        -- Everything is refreshed at once, so every ready entry is claimed first.
        RETURN QUERY SELECT * FROM progress_drain_matviews();
        RETURN;
    END IF;
    -- Picked here, outside the block below: a rolled-back block would let
    -- its version locks go.
    batch := ARRAY(SELECT q FROM progress_pick_ready(progress_setting('drain_batch_size')::int) AS q);
    BEGIN
        FOREACH entry IN ARRAY batch LOOP
            IF entry.kind = 'audio' THEN
                audio_entities := audio_entities
                    || progress_affected_language_entities('audio', ARRAY[entry.version_id]);
            ELSE
                text_entities := text_entities
                    || progress_affected_language_entities('text', ARRAY[entry.version_id]);
            END IF;
            SELECT r.error, r.cancelled INTO failure, cancelled
              FROM progress_refresh_held(entry.kind, entry.version_id, entry.chapter_ids, entry.enqueued_at, false) AS r;
            EXIT WHEN cancelled;  -- recorded; the rest stay queued for the next call
            CONTINUE WHEN failure IS NOT NULL;  -- recorded; the rest go on
            PERFORM progress_settle_picked(entry, entry.chapter_ids IS NULL);
            refreshed := refreshed || entry;
        END LOOP;
        -- (Called by name, not through progress_refresh_language_entities: one call fewer.)
        IF cardinality(audio_entities) > 0 THEN
            PERFORM progress_refresh_entities_audio(audio_entities);
        END IF;
        IF cardinality(text_entities) > 0 THEN
            PERFORM progress_refresh_entities_text(text_entities);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- A language entity's refresh failed (a version's own failure is
        -- caught in progress_refresh_held), and with it the whole batch: it is
        -- refreshed again version by version, each with its language
        -- entities, so the failure is recorded against the versions whose
        -- entities fail and the others go on.
        refreshed := '{}';
        -- The batch's entities locked first, in the order above, so this
        -- path too never deadlocks with another drain.
        PERFORM progress_lock_language_entities('audio', audio_entities);
        PERFORM progress_lock_language_entities('text', text_entities);
        FOREACH entry IN ARRAY batch LOOP
            SELECT r.error, r.cancelled INTO failure, cancelled
              FROM progress_refresh_held(entry.kind, entry.version_id, entry.chapter_ids, entry.enqueued_at, true) AS r;
            EXIT WHEN cancelled;
            CONTINUE WHEN failure IS NOT NULL;
            PERFORM progress_settle_picked(entry, entry.chapter_ids IS NULL);
            refreshed := refreshed || entry;
        END LOOP;
    END;
    FOREACH entry IN ARRAY refreshed LOOP
        kind := entry.kind;
        version_id := entry.version_id;
        RETURN NEXT;
    END LOOP;
    IF cardinality(refreshed) > 0 THEN
        PERFORM progress_prune_refresh_log();
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION refresh_progress_materialized_views_full() RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$ SELECT progress_rebuild_all(false) $$;

CREATE OR REPLACE FUNCTION refresh_progress_materialized_views_concurrently() RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$ SELECT progress_rebuild_all(true) $$;

CREATE OR REPLACE FUNCTION refresh_progress_materialized_views_safe() RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF progress_setting('populated_at') IS NULL AND progress_storage_strategy() = 'table'
       OR NOT progress_read_models_readable() THEN
        PERFORM refresh_progress_materialized_views_full();
    ELSE
        PERFORM refresh_progress_materialized_views_concurrently();
    END IF;
END
$$;

-- Puts dead-lettered versions back in the queue with a fresh attempt count.
CREATE OR REPLACE FUNCTION requeue_progress_dead_letters()
RETURNS TABLE (kind text, version_id uuid) SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
-- The conflict target names the queue's columns (its unique constraint may be
-- named otherwise in a database taken over from the previous design).
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH moved AS (DELETE FROM progress_refresh_dead_letter RETURNING *)
    INSERT INTO progress_refresh_queue AS q (kind, version_id)
    SELECT m.kind, m.version_id FROM moved m ORDER BY 1, 2
    -- A dead letter's version comes back whole (see progress_forgive_dead_letter):
    -- an entry already there may hold only the chapters changed since.
    ON CONFLICT (kind, version_id) DO UPDATE
       SET attempts = 0, not_before = NULL, generation = q.generation + 1, chapter_ids = NULL
    RETURNING q.kind, q.version_id;
END
$$;
