-- Which verses each live audio version covers with audio recordings: one row per covered verse.
--
-- kind: audio
-- level: verse
-- logical view: audio_verse_coverage
-- key: audio_version_id, verse_id
-- upstreams: -
-- base tables: audio_versions, media_files, media_files_verses, verses, chapters, books
SELECT f.audio_version_id, mapped.verse_id
  FROM progress_live_bible_audio_files f
  -- A lookup per file (index-only on media_files_verses): OFFSET 0 keeps the
  -- planner from hashing every mapping of the database for one version.
 CROSS JOIN LATERAL (
        SELECT mfv.verse_id FROM media_files_verses mfv
         WHERE mfv.media_file_id = f.id AND mfv.deleted_at IS NULL AND mfv.verse_id IS NOT NULL
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
