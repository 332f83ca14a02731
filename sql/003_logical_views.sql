-- Read-model definitions (SPEC section 3), each written once as a body whose
-- sources are placeholders: {audio_verse_coverage} names the level below.
-- From each body, progress_install_definition() generates
--   * the logical view (placeholders read the logical views below: live from
--     the base tables; the reference every read model is checked against);
--   * progress_rows_<view>(scope) (placeholders read the stored mv_* level
--     below, filtered to one version or language entity: the per-version refresh);
-- and the matview strategy builds its mv_* from the same body.

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

CREATE TABLE IF NOT EXISTS progress_read_model_definitions (
    logical_view text PRIMARY KEY,
    stored_name  text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('audio', 'text')),
    install_order int NOT NULL,
    scope_column text NOT NULL,
    key_columns  text[] NOT NULL,
    body         text NOT NULL
);

-- Replaces {name} placeholders with either the logical view (source 'view')
-- or the stored read model mv_name (source 'stored').
CREATE OR REPLACE FUNCTION progress_definition_sql(p_body text, p_source text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(p_body, '\{([a-z_]+)\}',
                          CASE p_source WHEN 'view' THEN '\1' ELSE 'mv_\1' END, 'g')
$$;

CREATE OR REPLACE FUNCTION progress_install_definitions() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %I AS %s', d.logical_view,
                       progress_definition_sql(d.body, 'view'));
    END LOOP;
END
$$;

INSERT INTO progress_read_model_definitions
    (logical_view, stored_name, kind, install_order, scope_column, key_columns, body) VALUES
('audio_verse_coverage', 'mv_audio_verse_coverage', 'audio', 1, 'audio_version_id', '{audio_version_id,verse_id}', $body$
SELECT f.audio_version_id, mapped.verse_id
  FROM progress_live_bible_audio_files f
  -- A lookup per file (index-only on media_files_verses): OFFSET 0 keeps the
  -- planner from hashing every mapping of the database for one version.
 CROSS JOIN LATERAL (
        SELECT mfv.verse_id FROM media_files_verses mfv
         WHERE mfv.media_file_id = f.id AND mfv.deleted_at IS NULL
        OFFSET 0) AS mapped
UNION
SELECT f.audio_version_id, v.id
  FROM progress_live_bible_audio_files f
  JOIN verses v ON v.chapter_id = f.chapter_id
UNION
SELECT f.audio_version_id, covered.verse_id
  FROM progress_live_bible_audio_files f
  JOIN progress_verse_structure sv ON sv.verse_id = f.start_verse_id
  LEFT JOIN verses ev ON ev.id = f.end_verse_id
  -- Each range is an index range scan on verses.global_order: OFFSET 0 keeps
  -- the planner from flattening this into a join that compares every range
  -- with every verse of the bible version.
 CROSS JOIN LATERAL (
        SELECT s.verse_id FROM progress_verse_structure s
         WHERE s.bible_version_id = sv.bible_version_id
           AND s.global_order BETWEEN sv.global_order
                                  AND CASE WHEN f.end_verse_id IS NULL THEN sv.global_order
                                           ELSE ev.global_order END
        OFFSET 0) AS covered
$body$),
('audio_chapter_coverage', 'mv_audio_chapter_coverage', 'audio', 2, 'audio_version_id', '{audio_version_id,chapter_id}', $body$
SELECT vc.audio_version_id,
       c.id AS chapter_id,
       count(*) AS covered_verses,
       c.total_verses,
       true AS has_any,
       count(*) = c.total_verses AS is_complete
  FROM {audio_verse_coverage} vc
  JOIN verses v ON v.id = vc.verse_id
  JOIN chapters c ON c.id = v.chapter_id
 GROUP BY vc.audio_version_id, c.id, c.total_verses
$body$),
('audio_book_coverage', 'mv_audio_book_coverage', 'audio', 3, 'audio_version_id', '{audio_version_id,book_id}', $body$
SELECT av.id AS audio_version_id,
       b.id AS book_id,
       count(cc.chapter_id) FILTER (WHERE cc.is_complete) AS complete_chapters,
       count(c.id) AS total_chapters,
       count(c.id) > 0
           AND count(cc.chapter_id) FILTER (WHERE cc.is_complete) = count(c.id) AS is_complete
  FROM audio_versions av
  JOIN books b ON b.bible_version_id = av.bible_version_id
  LEFT JOIN chapters c ON c.book_id = b.id
  LEFT JOIN {audio_chapter_coverage} cc ON cc.audio_version_id = av.id AND cc.chapter_id = c.id
 WHERE av.deleted_at IS NULL
 GROUP BY av.id, b.id
$body$),
('audio_version_progress_summary', 'mv_audio_version_progress_summary', 'audio', 4, 'audio_version_id', '{audio_version_id}', $body$
SELECT av.id AS audio_version_id,
       coalesce(cov.covered_verses, 0) AS covered_verses,
       t.total_verses,
       coalesce(cov.covered_verses, 0)::numeric / nullif(t.total_verses, 0) AS verse_fraction,
       coalesce(cov.chapters_with_audio, 0) AS chapters_with_audio,
       t.total_chapters,
       coalesce(cov.chapters_with_audio, 0)::numeric / nullif(t.total_chapters, 0) AS chapter_fraction,
       coalesce(bk.books_complete, 0) AS books_complete,
       t.total_books,
       coalesce(bk.books_complete, 0)::numeric / nullif(t.total_books, 0) AS book_fraction
  FROM audio_versions av
  CROSS JOIN LATERAL progress_bible_version_totals(av.bible_version_id) t
  LEFT JOIN LATERAL (
        SELECT sum(cc.covered_verses)::bigint AS covered_verses, count(*) AS chapters_with_audio
          FROM {audio_chapter_coverage} cc
          JOIN chapters c ON c.id = cc.chapter_id
          JOIN books b ON b.id = c.book_id
         WHERE cc.audio_version_id = av.id AND b.bible_version_id = av.bible_version_id) cov ON true
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE bc.is_complete) AS books_complete
          FROM {audio_book_coverage} bc
         WHERE bc.audio_version_id = av.id) bk ON true
 WHERE av.deleted_at IS NULL
$body$),
('audio_best_version_by_language', 'language_entity_best_audio_version', 'audio', 5, 'language_entity_id', '{language_entity_id}', $body$
SELECT DISTINCT ON (av.language_entity_id) av.language_entity_id, av.id AS audio_version_id
  FROM audio_versions av
  JOIN {audio_version_progress_summary} s ON s.audio_version_id = av.id
 WHERE av.deleted_at IS NULL AND av.language_entity_id IS NOT NULL
 ORDER BY av.language_entity_id,
          progress_version_rank(s.verse_fraction, s.chapter_fraction, s.book_fraction,
                                av.created_at) DESC,
          av.id
$body$),
('text_verse_coverage', 'mv_text_verse_coverage', 'text', 6, 'text_version_id', '{text_version_id,verse_id}', $body$
SELECT vt.text_version_id, vt.verse_id
  FROM verse_texts vt
  JOIN text_versions tv ON tv.id = vt.text_version_id AND tv.deleted_at IS NULL
 WHERE vt.deleted_at IS NULL
$body$),
('text_chapter_coverage', 'mv_text_chapter_coverage', 'text', 7, 'text_version_id', '{text_version_id,chapter_id}', $body$
SELECT vc.text_version_id,
       c.id AS chapter_id,
       count(*) AS verses_with_text,
       c.total_verses,
       count(*) = c.total_verses AS is_complete
  FROM {text_verse_coverage} vc
  JOIN verses v ON v.id = vc.verse_id
  JOIN chapters c ON c.id = v.chapter_id
 GROUP BY vc.text_version_id, c.id, c.total_verses
$body$),
('text_book_coverage', 'mv_text_book_coverage', 'text', 8, 'text_version_id', '{text_version_id,book_id}', $body$
SELECT tv.id AS text_version_id,
       b.id AS book_id,
       count(cc.chapter_id) FILTER (WHERE cc.is_complete) AS complete_chapters,
       count(c.id) AS total_chapters,
       count(c.id) > 0
           AND count(cc.chapter_id) FILTER (WHERE cc.is_complete) = count(c.id) AS is_complete
  FROM text_versions tv
  JOIN books b ON b.bible_version_id = tv.bible_version_id
  LEFT JOIN chapters c ON c.book_id = b.id
  LEFT JOIN {text_chapter_coverage} cc ON cc.text_version_id = tv.id AND cc.chapter_id = c.id
 WHERE tv.deleted_at IS NULL
 GROUP BY tv.id, b.id
$body$),
('text_version_progress_summary', 'mv_text_version_progress_summary', 'text', 9, 'text_version_id', '{text_version_id}', $body$
SELECT tv.id AS text_version_id,
       coalesce(cov.covered_verses, 0) AS covered_verses,
       t.total_verses,
       coalesce(cov.covered_verses, 0)::numeric / nullif(t.total_verses, 0) AS verse_fraction,
       coalesce(cov.complete_chapters, 0) AS complete_chapters,
       t.total_chapters,
       coalesce(cov.complete_chapters, 0)::numeric / nullif(t.total_chapters, 0) AS chapter_fraction,
       coalesce(bk.books_complete, 0) AS books_complete,
       t.total_books,
       coalesce(bk.books_complete, 0)::numeric / nullif(t.total_books, 0) AS book_fraction
  FROM text_versions tv
  CROSS JOIN LATERAL progress_bible_version_totals(tv.bible_version_id) t
  LEFT JOIN LATERAL (
        SELECT sum(cc.verses_with_text)::bigint AS covered_verses,
               count(*) FILTER (WHERE cc.is_complete) AS complete_chapters
          FROM {text_chapter_coverage} cc
          JOIN chapters c ON c.id = cc.chapter_id
          JOIN books b ON b.id = c.book_id
         WHERE cc.text_version_id = tv.id AND b.bible_version_id = tv.bible_version_id) cov ON true
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE bc.is_complete) AS books_complete
          FROM {text_book_coverage} bc
         WHERE bc.text_version_id = tv.id) bk ON true
 WHERE tv.deleted_at IS NULL
$body$),
('text_best_version_by_language', 'language_entity_best_text_version', 'text', 10, 'language_entity_id', '{language_entity_id}', $body$
SELECT DISTINCT ON (tv.language_entity_id) tv.language_entity_id, tv.id AS text_version_id
  FROM text_versions tv
  JOIN {text_version_progress_summary} s ON s.text_version_id = tv.id
 WHERE tv.deleted_at IS NULL AND tv.language_entity_id IS NOT NULL
 ORDER BY tv.language_entity_id,
          progress_version_rank(s.verse_fraction, s.chapter_fraction, s.book_fraction,
                                tv.created_at) DESC,
          tv.id
$body$)
ON CONFLICT (logical_view) DO UPDATE
   SET stored_name = EXCLUDED.stored_name,
       kind = EXCLUDED.kind,
       install_order = EXCLUDED.install_order,
       scope_column = EXCLUDED.scope_column,
       key_columns = EXCLUDED.key_columns,
       body = EXCLUDED.body;

SELECT progress_install_definitions();
