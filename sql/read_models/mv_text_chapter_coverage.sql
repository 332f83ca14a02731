-- Per text version and chapter with any coverage: how many verses are covered and whether the chapter is complete.
--
-- kind: text
-- level: chapter
-- logical view: text_chapter_coverage
-- key: text_version_id, chapter_id
-- upstreams: mv_text_verse_coverage
-- base tables: chapters, verses
SELECT vc.text_version_id,
       c.id AS chapter_id,
       count(*) AS verses_with_text,
       c.total_verses,
       count(*) = c.total_verses AS is_complete
  FROM mv_text_verse_coverage vc
  JOIN verses v ON v.id = vc.verse_id
  JOIN chapters c ON c.id = v.chapter_id
 GROUP BY vc.text_version_id, c.id, c.total_verses
