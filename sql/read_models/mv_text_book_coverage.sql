-- Every book of each live text version's bible version, with its complete chapters (zero coverage included).
--
-- kind: text
-- level: book
-- logical view: text_book_coverage
-- key: text_version_id, book_id
-- upstreams: mv_text_chapter_coverage
-- base tables: text_versions, bible_versions, books, chapters
SELECT tv.id AS text_version_id,
       b.id AS book_id,
       count(cc.chapter_id) FILTER (WHERE cc.is_complete) AS complete_chapters,
       count(c.id) AS total_chapters,
       count(c.id) > 0
           AND count(cc.chapter_id) FILTER (WHERE cc.is_complete) = count(c.id) AS is_complete
  FROM text_versions tv
  JOIN books b ON b.bible_version_id = tv.bible_version_id
  LEFT JOIN chapters c ON c.book_id = b.id
  LEFT JOIN mv_text_chapter_coverage cc ON cc.text_version_id = tv.id AND cc.chapter_id = c.id
 WHERE tv.deleted_at IS NULL
 GROUP BY tv.id, b.id
