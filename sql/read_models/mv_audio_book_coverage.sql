-- Every book of each live audio version's bible version, with its complete chapters (zero coverage included).
--
-- kind: audio
-- level: book
-- logical view: audio_book_coverage
-- key: audio_version_id, book_id
-- upstreams: mv_audio_chapter_coverage
-- base tables: audio_versions, bible_versions, books, chapters
SELECT av.id AS audio_version_id,
       b.id AS book_id,
       count(cc.chapter_id) FILTER (WHERE cc.is_complete) AS complete_chapters,
       count(c.id) AS total_chapters,
       count(c.id) > 0
           AND count(cc.chapter_id) FILTER (WHERE cc.is_complete) = count(c.id) AS is_complete
  FROM audio_versions av
  JOIN books b ON b.bible_version_id = av.bible_version_id
  LEFT JOIN chapters c ON c.book_id = b.id
  LEFT JOIN mv_audio_chapter_coverage cc ON cc.audio_version_id = av.id AND cc.chapter_id = c.id
 WHERE av.deleted_at IS NULL
 GROUP BY av.id, b.id
