-- What users and the Dagster checks read about the product's health.

-- Depth of the queue (optionally of one kind), how many entries are ready
-- now, and the ages of the oldest entry and of the oldest ready entry.
DROP FUNCTION IF EXISTS progress_queue_state();
CREATE OR REPLACE FUNCTION progress_queue_state(p_kind text DEFAULT NULL)
RETURNS TABLE (depth bigint, ready bigint, claimed bigint, retrying bigint,
               oldest_enqueued_at timestamptz, oldest_age_seconds double precision,
               oldest_ready_age_seconds double precision, dead_letters bigint)
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql STABLE AS $$
    WITH q AS (
        SELECT enqueued_at, attempts, lease_until,
               (lease_until IS NULL OR lease_until < now())
                   AND (not_before IS NULL OR not_before <= now()) AS is_ready
          FROM progress_refresh_queue
         WHERE p_kind IS NULL OR kind = p_kind)
    SELECT count(*),
           count(*) FILTER (WHERE is_ready),
           count(*) FILTER (WHERE lease_until >= now()),
           count(*) FILTER (WHERE attempts > 0),
           min(enqueued_at),
           coalesce(extract(epoch FROM now() - min(enqueued_at))::double precision, 0),
           coalesce(extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE is_ready))::double precision, 0),
           (SELECT count(*) FROM progress_refresh_dead_letter WHERE p_kind IS NULL OR kind = p_kind)
      FROM q
$$;

-- Rows in which a read model and its logical view differ, both directions,
-- optionally only for some scopes (versions or language entities).
CREATE OR REPLACE FUNCTION progress_count_mismatches(
    p_read_model text, p_logical_view text, p_scope_column text DEFAULT NULL, p_scopes uuid[] DEFAULT NULL)
RETURNS bigint SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    filter text := CASE WHEN p_scope_column IS NULL THEN 'true'
                        ELSE format('%I = ANY ($1)', p_scope_column) END;
    differing bigint;
BEGIN
    EXECUTE format(
        'SELECT count(*) FROM ((SELECT * FROM %1$I WHERE %3$s EXCEPT ALL SELECT * FROM %2$I WHERE %3$s)
                               UNION ALL
                               (SELECT * FROM %2$I WHERE %3$s EXCEPT ALL SELECT * FROM %1$I WHERE %3$s)) d',
        p_read_model, p_logical_view, filter)
    INTO differing USING p_scopes;
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
