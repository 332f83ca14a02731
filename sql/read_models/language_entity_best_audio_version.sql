-- The best live audio version of each language: highest verse, then chapter, then book fraction, then newest, then smallest id.
--
-- kind: audio
-- level: best
-- logical view: audio_best_version_by_language
-- key: language_entity_id
-- lookup: audio_version_id
-- upstreams: mv_audio_version_progress_summary
-- base tables: language_entities, audio_versions
SELECT DISTINCT ON (av.language_entity_id) av.language_entity_id, av.id AS audio_version_id
  FROM audio_versions av
  JOIN mv_audio_version_progress_summary s ON s.audio_version_id = av.id
 WHERE av.deleted_at IS NULL AND av.language_entity_id IS NOT NULL
 ORDER BY av.language_entity_id,
          progress_version_rank(s.verse_fraction, s.chapter_fraction, s.book_fraction,
                                av.created_at) DESC,
          av.id
