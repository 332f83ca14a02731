-- The best live text version of each language: highest verse, then chapter, then book fraction, then newest, then smallest id.
--
-- kind: text
-- level: best
-- logical view: text_best_version_by_language
-- key: language_entity_id
-- lookup: text_version_id
-- upstreams: mv_text_version_progress_summary
-- base tables: language_entities, text_versions
SELECT DISTINCT ON (tv.language_entity_id) tv.language_entity_id, tv.id AS text_version_id
  FROM text_versions tv
  JOIN mv_text_version_progress_summary s ON s.text_version_id = tv.id
 WHERE tv.deleted_at IS NULL AND tv.language_entity_id IS NOT NULL
 ORDER BY tv.language_entity_id,
          progress_version_rank(s.verse_fraction, s.chapter_fraction, s.book_fraction,
                                tv.created_at) DESC,
          tv.id
