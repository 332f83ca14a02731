-- Per audio version and chapter with any coverage: how many verses are covered and whether the chapter is complete.
--
-- kind: audio
-- level: chapter
-- logical view: audio_chapter_coverage
-- key: audio_version_id, chapter_id
-- upstreams: mv_audio_verse_coverage
-- base tables: chapters, verses
SELECT vc.audio_version_id,
       c.id AS chapter_id,
       count(*) AS covered_verses,
       c.total_verses,
       true AS has_any,
       count(*) = c.total_verses AS is_complete
  FROM mv_audio_verse_coverage vc
  JOIN verses v ON v.id = vc.verse_id
  JOIN chapters c ON c.id = v.chapter_id
 GROUP BY vc.audio_version_id, c.id, c.total_verses
