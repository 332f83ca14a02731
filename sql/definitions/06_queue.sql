-- The refresh queue's life cycle (claim, finish, fail) and the SQL API of
-- SPEC section 5. Claiming comes before computing: a change committed while
-- a version is being refreshed bumps its generation, so finishing leaves it queued.

-- Every claim whose lease still runs, with whether its holder is alive:
-- false when the claim is older than the server (a restart ended every
-- session) or the holder's session is no longer in pg_stat_activity; NULL
-- (not known) when the holder check is off or no holder was recorded. The
-- next claim takes over the claims whose holder is not alive; the lease only
-- limits a holder that is alive and hung.
--
-- One join against pg_stat_activity for all claims. Without pg_read_all_stats
-- (or the privileges of the session's role) backend_start reads as NULL: then
-- the pid alone decides, so a live holder is never taken for dead; a reused
-- pid at worst leaves the claim to its lease.
CREATE OR REPLACE FUNCTION progress_claim_holders()
RETURNS TABLE (id bigint, kind text, version_id uuid, claimed_by text, claimed_at timestamptz,
               lease_until timestamptz, holder_pid int, holder_backend_start timestamptz, holder_alive boolean)
LANGUAGE sql STABLE AS $$
    SELECT q.id, q.kind, q.version_id, q.claimed_by, q.claimed_at, q.lease_until,
           q.holder_pid, q.holder_backend_start,
           CASE WHEN q.claimed_at < pg_postmaster_start_time() THEN false
                WHEN q.holder_pid IS NULL OR NOT setting.holder_check THEN NULL
                ELSE a.pid IS NOT NULL END
      FROM progress_refresh_queue q
     CROSS JOIN (SELECT progress_setting('claim_holder_check') IS DISTINCT FROM 'off' AS holder_check) setting
      -- One backend looked up per claim (pg_stat_activity would list them all on every claim).
      LEFT JOIN LATERAL (
            SELECT s.pid FROM pg_stat_get_activity(q.holder_pid) s
             WHERE q.holder_pid IS NOT NULL AND s.pid = q.holder_pid
               AND (s.backend_start = q.holder_backend_start
                    OR s.backend_start IS NULL OR q.holder_backend_start IS NULL)) a ON true
     WHERE q.lease_until >= now()
$$;

-- The entries ready to be refreshed: unclaimed, past their lease, or claimed
-- by a holder that is gone (progress_claim_holders), and past their backoff.
-- A gone holder is matched with the claim time too, so an entry another
-- worker took over meanwhile is seen as held again when its row is re-checked
-- under a row lock. A migrate or a rebuild holds the lock tried here
-- throughout: nothing is ready meanwhile. (A view, so the callers' plans
-- include it: they are made once per session, see drain_progress_refresh_queue.
-- A migration changing a queue column's type drops it first.)
CREATE OR REPLACE VIEW progress_refresh_queue_ready AS
SELECT q.* FROM progress_refresh_queue q
 WHERE pg_try_advisory_xact_lock_shared(7370214001)
   AND (q.lease_until IS NULL OR q.lease_until < now()
        OR (q.id, q.claimed_at) IN (SELECT h.id, h.claimed_at FROM progress_claim_holders() h
                                     WHERE h.holder_alive IS FALSE))
   AND (q.not_before IS NULL OR q.not_before <= now());

-- Up to p_limit ready entries (oldest first, optionally of some kinds),
-- their rows locked for this transaction: a worker's claim, which marks them
-- and commits at once. Entries whose row another session holds, or which a
-- SQL drain has picked (progress_pick_ready), are skipped, never waited for.
-- Rows are locked as they are taken, in queue order.
CREATE OR REPLACE FUNCTION progress_lock_ready(p_limit int, p_kinds text[] DEFAULT NULL)
RETURNS SETOF progress_refresh_queue
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT r.* FROM (SELECT q.* FROM progress_refresh_queue_ready q
                      WHERE (p_kinds IS NULL OR q.kind = ANY (p_kinds))
                      ORDER BY q.enqueued_at, q.id
                        FOR UPDATE SKIP LOCKED) r
     WHERE progress_try_pick_version(r.kind, r.version_id)
     LIMIT p_limit;
END
$$;

-- Up to p_limit ready entries (oldest first) for a refresh in this
-- transaction, a SQL drain's. The queue rows are not locked: a writer
-- queuing another change to one of these versions goes on at once, rather
-- than wait for the whole batch (seconds for whole versions, the whole
-- refresh under the matview strategy); its change moves the entry's
-- generation, which keeps the entry queued (progress_settle_picked). Each
-- version is marked picked instead (progress_try_pick_version): other drains
-- and workers' claims skip it until this transaction ends. Marks are tried in
-- queue order after sorting, so only the entries taken are marked.
CREATE OR REPLACE FUNCTION progress_pick_ready(p_limit int)
RETURNS SETOF progress_refresh_queue
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    SELECT r.* FROM (SELECT q.* FROM progress_refresh_queue_ready q ORDER BY q.enqueued_at, q.id OFFSET 0) r
     WHERE progress_try_pick_version(r.kind, r.version_id)
     LIMIT p_limit;
END
$$;

-- Claims up to p_limit ready entries (progress_lock_ready) with a lease,
-- recording this session as their holder: for a worker that refreshes them
-- in transactions of their own. (The SQL drains claim, refresh and settle in
-- one transaction: they only lock, since a mark would be seen by no one
-- before the commit that removes the entry.)
CREATE OR REPLACE FUNCTION progress_claim_batch(
    p_worker text, p_limit int, p_lease interval, p_kinds text[] DEFAULT NULL)
RETURNS TABLE (kind text, version_id uuid, generation bigint)
SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    UPDATE progress_refresh_queue q
       SET claimed_by = p_worker, claimed_at = now(), claimed_generation = q.generation,
           claimed_chapter_ids = q.chapter_ids,
           lease_until = now() + p_lease, holder_pid = pg_backend_pid(),
           holder_backend_start = (SELECT s.backend_start FROM pg_stat_get_activity(pg_backend_pid()) s)
      FROM progress_lock_ready(p_limit, p_kinds) AS picked
     WHERE q.id = picked.id
    RETURNING q.kind, q.version_id, q.generation;
END
$$;

-- A version back from the dead letters (a change queued it again) had
-- changes that never reached its read models: the entry that failed them was
-- dropped. The change capture queues such a version whole; one queued by a
-- writer that could not see the dead letter yet (it was written meanwhile)
-- may be refreshed by chapters, which leaves those changes out. So settling
-- takes the dead letter away and, unless the refresh just settled was
-- whole, queues the version whole again.
CREATE OR REPLACE FUNCTION progress_forgive_dead_letter(p_kind text, p_version uuid, p_refreshed_whole boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM progress_refresh_dead_letter WHERE kind = p_kind AND version_id = p_version;
    IF FOUND AND NOT p_refreshed_whole THEN
        PERFORM progress_enqueue_versions(p_kind, ARRAY[p_version]);
    END IF;
END
$$;

-- A picked entry refreshed in this transaction (progress_pick_ready) leaves
-- the queue, and its version the dead letters, unless a change arrived since
-- it was picked: its generation moved, or a writer holds its row (a change
-- not committed yet, which moves the generation when it is). Such an entry
-- stays queued for the next refresh; settling never waits for a writer.
DROP FUNCTION IF EXISTS progress_settle_locked(progress_refresh_queue);
DROP FUNCTION IF EXISTS progress_settle_locked(progress_refresh_queue, boolean);
CREATE OR REPLACE FUNCTION progress_settle_picked(p_entry progress_refresh_queue, p_refreshed_whole boolean)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM progress_refresh_queue q
     WHERE q.id = (SELECT s.id FROM progress_refresh_queue s
                    WHERE s.id = p_entry.id AND s.generation = p_entry.generation
                      FOR UPDATE SKIP LOCKED);
    IF FOUND THEN
        PERFORM progress_forgive_dead_letter(p_entry.kind, p_entry.version_id, p_refreshed_whole);
    END IF;
END
$$;

-- Done: the entry leaves the queue unless a change arrived since the claim;
-- then it is released, aged from the claim (all older changes were seen).
-- p_refreshed_whole: the whole version was refreshed, not the claim's scope
-- (claimed_chapter_ids). p_worker: the claim's holder. A worker settles only
-- its own claim: after its lease ran out the entry may have been settled by
-- another refresh and queued anew by a later change, with a generation that
-- starts again at 1, or claimed by another worker; neither is its to remove
-- or release. (Without p_worker, the caller holds the entry's row lock:
-- refresh_progress_version.)
DROP FUNCTION IF EXISTS progress_finish(text, uuid, bigint);
DROP FUNCTION IF EXISTS progress_finish(text, uuid, bigint, boolean);
CREATE OR REPLACE FUNCTION progress_finish(
    p_kind text, p_version uuid, p_generation bigint, p_refreshed_whole boolean DEFAULT false,
    p_worker text DEFAULT NULL)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
DECLARE
    claimed_whole boolean;
BEGIN
    DELETE FROM progress_refresh_queue
     WHERE kind = p_kind AND version_id = p_version AND generation = p_generation
       AND (p_worker IS NULL OR claimed_by = p_worker)
    RETURNING claimed_chapter_ids IS NULL INTO claimed_whole;
    IF NOT FOUND THEN
        UPDATE progress_refresh_queue
           SET claimed_by = NULL, lease_until = NULL, holder_pid = NULL, holder_backend_start = NULL,
               enqueued_at = coalesce(claimed_at, enqueued_at), claimed_at = NULL
         WHERE kind = p_kind AND version_id = p_version AND (p_worker IS NULL OR claimed_by = p_worker)
        RETURNING claimed_chapter_ids IS NULL INTO claimed_whole;
    END IF;
    -- (An entry gone meanwhile, taken over and settled by another worker: its
    -- scope is not known, so a dead letter left brings the version back whole.)
    PERFORM progress_forgive_dead_letter(p_kind, p_version, p_refreshed_whole OR coalesce(claimed_whole, false));
END
$$;

-- A worker's claim given back untouched, ready at once, no attempt counted:
-- its refresh was cancelled on request, not failed.
CREATE OR REPLACE FUNCTION progress_release_claim(p_kind text, p_version uuid, p_worker text)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$
    UPDATE progress_refresh_queue
       SET claimed_by = NULL, lease_until = NULL, claimed_at = NULL, holder_pid = NULL, holder_backend_start = NULL
     WHERE kind = p_kind AND version_id = p_version AND claimed_by = p_worker
$$;

-- Failed: one more attempt counted, the error kept, an exponential backoff;
-- past the attempt limit the entry moves to the dead letter table. With
-- p_worker, only that worker's claim (see progress_finish).
DROP FUNCTION IF EXISTS progress_record_failure(text, uuid, text);
CREATE OR REPLACE FUNCTION progress_record_failure(p_kind text, p_version uuid, p_error text, p_worker text DEFAULT NULL)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
DECLARE
    entry progress_refresh_queue%ROWTYPE;
BEGIN
    UPDATE progress_refresh_queue
       SET attempts = attempts + 1, last_error = p_error, claimed_by = NULL, lease_until = NULL,
           claimed_at = NULL, holder_pid = NULL, holder_backend_start = NULL,
           not_before = now() + make_interval(
               secs => progress_setting('retry_backoff_seconds')::numeric * 2 ^ attempts)
     WHERE kind = p_kind AND version_id = p_version AND (p_worker IS NULL OR claimed_by = p_worker)
    RETURNING * INTO entry;
    IF FOUND AND entry.attempts >= progress_setting('max_attempts')::int THEN
        DELETE FROM progress_refresh_queue WHERE id = entry.id;
        INSERT INTO progress_refresh_dead_letter AS dl
               (kind, version_id, attempts, last_error, first_queued_at)
        VALUES (entry.kind, entry.version_id, entry.attempts, entry.last_error, entry.enqueued_at)
        ON CONFLICT (kind, version_id) DO UPDATE
           SET attempts = dl.attempts + EXCLUDED.attempts, last_error = EXCLUDED.last_error,
               failed_at = now();
    END IF;
END
$$;

-- Who is refreshing in this session: 'dagster:<run id>' or 'cli' when the
-- Python drain set progress.refresh_source, 'sql' otherwise (psql, pg_cron).
CREATE OR REPLACE FUNCTION progress_refresh_source() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('progress.refresh_source', true), ''), 'sql')
$$;

-- Records a finished refresh of a version in progress_refresh_log, in the
-- refresh's own transaction (so it commits with it), with when it started and
-- the rows it wrote, in all and per read model (p_done; NULL for a whole-view
-- refresh). p_first_enqueued_at is the queue entry's enqueued_at, read in that
-- transaction before the entry is settled (NULL: the version was not queued).
DROP FUNCTION IF EXISTS progress_log_refresh(text, uuid, bigint);
DROP FUNCTION IF EXISTS progress_log_refresh(text, uuid, bigint, timestamptz);
DROP FUNCTION IF EXISTS progress_log_refresh(text, uuid, progress_refresh_count[], timestamptz);
CREATE OR REPLACE FUNCTION progress_log_refresh(
    p_kind text, p_version uuid, p_done progress_refresh_count[], p_first_enqueued_at timestamptz,
    p_started_at timestamptz)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_refresh_log (kind, version_id, first_enqueued_at, started_at, refreshed_at, source,
                                      rows_written, rows_by_read_model)
    SELECT p_kind, p_version, p_first_enqueued_at, p_started_at, clock_timestamp(), progress_refresh_source(),
           CASE WHEN p_done IS NOT NULL THEN coalesce(sum(c.inserted + c.updated + c.deleted), 0)::bigint END,
           jsonb_object_agg(c.read_model, c.inserted + c.updated + c.deleted)
      FROM unnest(p_done) AS c;
END
$$;

-- Prunes a bounded number of log rows past refresh_log_keep_days that no one
-- else is pruning: once per refreshing call, as new rows arrive.
CREATE OR REPLACE FUNCTION progress_prune_refresh_log() RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM progress_refresh_log
     WHERE id IN (SELECT id FROM progress_refresh_log
                   WHERE refreshed_at < now() - make_interval(days => progress_setting('refresh_log_keep_days')::int)
                   ORDER BY refreshed_at LIMIT 1000
                     FOR UPDATE SKIP LOCKED);
END
$$;

-- A refresh's transaction commits without waiting for its WAL to reach disk
-- when the refresh is all it does (it wrote nothing before): a crash can then
-- lose the refresh, but only together with the settling of its queue entry,
-- which stays queued and is refreshed again. Read models are derived data;
-- the changes themselves were committed by their writers. A transaction that
-- wrote before the refresh keeps the durability its writer chose.
CREATE OR REPLACE FUNCTION progress_commit_refresh_lazily() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END
$$;

-- Whether a statement that ran p_elapsed (by default: this one, so far) ran
-- past the session's statement_timeout: a cancel then came from the timeout,
-- otherwise someone asked for it (pg_cancel_backend, a client giving up).
-- Told by time, not by the message, which the server may word in another
-- language. (A worker asks it about its statement after the cancel.)
DROP FUNCTION IF EXISTS progress_statement_timed_out();
CREATE OR REPLACE FUNCTION progress_statement_timed_out(
    p_elapsed interval DEFAULT clock_timestamp() - statement_timestamp())
RETURNS boolean LANGUAGE sql VOLATILE AS $$
    SELECT current_setting('statement_timeout') NOT IN ('0', '')
       AND p_elapsed >= current_setting('statement_timeout')::interval
$$;

-- Refreshes a version the caller holds (claimed, or picked by the SQL drain)
-- and logs it. A failure rolls back this version only and is recorded
-- (error); the caller goes on with the rest. A statement timeout (the
-- caller's, as pg_cron jobs and API calls set) is recorded the same way, and
-- `cancelled` tells the caller to stop: otherwise a version slower than the
-- timeout would cancel every drain before anything is recorded, and hold up
-- the versions behind it for good. A cancel someone asked for is no failure
-- of the version: it ends the call, whose work is rolled back and stays
-- queued as it was, its attempts not counted.
--
-- Without language entities (the caller refreshes them once for its batch),
-- a chapter-scoped refresh goes straight to the chapter refresh, the
-- cheapest path there is: the SQL drain's hot path. Such a caller has checked
-- the storage strategy in this transaction (the SQL drain, which a migrate
-- cannot overtake: progress_refresh_queue_ready) or leaves it to this function
-- (progress_refresh_claimed). Each function call on this path costs about as
-- much as a level's work, so the kind is switched here rather than through
-- progress_refresh_version_levels, which does the same for the other paths.
DROP FUNCTION IF EXISTS progress_refresh_held(text, uuid, text[], timestamptz, boolean);
CREATE OR REPLACE FUNCTION progress_refresh_held(
    p_kind text, p_version uuid, p_chapters text[], p_first_enqueued_at timestamptz, p_with_entities boolean,
    OUT done progress_refresh_count[], OUT error text, OUT cancelled boolean)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
BEGIN
    cancelled := false;
    BEGIN
        IF p_with_entities OR p_chapters IS NULL THEN
            done := ARRAY(SELECT c FROM progress_refresh_version(p_kind, p_version, p_with_entities, p_chapters) AS c);
        ELSIF p_kind = 'audio' THEN
            PERFORM progress_lock_version(p_kind, p_version);
            done := ARRAY(SELECT c FROM progress_refresh_chapters_audio(p_version, p_chapters) AS c);
        ELSE
            PERFORM progress_lock_version(p_kind, p_version);
            done := ARRAY(SELECT c FROM progress_refresh_chapters_text(p_version, p_chapters) AS c);
        END IF;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        cancelled := SQLSTATE = '57014';  -- query_canceled: OTHERS leaves it out
        IF cancelled AND NOT progress_statement_timed_out() THEN
            RAISE;
        END IF;
        error := SQLERRM;
        PERFORM progress_record_failure(p_kind, p_version, error);
        RETURN;
    END;
    PERFORM progress_log_refresh(p_kind, p_version, done, p_first_enqueued_at, started);
END
$$;

-- Refreshes a claimed version (progress_refresh_held): a failure comes back
-- as one row with its error. A claim no longer held by
-- p_worker (its lease expired and another worker took it) is left alone: no
-- rows are returned. With p_with_entities false the caller refreshes the
-- language entities itself (once per batch, see drain_progress_refresh_queue).
--
-- The caller settles the entry afterwards with progress_finish(), in its own
-- transaction: a refresh holding language-entity locks must never wait for a
-- queue row, which a drain may hold while it waits for those locks.
DROP FUNCTION IF EXISTS progress_refresh_claimed(text, uuid, bigint, boolean);
DROP FUNCTION IF EXISTS progress_refresh_claimed(text, uuid, bigint, text, boolean);
CREATE OR REPLACE FUNCTION progress_refresh_claimed(
    p_kind text, p_version uuid, p_worker text, p_with_entities boolean DEFAULT true)
RETURNS TABLE (read_model text, inserted bigint, updated bigint, deleted bigint, error text)
SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan SET jit = off
LANGUAGE plpgsql AS $$
DECLARE
    done progress_refresh_count[];
    failure text;
    scope text[];
    first_enqueued_at timestamptz;
BEGIN
    -- A full rebuild under way (or waiting for the refreshes under way)
    -- refreshes this version too: the claim is given back, uncounted, rather
    -- than wait the rebuild out. Its entry is settled by the rebuild, or is
    -- ready again after it.
    IF NOT pg_try_advisory_xact_lock_shared(progress_full_rebuild_lock_key()) THEN
        PERFORM progress_release_claim(p_kind, p_version, p_worker);
        RETURN;
    END IF;
    PERFORM progress_commit_refresh_lazily();
    -- The scope recorded by the claim (NULL: the whole version). Chapters
    -- changed since bumped the generation and stay queued for the next claim.
    SELECT q.claimed_chapter_ids, q.enqueued_at INTO scope, first_enqueued_at FROM progress_refresh_queue q
     WHERE q.kind = p_kind AND q.version_id = p_version AND q.claimed_by = p_worker;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- (The matview strategy refreshes everything, entities included: a claim
    -- made before a migrate switched to it is refreshed that way.)
    SELECT r.done, r.error INTO done, failure
      FROM progress_refresh_held(p_kind, p_version, scope, first_enqueued_at,
                                 p_with_entities OR progress_storage_strategy() = 'matview') AS r;
    IF failure IS NOT NULL THEN
        RETURN QUERY SELECT NULL::text, 0::bigint, 0::bigint, 0::bigint, failure;
        RETURN;
    END IF;
    PERFORM progress_prune_refresh_log();
    RETURN QUERY SELECT c.read_model, c.inserted, c.updated, c.deleted, NULL::text FROM unnest(done) AS c;
END
$$;


-- Versions a caller may name: existing ones, and deleted ones that still have
-- stored rows to remove.
CREATE OR REPLACE FUNCTION progress_check_version(p_kind text, p_version uuid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM progress_check_kind(p_kind);
    IF p_version IS NULL THEN
        RAISE EXCEPTION 'version id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_kind = 'audio' AND EXISTS (SELECT FROM audio_versions WHERE id = p_version)
       OR p_kind = 'text' AND EXISTS (SELECT FROM text_versions WHERE id = p_version) THEN
        RETURN;
    END IF;
    IF NOT progress_read_models_readable()
       OR p_kind = 'audio' AND NOT EXISTS (SELECT FROM mv_audio_version_progress_summary
                                            WHERE audio_version_id = p_version)
       OR p_kind = 'text' AND NOT EXISTS (SELECT FROM mv_text_version_progress_summary
                                           WHERE text_version_id = p_version) THEN
        RAISE EXCEPTION 'unknown % version %', p_kind, p_version USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION progress_drain_matviews()
RETURNS TABLE (kind text, version_id uuid)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    entries progress_refresh_queue[];
    entry progress_refresh_queue;
    started timestamptz;
BEGIN
    -- One refresh of everything at a time: another drain's covers what this
    -- one would (as far as it had seen), and what arrived since stays queued.
    IF NOT pg_try_advisory_xact_lock(5, 0) THEN
        RETURN;
    END IF;
    -- Nothing locked, not even the versions: however long the refresh, a
    -- writer queuing a change never waits for it (progress_settle_picked).
    entries := ARRAY(SELECT q FROM progress_refresh_queue_ready q);
    IF cardinality(entries) = 0 THEN
        RETURN;
    END IF;
    started := clock_timestamp();
    PERFORM progress_refresh_matviews(true);
    FOREACH entry IN ARRAY entries LOOP
        PERFORM progress_log_refresh(entry.kind, entry.version_id, NULL, entry.enqueued_at, started);
        PERFORM progress_settle_picked(entry, true);
        kind := entry.kind;
        version_id := entry.version_id;
        RETURN NEXT;
    END LOOP;
    PERFORM progress_prune_refresh_log();
END
$$;

CREATE OR REPLACE FUNCTION progress_mark_populated() RETURNS void SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$
    INSERT INTO progress_refresh_settings (key, value) VALUES ('populated_at', now()::text)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
$$;

-- Read models filled by drains rather than a rebuild are populated too, once
-- nothing is queued and every live version has its summary row: recorded
-- once, so `status` tells the truth and the safe rebuild goes concurrent.
-- Returns when the read models were populated (NULL: not yet).
CREATE OR REPLACE FUNCTION progress_mark_populated_if_complete() RETURNS timestamptz
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    -- Once populated, nothing to check: the check below locks both summaries
    -- (a statement locks every table it names), and a drain that refreshed
    -- must not then wait behind someone holding one of them.
    IF progress_setting('populated_at') IS NOT NULL THEN
        RETURN progress_setting('populated_at')::timestamptz;
    END IF;
    IF progress_read_models_readable()
       AND NOT EXISTS (SELECT FROM progress_refresh_queue)
       AND NOT EXISTS (SELECT FROM audio_versions v
                        WHERE v.deleted_at IS NULL
                          AND NOT EXISTS (SELECT FROM mv_audio_version_progress_summary s
                                           WHERE s.audio_version_id = v.id))
       AND NOT EXISTS (SELECT FROM text_versions v
                        WHERE v.deleted_at IS NULL
                          AND NOT EXISTS (SELECT FROM mv_text_version_progress_summary s
                                           WHERE s.text_version_id = v.id)) THEN
        PERFORM progress_mark_populated();
    END IF;
    RETURN progress_setting('populated_at')::timestamptz;
END
$$;

-- After a rebuild every queued change older than the rebuild is reflected:
-- entries whose generation did not move meanwhile leave the queue. An entry
-- another transaction holds (a writer queuing a change, a drain) is skipped,
-- never waited for: that writer may be waiting for the rows the rebuild
-- wrote (a deadlock); it stays queued and is refreshed again, which is only
-- work.
-- So do the dead letters of before the rebuild: one written meanwhile (a
-- worker's last attempt failing on the rebuild's locks) holds a change the
-- rebuild may not have seen, and stays.
CREATE OR REPLACE FUNCTION progress_settle_after_rebuild(p_before jsonb) RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$
    DELETE FROM progress_refresh_queue
     WHERE id IN (SELECT q.id FROM progress_refresh_queue q
                    JOIN jsonb_to_recordset(p_before -> 'queue') AS b (id bigint, generation bigint)
                      ON q.id = b.id AND q.generation = b.generation
                   WHERE q.lease_until IS NULL
                     FOR UPDATE OF q SKIP LOCKED);
    DELETE FROM progress_refresh_dead_letter d
     USING jsonb_to_recordset(p_before -> 'dead_letters') AS b (kind text, version_id uuid, attempts int,
                                                                 failed_at timestamptz)
     WHERE (d.kind, d.version_id, d.attempts, d.failed_at) = (b.kind, b.version_id, b.attempts, b.failed_at);
$$;

-- The queue entries and dead letters as a rebuild starts (see above).
CREATE OR REPLACE FUNCTION progress_queue_snapshot() RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'queue', (SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'generation', generation)), '[]')
                    FROM progress_refresh_queue),
        'dead_letters', (SELECT coalesce(jsonb_agg(jsonb_build_object('kind', kind, 'version_id', version_id,
                                                                      'attempts', attempts, 'failed_at', failed_at)),
                                         '[]')
                           FROM progress_refresh_dead_letter))
$$;

-- Drops every index of a table, its key included, and returns the statements
-- that re-create them exactly (names, constraints, user-added indexes).
CREATE OR REPLACE FUNCTION progress_drop_indexes(p_table regclass) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    ddl text[];
    dropping text[];
    statement text;
BEGIN
    SELECT coalesce(array_agg(CASE WHEN c.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
                                   ELSE format('ALTER TABLE %s ADD CONSTRAINT %I %s', p_table, c.conname,
                                               pg_get_constraintdef(c.oid)) END
                              ORDER BY i.indisprimary DESC, i.indexrelid), '{}'),
           coalesce(array_agg(CASE WHEN c.oid IS NULL THEN format('DROP INDEX %s', i.indexrelid::regclass)
                                   ELSE format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, c.conname) END), '{}')
      INTO ddl, dropping
      FROM pg_index i
      LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
                               AND c.contype IN ('p', 'u', 'x')
     WHERE i.indrelid = p_table;
    FOREACH statement IN ARRAY dropping LOOP
        EXECUTE statement;
    END LOOP;
    RETURN ddl;
END
$$;

-- Rebuilds every read model, level by level. Concurrently, only rows that
-- differ are written and readers keep reading the previous rows; otherwise
-- the read models are emptied and refilled, and readers wait (like REFRESH
-- MATERIALIZED VIEW without CONCURRENTLY): the fastest first populate. Queue
-- entries older than the rebuild are settled by it.
CREATE OR REPLACE FUNCTION progress_rebuild_all(p_concurrently boolean) RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    before jsonb;
    index_ddl text[];
    ddl text;
BEGIN
    -- One rebuild at a time, and no drain or worker claiming meanwhile (they
    -- take this lock shared, see progress_refresh_queue_ready): a drain
    -- batch holds rows of several versions and a rebuild writes every
    -- version's, so the two would lock rows in opposite orders and
    -- deadlock. Drains under way finish first; what is queued meanwhile
    -- waits for the rebuild.
    PERFORM pg_advisory_xact_lock(7370214001);
    IF NOT p_concurrently THEN
        -- Before anything is locked: refreshes under way end first.
        PERFORM pg_advisory_xact_lock(progress_full_rebuild_lock_key());
    END IF;
    before := progress_queue_snapshot();
    -- A rebuild trusts nothing stored: the bible versions' counts, the
    -- versions with mapped files and the ranges' chapters too.
    PERFORM progress_recount_bible_versions(NULL);
    PERFORM progress_list_mapped_audio_versions();
    PERFORM progress_list_range_files(NULL);
    IF progress_storage_strategy() = 'matview' THEN
        PERFORM progress_refresh_matviews(p_concurrently);
    ELSIF p_concurrently THEN
        FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
            EXECUTE format('SELECT * FROM %I()', 'progress_rebuild_' || d.logical_view);
        END LOOP;
    ELSE
        EXECUTE 'TRUNCATE ' || (SELECT string_agg(quote_ident(stored_name), ', ')
                                  FROM progress_read_model_definitions);
        FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
            -- Like REFRESH, build each index once over the finished rows rather
            -- than inserting into it row by row: several times faster. The
            -- table is locked by the TRUNCATE, so nobody sees it without them.
            -- Rows go in key order, so each version's rows share a few pages
            -- and a per-version refresh reads those, not one page per row.
            index_ddl := progress_drop_indexes(d.stored_name::regclass);
            EXECUTE format('INSERT INTO %I SELECT * FROM (%s) r ORDER BY %s', d.stored_name,
                           d.body,
                           progress_column_list(d.key_columns));
            FOREACH ddl IN ARRAY index_ddl LOOP
                EXECUTE ddl;
            END LOOP;
        END LOOP;
    END IF;
    PERFORM progress_settle_after_rebuild(before);
    PERFORM progress_mark_populated();
END
$$;
