-- How much of each live audio version is done: verse, chapter and book counts and fractions within its own bible version.
--
-- kind: audio
-- level: summary
-- logical view: audio_version_progress_summary
-- key: audio_version_id
-- upstreams: mv_audio_verse_coverage, mv_audio_chapter_coverage, mv_audio_book_coverage
-- base tables: audio_versions, books, chapters, verses
-- additive counts: counts
WITH counts AS (
    SELECT av.id AS audio_version_id,
           coalesce(cov.covered_verses, 0) AS covered_verses,
           t.total_verses,
           coalesce(cov.chapters_with_audio, 0) AS chapters_with_audio,
           t.total_chapters,
           coalesce(bk.books_complete, 0) AS books_complete,
           t.total_books
      FROM audio_versions av
      CROSS JOIN LATERAL progress_bible_version_totals(av.bible_version_id) t
      LEFT JOIN LATERAL (
            SELECT sum(cc.covered_verses)::bigint AS covered_verses, count(*) AS chapters_with_audio
              FROM mv_audio_chapter_coverage cc
              JOIN chapters c ON c.id = cc.chapter_id
              JOIN books b ON b.id = c.book_id
             WHERE cc.audio_version_id = av.id AND b.bible_version_id = av.bible_version_id) cov ON true
      LEFT JOIN LATERAL (
            SELECT count(*) FILTER (WHERE bc.is_complete) AS books_complete
              FROM mv_audio_book_coverage bc
             WHERE bc.audio_version_id = av.id) bk ON true
     WHERE av.deleted_at IS NULL)
SELECT audio_version_id,
       covered_verses,
       total_verses,
       covered_verses::numeric / nullif(total_verses, 0) AS verse_fraction,
       chapters_with_audio,
       total_chapters,
       chapters_with_audio::numeric / nullif(total_chapters, 0) AS chapter_fraction,
       books_complete,
       total_books,
       books_complete::numeric / nullif(total_books, 0) AS book_fraction
  FROM counts
