CREATE OR REPLACE FUNCTION public.progress_sync_text_chapter_coverage(p_scope uuid, OUT inserted bigint, OUT updated bigint, OUT deleted bigint)
 RETURNS record
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'public', 'pg_temp'
AS $function$
        DECLARE
            
        BEGIN
            
        WITH desired AS MATERIALIZED (SELECT * FROM progress_rows_text_chapter_coverage(p_scope)),
        current AS MATERIALIZED (SELECT * FROM mv_text_chapter_coverage t WHERE t.text_version_id = p_scope),
        joined AS MATERIALIZED (
            SELECT n.*, o.text_version_id AS old_text_version_id, o.chapter_id AS old_chapter_id, n.text_version_id IS NOT NULL AS wanted, o.text_version_id IS NOT NULL AS stored
              FROM desired n FULL JOIN current o ON n.text_version_id = o.text_version_id AND n.chapter_id = o.chapter_id
             WHERE n.text_version_id IS NULL OR o.text_version_id IS NULL OR (n.verses_with_text, n.total_verses, n.is_complete) IS DISTINCT FROM (o.verses_with_text, o.total_verses, o.is_complete)),
        removed AS (
            DELETE FROM mv_text_chapter_coverage t USING joined j
             WHERE NOT j.wanted AND t.text_version_id = j.old_text_version_id AND t.chapter_id = j.old_chapter_id
            RETURNING 1),
        written AS (
            INSERT INTO mv_text_chapter_coverage (text_version_id, chapter_id, verses_with_text, total_verses, is_complete) SELECT j.text_version_id, j.chapter_id, j.verses_with_text, j.total_verses, j.is_complete FROM joined j WHERE j.wanted
            ON CONFLICT (text_version_id, chapter_id) DO UPDATE SET verses_with_text = EXCLUDED.verses_with_text, total_verses = EXCLUDED.total_verses, is_complete = EXCLUDED.is_complete
            RETURNING xmax = 0 AS fresh)
        SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh),
               (SELECT count(*) FROM removed)
          INTO inserted, updated, deleted
          FROM written;
        END
        $function$
