-- Change capture: statement-level triggers with transition tables queue, in
-- the writer's own transaction, every version whose read models the
-- statement can alter (SPEC section 4). One queue upsert per statement, never
-- one per row; updates that change nothing relevant queue nothing.

-- The enqueue functions are plpgsql with generic plans: a writer's statement
-- pays for running one queue upsert, not for planning it again (a SQL
-- function is planned on every call, and a plpgsql statement given an array
-- would keep choosing a plan made for that array's length: planned anew on
-- every call).

-- Queues whole versions; a version already queued gets its generation bumped
-- so a refresh that claimed the older generation leaves it queued, and its
-- chapter scope widened to the whole version.
CREATE OR REPLACE FUNCTION progress_enqueue_versions(p_kind text, p_versions uuid[])
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_refresh_queue AS q (kind, version_id)
    SELECT DISTINCT p_kind, v FROM unnest(p_versions) AS v WHERE v IS NOT NULL ORDER BY 2
    ON CONFLICT (kind, version_id) DO UPDATE
       SET generation = q.generation + 1, changed_at = now(), chapter_ids = NULL;
END
$$;

-- Past this many chapters a version is refreshed whole: as cheap, and the
-- queue entry stays small.
CREATE OR REPLACE FUNCTION progress_chapter_scope_limit() RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT 200 $$;

-- A version's chapter scope as queued: NULL (the whole version) when a
-- chapter is unknown or there are more than the limit.
CREATE OR REPLACE FUNCTION progress_chapter_scope(p_chapters text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_chapters IS NULL OR array_position(p_chapters, NULL) IS NOT NULL
                  OR cardinality(p_chapters) > progress_chapter_scope_limit() THEN NULL
                ELSE p_chapters END
$$;

-- Two chapter scopes merged: NULL (the whole version) absorbs everything.
-- Scopes hold distinct chapters in no particular order.
CREATE OR REPLACE FUNCTION progress_merge_chapter_scopes(p_left text[], p_right text[])
RETURNS text[] LANGUAGE plpgsql IMMUTABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    IF p_left IS NULL OR p_right IS NULL THEN
        RETURN NULL;
    ELSIF p_right <@ p_left THEN
        RETURN p_left;
    ELSIF cardinality(p_right) = 1 THEN
        -- One new chapter (a single-row write's): appended, nothing sorted.
        RETURN progress_chapter_scope(p_left || p_right);
    END IF;
    RETURN progress_chapter_scope(ARRAY(SELECT unnest(p_left) UNION SELECT unnest(p_right) ORDER BY 1));
END
$$;

DROP FUNCTION IF EXISTS progress_enqueue_scopes(text, uuid[], text[], boolean[]);

-- The common write, one row of a version already queued, does what the
-- upsert would (the generation bumped, the scope widened to the row's
-- chapters unless it holds them) as a plain update: no insert attempted.
-- The chapters are given, or (p_chapters NULL) the verse whose chapter it
-- is, looked up by the update itself: one statement when the scope holds
-- them, a second when it widens. False when the version is not queued; the
-- caller then upserts.
--
-- A single-row INSERT, the write apps make most, tries it straight from its
-- trigger, in the one query that reads the transition table: no arrays
-- aggregated, no enqueue function entered (about a tenth of that trigger's
-- cost, counted). The query's gate, at most two rows read from the
-- transition table, is planned as a one-time filter: a bulk statement reads
-- two rows of it and goes on to the set-based upsert.
DROP FUNCTION IF EXISTS progress_bump_queued_scope(text, uuid, text[]);
CREATE OR REPLACE FUNCTION progress_bump_queued_scope(
    p_kind text, p_version uuid, p_chapters text[], p_verse text DEFAULT NULL)
RETURNS boolean SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    -- The row's chapters already in the scope: the generation bumped, the
    -- scope as stored (a large one not rewritten).
    UPDATE progress_refresh_queue q
       SET generation = q.generation + 1, changed_at = now()
     WHERE q.kind = p_kind AND q.version_id = p_version
       AND (q.chapter_ids IS NULL
            OR q.chapter_ids @> coalesce(p_chapters, ARRAY[(SELECT ve.chapter_id FROM verses ve WHERE ve.id = p_verse)]));
    IF FOUND THEN
        RETURN true;
    END IF;
    -- Otherwise the scope widened too. An unknown verse has no chapter:
    -- ARRAY[NULL] widens it to the whole version.
    UPDATE progress_refresh_queue q
       SET generation = q.generation + 1, changed_at = now(),
           chapter_ids = progress_merge_chapter_scopes(
               q.chapter_ids,
               coalesce(p_chapters, ARRAY[(SELECT ve.chapter_id FROM verses ve WHERE ve.id = p_verse)]))
     WHERE q.kind = p_kind AND q.version_id = p_version;
    RETURN FOUND;
END
$$;

-- Queues versions with the chapters of the verses a change touched (parallel
-- arrays), one upsert for the statement. A statement writing more rows of one
-- version than a chapter scope could hold (a bulk load) queues that version
-- whole, with no lookups; otherwise each verse's chapter is looked up by key.
-- p_bump_tried: the caller's trigger has tried the single-row bump already.
DROP FUNCTION IF EXISTS progress_enqueue_verses(text, uuid[], text[]);
CREATE OR REPLACE FUNCTION progress_enqueue_verses(
    p_kind text, p_versions uuid[], p_verses text[], p_bump_tried boolean DEFAULT false)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    -- A plain expression (no query of its own: plpgsql evaluates it without
    -- setting up an executor), so the common single-row write pays for one
    -- statement, the bump.
    IF NOT p_bump_tried AND cardinality(p_verses) = 1
       AND progress_bump_queued_scope(p_kind, p_versions[1], NULL, p_verses[1]) THEN
        RETURN;
    END IF;
    INSERT INTO progress_refresh_queue AS q (kind, version_id, chapter_ids)
    SELECT p_kind, g.v,
           -- (A version in the dead letters comes back whole: see progress_forgive_dead_letter.)
           CASE WHEN g.n > 10 * progress_chapter_scope_limit()
                  OR EXISTS (SELECT FROM progress_refresh_dead_letter d WHERE d.kind = p_kind AND d.version_id = g.v)
                THEN NULL
                ELSE progress_chapter_scope(ARRAY(
                         SELECT DISTINCT ve.chapter_id
                           FROM unnest(g.verses) AS t (id)
                           LEFT JOIN LATERAL (SELECT ve.chapter_id FROM verses ve WHERE ve.id = t.id OFFSET 0)
                                AS ve ON true)) END
      FROM (SELECT x.v, count(*) AS n, array_agg(x.verse_id) AS verses
              FROM unnest(p_versions, p_verses) AS x (v, verse_id)
             WHERE x.v IS NOT NULL
             GROUP BY x.v) AS g
     ORDER BY g.v
    ON CONFLICT (kind, version_id) DO UPDATE
       SET generation = q.generation + 1, changed_at = now(),
           chapter_ids = progress_merge_chapter_scopes(q.chapter_ids, EXCLUDED.chapter_ids);
END
$$;

-- The chapters a verse range reaches: those of the start verse's bible
-- version between its start and end in global order. (A plain SQL function:
-- inlined where it is called, a lateral join in a set-based statement.)
CREATE OR REPLACE FUNCTION progress_range_chapters(p_start_verse text, p_end_verse text)
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT DISTINCT s.chapter_id
      FROM progress_verse_structure sv
      LEFT JOIN verses ev ON ev.id = p_end_verse
      JOIN progress_verse_structure s
        ON s.bible_version_id = sv.bible_version_id
       AND s.global_order BETWEEN sv.global_order AND coalesce(ev.global_order, sv.global_order)
     WHERE sv.verse_id = p_start_verse
$$;

-- The chapters a media file's coverage reaches: its chapter, the chapters of
-- its verse range, the chapters of its mapped verses.
DROP FUNCTION IF EXISTS progress_media_file_chapters(uuid, text, text, text);
CREATE OR REPLACE FUNCTION progress_media_file_chapters(
    p_file uuid, p_chapter text, p_start_verse text, p_end_verse text)
RETURNS text[] LANGUAGE plpgsql STABLE SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN ARRAY(
        SELECT p_chapter WHERE p_chapter IS NOT NULL
        UNION
        SELECT c FROM progress_range_chapters(p_start_verse, p_end_verse) AS c
        UNION
        SELECT v.chapter_id FROM media_files_verses m JOIN verses v ON v.id = m.verse_id
         WHERE m.media_file_id = p_file AND m.deleted_at IS NULL);
END
$$;

-- Files (one side of a statement) as parallel arrays: their versions queued
-- with the chapters each file reaches; a version with more files in the
-- statement than a chapter scope holds, or with a file whose p_whole is true
-- (its reach unknown), is queued whole. p_bump_tried as for
-- progress_enqueue_verses. One upsert, versions in order, whatever the mix.
DROP FUNCTION IF EXISTS progress_enqueue_media_files(uuid[], uuid[], text[], text[], text[]);
DROP FUNCTION IF EXISTS progress_enqueue_media_files(uuid[], uuid[], text[], text[], text[], boolean);
CREATE OR REPLACE FUNCTION progress_enqueue_media_files(
    p_versions uuid[], p_files uuid[], p_chapters text[], p_starts text[], p_ends text[],
    p_bump_tried boolean DEFAULT false, p_whole boolean[] DEFAULT NULL)
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT p_bump_tried AND cardinality(p_files) = 1 AND p_whole[1] IS NOT TRUE
       AND progress_bump_queued_scope('audio', p_versions[1],
                                      progress_media_file_chapters(p_files[1], p_chapters[1], p_starts[1], p_ends[1])) THEN
        RETURN;
    END IF;
    INSERT INTO progress_refresh_queue AS q (kind, version_id, chapter_ids)
    SELECT 'audio', g.v,
           -- (A version in the dead letters comes back whole: see progress_forgive_dead_letter.)
           CASE WHEN g.whole OR g.n > progress_chapter_scope_limit()
                  OR EXISTS (SELECT FROM progress_refresh_dead_letter d WHERE d.kind = 'audio' AND d.version_id = g.v)
                THEN NULL
                ELSE progress_chapter_scope(ARRAY(
                         SELECT DISTINCT c
                           FROM unnest(g.files, g.chapters, g.starts, g.ends) AS f (id, chapter_id, start_id, end_id)
                          CROSS JOIN LATERAL unnest(progress_media_file_chapters(f.id, f.chapter_id, f.start_id, f.end_id))
                                AS c)) END
      FROM (SELECT x.v, count(*) AS n, array_agg(x.id) AS files, array_agg(x.chapter_id) AS chapters,
                   array_agg(x.start_id) AS starts, array_agg(x.end_id) AS ends,
                   coalesce(bool_or(x.whole), false) AS whole
              FROM unnest(p_versions, p_files, p_chapters, p_starts, p_ends, p_whole)
                   AS x (v, id, chapter_id, start_id, end_id, whole)
             WHERE x.v IS NOT NULL
             GROUP BY x.v) AS g
     ORDER BY g.v
    ON CONFLICT (kind, version_id) DO UPDATE
       SET generation = q.generation + 1, changed_at = now(),
           chapter_ids = progress_merge_chapter_scopes(q.chapter_ids, EXCLUDED.chapter_ids);
END
$$;

CREATE OR REPLACE FUNCTION progress_capture_media_files() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- One row: the bump straight away (progress_bump_queued_scope).
        PERFORM FROM new_rows n
         WHERE (SELECT count(*) FROM (SELECT FROM new_rows LIMIT 2) AS two) = 1
           AND progress_is_live_bible_audio(n.media_type::text, n.is_bible_audio, n.upload_status::text,
                                            n.publish_status::text, n.deleted_at)
           AND progress_bump_queued_scope('audio', n.audio_version_id,
                                          progress_media_file_chapters(n.id, n.chapter_id, n.start_verse_id,
                                                                       n.end_verse_id));
        IF NOT FOUND THEN
            PERFORM progress_enqueue_media_files(
                array_agg(n.audio_version_id), array_agg(n.id), array_agg(n.chapter_id),
                array_agg(n.start_verse_id), array_agg(n.end_verse_id), true)
               FROM new_rows n
              WHERE progress_is_live_bible_audio(n.media_type::text, n.is_bible_audio, n.upload_status::text,
                                                 n.publish_status::text, n.deleted_at)
             HAVING count(*) > 0;
        END IF;
        -- (The ranges' chapters after the queue: see progress_list_range_files.)
        PERFORM progress_list_range_files(NULL, ARRAY(SELECT n.id FROM new_rows n WHERE n.start_verse_id IS NOT NULL));
    ELSIF TG_OP = 'DELETE' THEN
        -- The file's mappings are gone with it (ON DELETE CASCADE) before this
        -- runs, and with them the chapters they reached: a version listed as
        -- having mapped files is queued whole. A version never listed has no
        -- mappings (the list the chapter refresh trusts to skip them), so its
        -- files reached only their chapters and ranges: those are queued.
        PERFORM progress_enqueue_media_files(
            array_agg(o.audio_version_id), array_agg(o.id), array_agg(o.chapter_id),
            array_agg(o.start_verse_id), array_agg(o.end_verse_id), false,
            array_agg(EXISTS (SELECT FROM progress_mapped_audio_versions p
                               WHERE p.audio_version_id = o.audio_version_id)))
           FROM old_rows o
          WHERE progress_is_live_bible_audio(o.media_type::text, o.is_bible_audio, o.upload_status::text,
                                             o.publish_status::text, o.deleted_at)
         HAVING count(*) > 0;
        DELETE FROM progress_range_file_chapters t
         USING old_rows o
         WHERE o.start_verse_id IS NOT NULL AND t.audio_version_id = o.audio_version_id AND t.media_file_id = o.id;
    ELSE
        -- A file moved to another version takes its mappings along.
        PERFORM progress_note_mapped_files(ARRAY(
            SELECT n.id FROM old_rows o JOIN new_rows n ON n.id = o.id
             WHERE n.audio_version_id IS DISTINCT FROM o.audio_version_id));
        -- Both sides of every changed row count, each while it is live. A
        -- range whose start or end verse is gone (deleted: the foreign key
        -- cleared it in this cascade) reached chapters no one can compute
        -- any more, and a file moved to another version may bring mappings
        -- this statement does not see: their versions are queued whole.
        PERFORM progress_enqueue_media_files(
            array_agg(side.audio_version_id), array_agg(side.id), array_agg(side.chapter_id),
            array_agg(side.start_verse_id), array_agg(side.end_verse_id), false, array_agg(side.whole))
           FROM old_rows o
           FULL JOIN new_rows n ON n.id = o.id
          CROSS JOIN LATERAL (VALUES
                (o.audio_version_id, o.id, o.chapter_id, o.start_verse_id, o.end_verse_id,
                 progress_is_live_bible_audio(o.media_type::text, o.is_bible_audio, o.upload_status::text,
                                              o.publish_status::text, o.deleted_at),
                 (o.start_verse_id, o.end_verse_id) IS DISTINCT FROM (n.start_verse_id, n.end_verse_id)
                 AND (o.start_verse_id IS NOT NULL AND NOT EXISTS (SELECT FROM verses v WHERE v.id = o.start_verse_id)
                      OR o.end_verse_id IS NOT NULL AND NOT EXISTS (SELECT FROM verses v WHERE v.id = o.end_verse_id))
                 -- A file moved out of a version with mapped files: a mapping
                 -- removed in the same statement (a data-modifying WITH) is
                 -- seen with the file's new version, and is gone from the
                 -- mappings this side's chapters are read from.
                 OR o.audio_version_id IS DISTINCT FROM n.audio_version_id
                    AND EXISTS (SELECT FROM progress_mapped_audio_versions p
                                 WHERE p.audio_version_id = o.audio_version_id)),
                (n.audio_version_id, n.id, n.chapter_id, n.start_verse_id, n.end_verse_id,
                 progress_is_live_bible_audio(n.media_type::text, n.is_bible_audio, n.upload_status::text,
                                              n.publish_status::text, n.deleted_at),
                 -- A file moved to another version: a mapping written at the
                 -- same time queues only the version it saw the file in.
                 o.audio_version_id IS DISTINCT FROM n.audio_version_id))
                AS side (audio_version_id, id, chapter_id, start_verse_id, end_verse_id, live, whole)
          WHERE side.live
            AND (o.audio_version_id, o.media_type, o.is_bible_audio, o.upload_status,
                 o.publish_status, o.chapter_id, o.start_verse_id, o.end_verse_id, o.deleted_at)
                IS DISTINCT FROM
                (n.audio_version_id, n.media_type, n.is_bible_audio, n.upload_status,
                 n.publish_status, n.chapter_id, n.start_verse_id, n.end_verse_id, n.deleted_at)
         HAVING count(*) > 0;
        -- A range moved, or moved to another version, reaches other chapters
        -- (the chapters it reached before stay listed: a superset).
        PERFORM progress_list_range_files(NULL, ARRAY(
            SELECT n.id FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id
             WHERE n.start_verse_id IS NOT NULL
               AND (o.audio_version_id, o.start_verse_id, o.end_verse_id)
                   IS DISTINCT FROM (n.audio_version_id, n.start_verse_id, n.end_verse_id)));
    END IF;
    RETURN NULL;
END
$$;

-- Lists the chapters verse-range files reach (progress_range_file_chapters),
-- whether or not the files are live: the files given, else every range of
-- p_version, else every range. Never deletes (a superset is fine), so it is
-- safe beside writers; rows are written in key order. The triggers call it
-- after queueing: a drain holding the version's queue row while its whole
-- refresh lists the same ranges never waits for a writer that waits for it.
CREATE OR REPLACE FUNCTION progress_list_range_files(p_version uuid, p_files uuid[] DEFAULT NULL) RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    IF p_files IS NULL AND p_version IS NOT NULL THEN
        p_files := ARRAY(SELECT r.id FROM media_files r
                          WHERE r.audio_version_id = p_version AND r.start_verse_id IS NOT NULL);
    ELSIF p_files IS NULL THEN
        p_files := ARRAY(SELECT r.id FROM media_files r WHERE r.start_verse_id IS NOT NULL);
    END IF;
    IF cardinality(p_files) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO progress_range_file_chapters (audio_version_id, chapter_id, media_file_id)
    SELECT r.audio_version_id, c.chapter_id, r.id
      FROM media_files r
     CROSS JOIN LATERAL progress_range_chapters(r.start_verse_id, r.end_verse_id) AS c (chapter_id)
     WHERE r.id = ANY (p_files) AND r.audio_version_id IS NOT NULL AND r.start_verse_id IS NOT NULL
     ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING;
END
$$;

-- Lists the audio versions of files that now have verse mappings
-- (progress_mapped_audio_versions), whether or not the files are live.
CREATE OR REPLACE FUNCTION progress_note_mapped_files(p_files uuid[]) RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO progress_mapped_audio_versions (audio_version_id)
    SELECT DISTINCT mf.audio_version_id
      FROM media_files mf
     WHERE mf.id = ANY (p_files) AND mf.audio_version_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM progress_mapped_audio_versions p WHERE p.audio_version_id = mf.audio_version_id)
     ORDER BY 1
    ON CONFLICT DO NOTHING;
END
$$;

-- A mapping queues its file's version, whether or not the file is live bible
-- audio as this statement sees it: a writer making the file live at the same
-- time sees it without this mapping, so its own chapters would leave the
-- mapping's out (queueing a file that is not live costs a refresh that finds
-- nothing to change).
CREATE OR REPLACE FUNCTION progress_capture_media_files_verses() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        PERFORM progress_note_mapped_files(ARRAY(SELECT DISTINCT n.media_file_id FROM new_rows n));
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- One row: the bump straight away (progress_bump_queued_scope).
        PERFORM FROM new_rows n JOIN media_files f ON f.id = n.media_file_id
         WHERE (SELECT count(*) FROM (SELECT FROM new_rows LIMIT 2) AS two) = 1 AND n.deleted_at IS NULL
           AND progress_bump_queued_scope('audio', f.audio_version_id, NULL, n.verse_id);
        IF FOUND THEN
            RETURN NULL;
        END IF;
        PERFORM progress_enqueue_verses('audio', array_agg(f.audio_version_id), array_agg(n.verse_id), true)
           FROM new_rows n JOIN media_files f ON f.id = n.media_file_id
          WHERE n.deleted_at IS NULL
         HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM progress_enqueue_verses('audio', array_agg(f.audio_version_id), array_agg(o.verse_id))
           FROM old_rows o JOIN media_files f ON f.id = o.media_file_id
          WHERE o.deleted_at IS NULL
         HAVING count(*) > 0;
    ELSE
        PERFORM progress_enqueue_verses('audio', array_agg(f.audio_version_id), array_agg(side.verse_id))
           FROM old_rows o
           FULL JOIN new_rows n ON n.id = o.id
          CROSS JOIN LATERAL (VALUES (o.media_file_id, o.verse_id, o.deleted_at),
                                     (n.media_file_id, n.verse_id, n.deleted_at))
                AS side (media_file_id, verse_id, deleted_at)
           JOIN media_files f ON f.id = side.media_file_id
          WHERE side.deleted_at IS NULL
            AND (o.media_file_id, o.verse_id, o.deleted_at)
                IS DISTINCT FROM (n.media_file_id, n.verse_id, n.deleted_at)
         HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION progress_capture_verse_texts() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- One row: the bump straight away (progress_bump_queued_scope).
        PERFORM FROM new_rows n
         WHERE (SELECT count(*) FROM (SELECT FROM new_rows LIMIT 2) AS two) = 1 AND n.deleted_at IS NULL
           AND progress_bump_queued_scope('text', n.text_version_id, NULL, n.verse_id);
        IF FOUND THEN
            RETURN NULL;
        END IF;
        PERFORM progress_enqueue_verses('text', array_agg(n.text_version_id), array_agg(n.verse_id), true)
           FROM new_rows n WHERE n.deleted_at IS NULL
         HAVING count(*) > 0;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM progress_enqueue_verses('text', array_agg(o.text_version_id), array_agg(o.verse_id))
           FROM old_rows o WHERE o.deleted_at IS NULL
         HAVING count(*) > 0;
    ELSE
        PERFORM progress_enqueue_verses('text', array_agg(side.version_id), array_agg(side.verse_id))
           FROM old_rows o
           FULL JOIN new_rows n ON n.id = o.id
          CROSS JOIN LATERAL (VALUES (o.text_version_id, o.verse_id, o.deleted_at),
                                     (n.text_version_id, n.verse_id, n.deleted_at))
                AS side (version_id, verse_id, deleted_at)
          WHERE side.deleted_at IS NULL
            AND (o.text_version_id, o.verse_id, o.deleted_at)
                IS DISTINCT FROM (n.text_version_id, n.verse_id, n.deleted_at)
         HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;

-- Shared by audio_versions and text_versions: TG_ARGV[0] is the kind.
--
-- A version leaving a language entity (moved, deleted, soft-deleted) also
-- waits for any refresh of that entity's best version under way: such a
-- refresh may have read the version as a member, and the drain of this change
-- finds the entity only through the best-version row that refresh writes
-- (the version no longer names it), so it must be committed first. The queue
-- entry is taken before the entity, as a drain takes them.
CREATE OR REPLACE FUNCTION progress_capture_versions() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    versions uuid[];
    left_entities uuid[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM progress_enqueue_versions(TG_ARGV[0], ARRAY(SELECT n.id FROM new_rows n));
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        versions := ARRAY(SELECT o.id FROM old_rows o);
        left_entities := ARRAY(SELECT o.language_entity_id FROM old_rows o);
    ELSE
        -- Rows whose version-level columns changed (an id changed: both sides).
        WITH changed AS (
            SELECT o.id AS old_id, n.id AS new_id, o.language_entity_id AS old_entity
              FROM old_rows o
              FULL JOIN new_rows n ON n.id = o.id
             WHERE o.id IS NULL OR n.id IS NULL
                OR (o.deleted_at, o.bible_version_id, o.language_entity_id, o.created_at)
                   IS DISTINCT FROM
                   (n.deleted_at, n.bible_version_id, n.language_entity_id, n.created_at))
        SELECT ARRAY(SELECT v FROM changed CROSS JOIN LATERAL (VALUES (old_id), (new_id)) AS x (v)),
               ARRAY(SELECT old_entity FROM changed WHERE old_id IS NOT NULL)
          INTO versions, left_entities;
    END IF;
    PERFORM progress_enqueue_versions(TG_ARGV[0], versions);
    PERFORM progress_lock_language_entities(TG_ARGV[0], left_entities);
    RETURN NULL;
END
$$;

-- Versions a structure change can alter: every live version of the affected
-- bible versions, plus versions of any bible version whose coverage reaches
-- into the affected chapters (chapter files, mappings, texts, ranges starting
-- there, or stored chapter rows).
CREATE OR REPLACE FUNCTION progress_enqueue_structure_change(p_bible_versions text[], p_chapters text[])
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    ranged uuid[];
BEGIN
    PERFORM progress_enqueue_versions('audio', ARRAY(
        SELECT av.id FROM audio_versions av
         WHERE av.bible_version_id = ANY (p_bible_versions) AND av.deleted_at IS NULL
        UNION
        SELECT mf.audio_version_id FROM media_files mf WHERE mf.chapter_id = ANY (p_chapters)
        UNION
        SELECT mf.audio_version_id FROM verses v
          JOIN media_files_verses mfv ON mfv.verse_id = v.id
          JOIN media_files mf ON mf.id = mfv.media_file_id
         WHERE v.chapter_id = ANY (p_chapters)));
    -- Versions with a range starting or ending in the bible versions: its
    -- chapters may have moved (progress_range_file_chapters). Looked for
    -- after the upsert above, which waits for writers holding these versions'
    -- entries: a range such a writer added, listed by the verses' order
    -- before this change, is seen and listed again.
    ranged := ARRAY(
        SELECT DISTINCT mf.audio_version_id FROM media_files mf
          JOIN progress_verse_structure s ON s.verse_id IN (mf.start_verse_id, mf.end_verse_id)
         WHERE s.bible_version_id = ANY (p_bible_versions) AND mf.audio_version_id IS NOT NULL);
    IF cardinality(ranged) > 0 THEN
        PERFORM progress_enqueue_versions('audio', ranged);
    END IF;
    -- Versions whose stored coverage reaches into the chapters (unreadable
    -- before a matview's first refresh, and then there is nothing stored).
    -- During a take-over these names may still hold the previous design's
    -- read models, whose columns differ: the take-over then rebuilds all anyway.
    IF progress_read_models_readable() THEN
        BEGIN
            PERFORM progress_enqueue_versions('audio', ARRAY(
                SELECT cc.audio_version_id FROM mv_audio_chapter_coverage cc WHERE cc.chapter_id = ANY (p_chapters)));
            PERFORM progress_enqueue_versions('text', ARRAY(
                SELECT cc.text_version_id FROM mv_text_chapter_coverage cc WHERE cc.chapter_id = ANY (p_chapters)));
        EXCEPTION WHEN undefined_column OR undefined_table THEN
            NULL;
        END;
    END IF;
    PERFORM progress_enqueue_versions('text', ARRAY(
        SELECT tv.id FROM text_versions tv
         WHERE tv.bible_version_id = ANY (p_bible_versions) AND tv.deleted_at IS NULL
        UNION
        SELECT vt.text_version_id FROM verses v JOIN verse_texts vt ON vt.verse_id = v.id
         WHERE v.chapter_id = ANY (p_chapters)));
    -- (After the queue, as the file triggers list ranges.)
    INSERT INTO progress_range_versions_to_relist (audio_version_id)
    SELECT v FROM unnest(ranged) AS v ORDER BY 1
    ON CONFLICT DO NOTHING;
END
$$;

DROP FUNCTION IF EXISTS progress_count_verse_changes(text[], text[]);

-- Structure triggers reduce the touched rows to (bible versions, chapters);
-- on update only rows whose relevant columns changed count, on both sides.
CREATE OR REPLACE FUNCTION progress_capture_books() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    touched_books text[];
    touched_bibles text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id), array_agg(bible_version_id) INTO touched_books, touched_bibles FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(id), array_agg(bible_version_id) INTO touched_books, touched_bibles FROM old_rows;
    ELSE
        SELECT array_agg(t.id), array_agg(t.bible_version_id) INTO touched_books, touched_bibles
          FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.id, o.bible_version_id), (n.id, n.bible_version_id)) AS t (id, bible_version_id)
         WHERE (o.id, o.bible_version_id) IS DISTINCT FROM (n.id, n.bible_version_id);
    END IF;
    IF touched_books IS NOT NULL THEN
        PERFORM progress_recount_bible_versions(touched_bibles);
        PERFORM progress_enqueue_structure_change(
            touched_bibles, ARRAY(SELECT c.id FROM chapters c WHERE c.book_id = ANY (touched_books)));
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION progress_capture_chapters() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    touched_chapters text[];
    touched_books text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(id), array_agg(book_id) INTO touched_chapters, touched_books FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(id), array_agg(book_id) INTO touched_chapters, touched_books FROM old_rows;
    ELSE
        SELECT array_agg(t.id), array_agg(t.book_id) INTO touched_chapters, touched_books
          FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.id, o.book_id), (n.id, n.book_id)) AS t (id, book_id)
         WHERE (o.id, o.book_id, o.total_verses) IS DISTINCT FROM (n.id, n.book_id, n.total_verses);
    END IF;
    IF touched_chapters IS NOT NULL THEN
        PERFORM progress_recount_bible_versions(
            ARRAY(SELECT b.bible_version_id FROM books b WHERE b.id = ANY (touched_books)));
        PERFORM progress_enqueue_structure_change(
            ARRAY(SELECT b.bible_version_id FROM books b WHERE b.id = ANY (touched_books)),
            touched_chapters);
    END IF;
    RETURN NULL;
END
$$;

-- Verses recount their bible versions too, rather than move the counts by
-- the verses added and removed: one statement can write verses and their
-- chapters or books (a data-modifying WITH), and the chapters' or books'
-- trigger, firing first, has already counted those verses.
CREATE OR REPLACE FUNCTION progress_capture_verses() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    touched_chapters text[];
    touched_bibles text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT chapter_id) INTO touched_chapters FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT chapter_id) INTO touched_chapters FROM old_rows;
    ELSE
        SELECT array_agg(DISTINCT t.chapter_id) INTO touched_chapters
          FROM old_rows o FULL JOIN new_rows n ON n.id = o.id
         CROSS JOIN LATERAL (VALUES (o.chapter_id), (n.chapter_id)) AS t (chapter_id)
         WHERE (o.id, o.chapter_id, o.global_order) IS DISTINCT FROM (n.id, n.chapter_id, n.global_order);
    END IF;
    IF touched_chapters IS NOT NULL THEN
        -- (A verse whose chapter is gone in the same statement, a cascade from
        -- its chapter or book, is counted by that chapter's or book's trigger.)
        touched_bibles := ARRAY(SELECT DISTINCT b.bible_version_id FROM chapters c JOIN books b ON b.id = c.book_id
                                 WHERE c.id = ANY (touched_chapters));
        PERFORM progress_recount_bible_versions(touched_bibles);
        PERFORM progress_enqueue_structure_change(touched_bibles, touched_chapters);
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE has no transition table: every version of the kinds the table
-- feeds (TG_ARGV) is queued, and after a structure table every bible
-- version's counts are recounted.
CREATE OR REPLACE FUNCTION progress_capture_truncate() RETURNS trigger
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
BEGIN
    IF TG_TABLE_NAME IN ('books', 'chapters', 'verses') THEN
        PERFORM progress_recount_bible_versions(NULL);
    END IF;
    FOREACH kind IN ARRAY TG_ARGV LOOP
        PERFORM progress_enqueue_all_versions(kind);
    END LOOP;
    RETURN NULL;
END
$$;

-- (Re)creates the statement triggers of a table; idempotent. Replaced in
-- place rather than dropped and created: that takes a lock writers wait for
-- but readers do not, where a dropped trigger locks its table out to readers
-- until the migrate commits.
CREATE OR REPLACE FUNCTION progress_install_capture(
    p_table text, p_function text, p_args text DEFAULT '', p_truncate_kinds text DEFAULT '''audio'', ''text''')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE OR REPLACE TRIGGER progress_capture_truncate AFTER TRUNCATE ON %1$I
            FOR EACH STATEMENT EXECUTE FUNCTION progress_capture_truncate(%2$s)',
        p_table, p_truncate_kinds);
    EXECUTE format('CREATE OR REPLACE TRIGGER progress_capture_insert AFTER INSERT ON %1$I
            REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION %2$I(%3$s)',
        p_table, p_function, p_args);
    EXECUTE format('CREATE OR REPLACE TRIGGER progress_capture_update AFTER UPDATE ON %1$I
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION %2$I(%3$s)',
        p_table, p_function, p_args);
    EXECUTE format('CREATE OR REPLACE TRIGGER progress_capture_delete AFTER DELETE ON %1$I
            REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION %2$I(%3$s)',
        p_table, p_function, p_args);
END
$$;

-- Removes our statement triggers (a take-over that failed gives the previous
-- design's back).
CREATE OR REPLACE FUNCTION progress_remove_capture() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.relname, tg.tgname FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
              JOIN pg_proc p ON p.oid = tg.tgfoid
             WHERE NOT tg.tgisinternal AND c.relnamespace = current_schema()::regnamespace
               AND tg.tgname LIKE 'progress\_capture\_%' AND p.proname LIKE 'progress\_capture\_%' LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t.tgname, t.relname);
    END LOOP;
END
$$;

SELECT progress_install_capture('media_files', 'progress_capture_media_files', '', quote_literal('audio'));
SELECT progress_install_capture('media_files_verses', 'progress_capture_media_files_verses', '',
                                quote_literal('audio'));
SELECT progress_install_capture('verse_texts', 'progress_capture_verse_texts', '', quote_literal('text'));
SELECT progress_install_capture('audio_versions', 'progress_capture_versions', quote_literal('audio'),
                                quote_literal('audio'));
SELECT progress_install_capture('text_versions', 'progress_capture_versions', quote_literal('text'),
                                quote_literal('text'));
SELECT progress_install_capture('books', 'progress_capture_books');

-- Lists every audio version with a mapped file, from the base tables: what
-- the triggers would have noted. Run by every migrate, and by every rebuild
-- (progress_rebuild_all), which follows writes that bypassed the triggers
-- (a bulk load with session_replication_role = replica).
CREATE OR REPLACE FUNCTION progress_list_mapped_audio_versions() RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE sql AS $$
    INSERT INTO progress_mapped_audio_versions (audio_version_id)
    SELECT DISTINCT mf.audio_version_id
      FROM media_files mf
     WHERE mf.audio_version_id IS NOT NULL
       AND EXISTS (SELECT FROM media_files_verses m WHERE m.media_file_id = mf.id)
    ON CONFLICT DO NOTHING
$$;

-- After the triggers above: mappings committed before their lock are read
-- here, later ones are noted by the triggers. The same for verse ranges.
SELECT progress_list_mapped_audio_versions();
SELECT progress_list_range_files(NULL);
SELECT progress_install_capture('chapters', 'progress_capture_chapters');
SELECT progress_install_capture('verses', 'progress_capture_verses');
