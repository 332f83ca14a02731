-- What the read-model definitions (sql/read_models/, one file each) share:
-- the live-bible-audio rule, the best-version sort key, bible version totals,
-- and the generators that turn a definition into its logical view.

-- Release 0.1.0 wrote definitions with {placeholders}.
DROP FUNCTION IF EXISTS progress_definition_sql(text, text);

-- A file counts only while it is published, uploaded, undeleted bible audio.
CREATE OR REPLACE FUNCTION progress_is_live_bible_audio(
    p_media_type text, p_is_bible_audio boolean, p_upload_status text,
    p_publish_status text, p_deleted_at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_deleted_at IS NULL
       AND p_media_type = 'audio'
       AND p_is_bible_audio IS TRUE
       AND p_upload_status = 'completed'
       AND p_publish_status = 'published'
$$;

-- The best-version rule as one sort key (sorted descending, then by id):
-- higher fractions first with NULL last at each step, then the newest
-- created_at with NULL last. Fractions lie in [0, 1], so -1 sorts NULL last.
CREATE OR REPLACE FUNCTION progress_version_rank(
    p_verse_fraction numeric, p_chapter_fraction numeric, p_book_fraction numeric,
    p_created_at timestamptz)
RETURNS numeric[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[coalesce(p_verse_fraction, -1),
                 coalesce(p_chapter_fraction, -1),
                 coalesce(p_book_fraction, -1),
                 coalesce(extract(epoch FROM p_created_at), '-Infinity'::numeric)]
$$;

-- Totals of a bible version: counted rows, not the sum of chapters.total_verses.
-- Verses are counted per chapter through the (chapter_id, id) index. The
-- fixed search_path lets REFRESH MATERIALIZED VIEW (which runs with an empty
-- one) resolve the tables, and keeps each total computed once per call.
CREATE OR REPLACE FUNCTION progress_bible_version_totals(p_bible_version_id text)
RETURNS TABLE (total_verses bigint, total_chapters bigint, total_books bigint)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT coalesce(sum(per_chapter.verses), 0)::bigint,
           count(c.id),
           (SELECT count(*) FROM books WHERE bible_version_id = p_bible_version_id)
      FROM books b
      JOIN chapters c ON c.book_id = b.id
     CROSS JOIN LATERAL (SELECT count(*) AS verses FROM verses v WHERE v.chapter_id = c.id) AS per_chapter
     WHERE b.bible_version_id = p_bible_version_id
$$;

CREATE OR REPLACE VIEW progress_live_bible_audio_files AS
SELECT mf.id, mf.audio_version_id, mf.chapter_id, mf.start_verse_id, mf.end_verse_id
  FROM media_files mf
  JOIN audio_versions av ON av.id = mf.audio_version_id AND av.deleted_at IS NULL
 WHERE progress_is_live_bible_audio(mf.media_type::text, mf.is_bible_audio, mf.upload_status::text,
                                    mf.publish_status::text, mf.deleted_at);

-- The bible version each verse belongs to (ranges stay inside the start verse's).
CREATE OR REPLACE VIEW progress_verse_structure AS
SELECT v.id AS verse_id, v.chapter_id, b.bible_version_id, v.global_order
  FROM verses v
  JOIN chapters c ON c.id = v.chapter_id
  JOIN books b ON b.id = c.book_id;

-- A definition's SQL reads the stored read models above it (mv_*). The same
-- SQL with those names replaced reads other sources:
--   'stored'  as written: the per-version refresh and the matview strategy;
--   'view'    the logical views above it, live from the base tables: the
--             logical view, the reference every read model is checked against;
--   'shadow'  the shadow copies being built beside the stored read models named
--             in p_shadowed (a take-over, or a changed definition).
CREATE OR REPLACE FUNCTION progress_definition_sql(
    d progress_read_model_definitions, p_source text, p_shadowed text[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    sql text := d.body;
    up progress_read_model_definitions%ROWTYPE;
BEGIN
    IF p_source = 'stored' THEN
        RETURN sql;
    END IF;
    FOR up IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (d.upstreams) LOOP
        IF p_source = 'view' THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M', up.logical_view, 'g');
        ELSIF up.stored_name = ANY (p_shadowed) THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M', progress_shadow_name(up.stored_name), 'g');
        END IF;
    END LOOP;
    RETURN sql;
END
$$;

-- Where a read model is built before it is swapped in under its own name.
CREATE OR REPLACE FUNCTION progress_shadow_name(p_stored_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT left(p_stored_name, 55) || '__next' $$;

-- (Re)creates every logical view in dependency order. A view whose columns
-- changed is dropped and created again, with the views that read it.
CREATE OR REPLACE FUNCTION progress_install_definitions() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        BEGIN
            EXECUTE format('CREATE OR REPLACE VIEW %I AS %s', d.logical_view, progress_definition_sql(d, 'view'));
        EXCEPTION WHEN invalid_table_definition OR wrong_object_type OR datatype_mismatch THEN
            EXECUTE format('DROP VIEW IF EXISTS %I CASCADE', d.logical_view);
            EXECUTE format('CREATE VIEW %I AS %s', d.logical_view, progress_definition_sql(d, 'view'));
        END;
    END LOOP;
END
$$;
