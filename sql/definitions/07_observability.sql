-- What users and the Dagster checks read about the product's health.

-- Depth of the queue (optionally of one kind), how many entries are ready
-- now, and the ages of the oldest entry and of the oldest ready entry. A
-- claim whose holder is gone counts as ready (the next claim takes it over),
-- not as claimed.
DROP FUNCTION IF EXISTS progress_queue_state();
CREATE OR REPLACE FUNCTION progress_queue_state(p_kind text DEFAULT NULL)
RETURNS TABLE (depth bigint, ready bigint, claimed bigint, retrying bigint,
               oldest_enqueued_at timestamptz, oldest_age_seconds double precision,
               oldest_ready_age_seconds double precision, dead_letters bigint)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    WITH q AS (
        SELECT q.enqueued_at, q.attempts,
               q.lease_until >= now() AND h.holder_alive IS NOT FALSE AS is_claimed,
               (q.lease_until IS NULL OR q.lease_until < now() OR h.holder_alive IS FALSE)
                   AND (q.not_before IS NULL OR q.not_before <= now()) AS is_ready
          FROM progress_refresh_queue q
          LEFT JOIN progress_claim_holders() h ON h.id = q.id
         WHERE p_kind IS NULL OR q.kind = p_kind)
    SELECT count(*),
           count(*) FILTER (WHERE is_ready),
           count(*) FILTER (WHERE is_claimed),
           count(*) FILTER (WHERE attempts > 0),
           min(enqueued_at),
           coalesce(extract(epoch FROM now() - min(enqueued_at))::double precision, 0),
           coalesce(extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE is_ready))::double precision, 0),
           (SELECT count(*) FROM progress_refresh_dead_letter WHERE p_kind IS NULL OR kind = p_kind)
      FROM q
$$;

-- Entries whose last refresh failed and that wait out their backoff, for
-- `progress-refresh status`: how often they failed, why the last time, and
-- when the next try may start (NULL: now). Soonest first.
CREATE OR REPLACE FUNCTION progress_retrying(p_limit int DEFAULT 20)
RETURNS TABLE (kind text, version_id uuid, attempts int, last_error text, next_try_at timestamptz,
               enqueued_at timestamptz)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    SELECT q.kind, q.version_id, q.attempts, q.last_error, q.not_before, q.enqueued_at
      FROM progress_refresh_queue q
     WHERE q.attempts > 0
     ORDER BY q.not_before NULLS FIRST, q.enqueued_at
     LIMIT p_limit
$$;

-- Claimed entries, for `progress-refresh status`: who holds each (the
-- worker's name and its server session), whether that session is alive
-- (NULL: not checked, see claim_holder_check), and when another worker may
-- take the entry over: at the next claim when the holder is gone, else when
-- its lease ends (a live holder keeps it while it works).
CREATE OR REPLACE FUNCTION progress_claims(p_kind text DEFAULT NULL)
RETURNS TABLE (kind text, version_id uuid, claimed_by text, holder_pid int, holder_backend_start timestamptz,
               claimed_at timestamptz, lease_until timestamptz, holder_alive boolean, taken_over text)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    SELECT h.kind, h.version_id, h.claimed_by, h.holder_pid, h.holder_backend_start,
           h.claimed_at, h.lease_until, h.holder_alive,
           CASE WHEN h.holder_alive IS FALSE THEN 'at the next claim' ELSE 'when its lease ends' END
      FROM progress_claim_holders() h
     WHERE p_kind IS NULL OR h.kind = p_kind
     ORDER BY h.claimed_by, h.claimed_at, h.kind, h.version_id
$$;

-- Rows in which a read model and its logical view differ: for the given
-- scopes (versions or language entities), or for the whole read model less
-- the excluded scopes. A row counts once whether it is missing, extra or
-- different (its key is counted, not the stored row and the view's row).
-- Scopes are compared one at a time with an equality, which the planner
-- pushes into every level of the view.
DROP FUNCTION IF EXISTS progress_count_mismatches(text, text, text, uuid[]);
CREATE OR REPLACE FUNCTION progress_count_mismatches(
    p_read_model text, p_logical_view text, p_scope_column text DEFAULT NULL,
    p_scopes uuid[] DEFAULT NULL, p_exclude uuid[] DEFAULT NULL)
RETURNS bigint
SECURITY DEFINER SET search_path FROM CURRENT SET jit = off
LANGUAGE plpgsql STABLE AS $$
DECLARE
    compare text := 'SELECT count(DISTINCT (%4$s)) FROM ((SELECT * FROM %1$I WHERE %3$s EXCEPT ALL SELECT * FROM %2$I WHERE %3$s)
                                          UNION ALL
                                          (SELECT * FROM %2$I WHERE %3$s EXCEPT ALL SELECT * FROM %1$I WHERE %3$s)) d';
    -- (Every read model has a key; a table not listed counts whole rows.)
    key text := coalesce((SELECT progress_column_list(d.key_columns) FROM progress_read_model_definitions d
                           WHERE d.stored_name = p_read_model), 'd');
    scope uuid;
    differing bigint := 0;
    part bigint;
BEGIN
    IF p_scopes IS NOT NULL THEN
        FOREACH scope IN ARRAY p_scopes LOOP
            EXECUTE format(compare, p_read_model, p_logical_view, format('%I = $1', p_scope_column), key)
               INTO part USING scope;
            differing := differing + part;
        END LOOP;
        RETURN differing;
    END IF;
    EXECUTE format(compare, p_read_model, p_logical_view,
                   CASE WHEN p_exclude IS NULL OR p_scope_column IS NULL THEN 'true'
                        ELSE format('%I <> ALL ($1)', p_scope_column) END, key)
       INTO differing USING p_exclude;
    RETURN differing;
END
$$;

-- Queues every version (optionally of one kind) that exists or still has
-- stored rows: a full backfill through the queue, resumable, since what is
-- done leaves the queue.
DROP FUNCTION IF EXISTS progress_enqueue_all_versions();
CREATE OR REPLACE FUNCTION progress_enqueue_all_versions(p_kind text DEFAULT NULL) RETURNS bigint
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    audio_ids uuid[] := '{}';
    text_ids uuid[] := '{}';
BEGIN
    IF p_kind IS NULL OR p_kind = 'audio' THEN
        audio_ids := ARRAY(SELECT id FROM audio_versions);
        IF progress_read_models_readable() THEN
            audio_ids := ARRAY(SELECT unnest(audio_ids)
                               UNION SELECT audio_version_id FROM mv_audio_version_progress_summary);
        END IF;
        PERFORM progress_enqueue_versions('audio', audio_ids);
    END IF;
    IF p_kind IS NULL OR p_kind = 'text' THEN
        text_ids := ARRAY(SELECT id FROM text_versions);
        IF progress_read_models_readable() THEN
            text_ids := ARRAY(SELECT unnest(text_ids)
                              UNION SELECT text_version_id FROM mv_text_version_progress_summary);
        END IF;
        PERFORM progress_enqueue_versions('text', text_ids);
    END IF;
    RETURN cardinality(audio_ids) + cardinality(text_ids);
END
$$;

-- Scopes whose stored rows may rightly lag their logical view now: versions
-- still queued or dead-lettered, or for the best-version read models the
-- language entities those versions belong to or lead. The checks leave them out.
CREATE OR REPLACE FUNCTION progress_unsettled_scopes(p_kind text, p_language_entities boolean)
RETURNS uuid[]
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    versions uuid[] := ARRAY(SELECT version_id FROM progress_refresh_queue WHERE kind = p_kind
                             UNION SELECT version_id FROM progress_refresh_dead_letter WHERE kind = p_kind);
BEGIN
    IF p_language_entities THEN
        RETURN progress_affected_language_entities(p_kind, versions);
    END IF;
    RETURN versions;
END
$$;

-- Rows and bytes per read model: exact counts for tables under a million
-- rows, the planner's estimate above that (counting tens of millions of rows
-- on every run would cost more than the refresh).
CREATE OR REPLACE FUNCTION progress_read_model_sizes()
RETURNS TABLE (read_model text, row_count bigint, total_bytes bigint, estimated boolean)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    estimate real;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        read_model := d.stored_name;
        total_bytes := pg_total_relation_size(d.stored_name::regclass);
        SELECT reltuples INTO estimate FROM pg_class WHERE oid = d.stored_name::regclass;
        estimated := estimate >= 1000000;
        IF estimated THEN
            row_count := estimate::bigint;
        ELSIF progress_read_models_readable() THEN
            EXECUTE format('SELECT count(*) FROM %I', d.stored_name) INTO row_count;
        ELSE
            row_count := 0;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Name and deletion of named versions that exist or still have stored rows
-- (a hard-deleted version's rows are removed by its next refresh).
CREATE OR REPLACE FUNCTION progress_version_states(p_kinds text[], p_versions uuid[])
RETURNS TABLE (kind text, version_id uuid, name text, deleted boolean)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    SELECT n.kind, n.version_id, coalesce(a.name, t.name),
           coalesce(a.id, t.id) IS NULL OR coalesce(a.deleted_at, t.deleted_at) IS NOT NULL
      FROM unnest(p_kinds, p_versions) AS n (kind, version_id)
      LEFT JOIN audio_versions a ON n.kind = 'audio' AND a.id = n.version_id
      LEFT JOIN text_versions t ON n.kind = 'text' AND t.id = n.version_id
     WHERE coalesce(a.id, t.id) IS NOT NULL
        OR CASE WHEN progress_read_models_readable() THEN
               n.kind = 'audio' AND EXISTS (SELECT FROM mv_audio_version_progress_summary s
                                             WHERE s.audio_version_id = n.version_id)
               OR n.kind = 'text' AND EXISTS (SELECT FROM mv_text_version_progress_summary s
                                               WHERE s.text_version_id = n.version_id) END
$$;

-- When a version was last refreshed, from the refresh log when the database
-- keeps one (NULL otherwise, or when nothing was refreshed yet).
CREATE OR REPLACE FUNCTION progress_last_refresh() RETURNS timestamptz
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    logged timestamptz;
BEGIN
    IF to_regclass('progress_refresh_log') IS NOT NULL THEN
        EXECUTE 'SELECT max(refreshed_at) FROM progress_refresh_log' INTO logged;
    END IF;
    RETURN logged;
END
$$;

-- Lag of finished refreshes (progress_refresh_log): from the oldest change a
-- refresh made visible (its queue entry's first enqueue) to the refresh's
-- commit, optionally of one kind, one source ('dagster:<run id>', 'cli',
-- 'sql') and a recent window; with the age of the oldest entry still queued.
-- Versions refreshed by name while not queued count as refreshes, not in the lag.
CREATE OR REPLACE FUNCTION progress_refresh_lag(
    p_kind text DEFAULT NULL, p_source text DEFAULT NULL, p_within interval DEFAULT NULL)
RETURNS TABLE (refreshes bigint, lag_seconds_p50 double precision, lag_seconds_p95 double precision,
               lag_seconds_max double precision, last_refreshed_at timestamptz,
               oldest_queued_age_seconds double precision)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY l.lag),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY l.lag),
           max(l.lag),
           max(l.refreshed_at),
           (SELECT s.oldest_age_seconds FROM progress_queue_state(p_kind) s)
      FROM (SELECT extract(epoch FROM r.refreshed_at - r.first_enqueued_at)::double precision AS lag, r.refreshed_at
              FROM progress_refresh_log r
             WHERE (p_kind IS NULL OR r.kind = p_kind)
               AND (p_source IS NULL OR r.source = p_source)
               AND (p_within IS NULL OR r.refreshed_at >= now() - p_within)) l;
END
$$;

-- Readers of the refresh log take what committed below a horizon: the xmin of
-- the current snapshot. Every transaction below it has ended and no new one
-- can start below it, so reading (previous horizon, this horizon] in turn
-- sees every row exactly once, whatever order transactions commit in.
CREATE OR REPLACE FUNCTION progress_refresh_log_horizon() RETURNS xid8
LANGUAGE sql STABLE AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot())
$$;

-- Refreshes logged by transactions in [p_from, p_to), per kind and source:
-- the versions, rows written (in all, and per read model for the read models
-- every one of them logged), when, the time spent refreshing (each
-- transaction from its first refresh's start to its last one's end: a drain
-- refreshes a batch in one transaction, and a whole-view refresh logs every
-- version it covered with one start), and the lag of what they made visible.
DROP FUNCTION IF EXISTS progress_refreshes_between(xid8, xid8);
CREATE OR REPLACE FUNCTION progress_refreshes_between(p_from xid8, p_to xid8)
RETURNS TABLE (kind text, source text, version_ids uuid[], refreshes bigint, rows_written bigint,
               first_refreshed_at timestamptz, last_refreshed_at timestamptz,
               lag_seconds_p50 double precision, lag_seconds_p95 double precision,
               lag_seconds_max double precision, busy_seconds double precision, rows_by_read_model jsonb)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH logged AS MATERIALIZED (
             SELECT r.* FROM progress_refresh_log r WHERE r.xact_id >= p_from AND r.xact_id < p_to),
         busy AS (
             SELECT t.kind, t.source, sum(t.seconds)::double precision AS seconds
               FROM (SELECT l.kind, l.source, extract(epoch FROM max(l.refreshed_at) - min(l.started_at)) AS seconds
                       FROM logged l WHERE l.started_at IS NOT NULL
                      GROUP BY l.kind, l.source, l.xact_id) t
              GROUP BY t.kind, t.source),
         per_model AS (
             SELECT m.kind, m.source, jsonb_object_agg(m.read_model, m.total) AS totals
               FROM (SELECT l.kind, l.source, e.key AS read_model, sum(e.value::bigint) AS total, count(*) AS logged
                       FROM logged l CROSS JOIN LATERAL jsonb_each_text(l.rows_by_read_model) e
                      GROUP BY l.kind, l.source, e.key) m
               JOIN (SELECT l.kind, l.source, count(*) AS refreshes FROM logged l GROUP BY l.kind, l.source) g
                 ON g.kind = m.kind AND g.source = m.source
              WHERE m.logged = g.refreshes
              GROUP BY m.kind, m.source)
    SELECT r.kind, r.source, array_agg(DISTINCT r.version_id), count(*), sum(r.rows_written)::bigint,
           min(r.refreshed_at), max(r.refreshed_at),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.refreshed_at - r.first_enqueued_at)),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.refreshed_at - r.first_enqueued_at)),
           max(extract(epoch FROM r.refreshed_at - r.first_enqueued_at))::double precision,
           (SELECT b.seconds FROM busy b WHERE b.kind = r.kind AND b.source = r.source),
           (SELECT p.totals FROM per_model p WHERE p.kind = r.kind AND p.source = r.source)
      FROM logged r
     GROUP BY r.kind, r.source
     ORDER BY r.kind, min(r.refreshed_at);
END
$$;

-- Names, languages and current progress of some versions, for metadata a
-- person reads (names, not bare ids); versions without a summary row (deleted,
-- never refreshed, or read models not yet populated) have NULL fractions.
CREATE OR REPLACE FUNCTION progress_version_summaries(p_kind text, p_versions uuid[])
RETURNS TABLE (version_id uuid, name text, language text, verse_fraction numeric,
               chapter_fraction numeric, book_fraction numeric)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    readable boolean := progress_read_models_readable();
BEGIN
    PERFORM progress_check_kind(p_kind);
    RETURN QUERY EXECUTE format(
        'SELECT ids.id, v.name, l.name, %s
           FROM unnest($1) WITH ORDINALITY AS ids (id, n)
           LEFT JOIN %I v ON v.id = ids.id
           LEFT JOIN language_entities l ON l.id = v.language_entity_id
           %s
          ORDER BY ids.n',
        CASE WHEN readable THEN 's.verse_fraction, s.chapter_fraction, s.book_fraction'
             ELSE 'NULL::numeric, NULL::numeric, NULL::numeric' END,
        p_kind || '_versions',
        CASE WHEN readable THEN format('LEFT JOIN %I s ON s.%I = ids.id',
                                       'mv_' || p_kind || '_version_progress_summary', p_kind || '_version_id')
             ELSE '' END)
    USING p_versions;
END
$$;

-- The ready entries of a kind a drain would claim first (claim order).
CREATE OR REPLACE FUNCTION progress_next_queued_versions(p_kind text, p_limit int) RETURNS uuid[]
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(q.version_id ORDER BY q.enqueued_at, q.id), '{}')
      FROM (SELECT * FROM progress_refresh_queue q
             WHERE q.kind = p_kind
               AND (q.lease_until IS NULL OR q.lease_until < now())
               AND (q.not_before IS NULL OR q.not_before <= now())
             ORDER BY q.enqueued_at, q.id
             LIMIT p_limit) q
$$;

-- Size and write activity of some tables (the base tables apps write): rows
-- (exact under 100,000, the planner's estimate above: counting a large table
-- on every change would cost more than it tells) and rows inserted, updated
-- and deleted since the statistics were reset, which moves when apps write.
CREATE OR REPLACE FUNCTION progress_table_activity(p_tables text[])
RETURNS TABLE (table_name text, row_count bigint, estimated boolean, rows_changed bigint)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t text;
    estimate real;
BEGIN
    FOREACH t IN ARRAY p_tables LOOP
        table_name := t;
        SELECT c.reltuples, coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, 0)
          INTO estimate, rows_changed
          FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
         WHERE c.oid = t::regclass;
        estimated := estimate >= 100000;
        IF estimated THEN
            row_count := estimate::bigint;
        ELSE
            EXECUTE format('SELECT count(*) FROM %I', t) INTO row_count;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
