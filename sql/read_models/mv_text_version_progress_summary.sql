-- How much of each live text version is done: verse, chapter and book counts and fractions within its own bible version.
--
-- kind: text
-- level: summary
-- logical view: text_version_progress_summary
-- key: text_version_id
-- upstreams: mv_text_verse_coverage, mv_text_chapter_coverage, mv_text_book_coverage
-- base tables: text_versions, books, chapters, verses
-- additive counts: counts
WITH counts AS (
    SELECT tv.id AS text_version_id,
           coalesce(cov.covered_verses, 0) AS covered_verses,
           t.total_verses,
           coalesce(cov.complete_chapters, 0) AS complete_chapters,
           t.total_chapters,
           coalesce(bk.books_complete, 0) AS books_complete,
           t.total_books
      FROM text_versions tv
      CROSS JOIN LATERAL progress_bible_version_totals(tv.bible_version_id) t
      LEFT JOIN LATERAL (
            SELECT sum(cc.verses_with_text)::bigint AS covered_verses,
                   count(*) FILTER (WHERE cc.is_complete) AS complete_chapters
              FROM mv_text_chapter_coverage cc
              JOIN chapters c ON c.id = cc.chapter_id
              JOIN books b ON b.id = c.book_id
             WHERE cc.text_version_id = tv.id AND b.bible_version_id = tv.bible_version_id) cov ON true
      LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE bc.is_complete) AS books_complete
              FROM mv_text_book_coverage bc
             WHERE bc.text_version_id = tv.id) bk ON true
     WHERE tv.deleted_at IS NULL)
SELECT text_version_id,
       covered_verses,
       total_verses,
       covered_verses::numeric / nullif(total_verses, 0) AS verse_fraction,
       complete_chapters,
       total_chapters,
       complete_chapters::numeric / nullif(total_chapters, 0) AS chapter_fraction,
       books_complete,
       total_books,
       books_complete::numeric / nullif(total_books, 0) AS book_fraction
  FROM counts
