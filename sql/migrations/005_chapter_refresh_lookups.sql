-- What a chapter-scoped refresh looks up, in time proportional to the
-- changed chapters rather than to the version or the database.

-- The files mapped to a chapter's verses, found verse first.
CREATE INDEX IF NOT EXISTS progress_media_files_verses_verse_idx ON media_files_verses (verse_id)
    INCLUDE (media_file_id, deleted_at);
-- A version's file of a chapter.
CREATE INDEX IF NOT EXISTS progress_media_files_version_chapter_idx ON media_files (audio_version_id, chapter_id)
    WHERE chapter_id IS NOT NULL;
-- A version's verse ranges (none for a version recorded as chapter files).
CREATE INDEX IF NOT EXISTS progress_media_files_version_range_idx ON media_files (audio_version_id)
    INCLUDE (id, start_verse_id, end_verse_id) WHERE start_verse_id IS NOT NULL;

-- The verse, chapter and book counts of each bible version: what every
-- summary divides by, kept exact by the structure triggers (books, chapters,
-- verses) in the writer's own transaction, so a summary reads one row
-- instead of counting a bible's verses.
CREATE TABLE IF NOT EXISTS progress_bible_version_counts (
    bible_version_id text PRIMARY KEY,
    total_verses     bigint NOT NULL DEFAULT 0,
    total_chapters   bigint NOT NULL DEFAULT 0,
    total_books      bigint NOT NULL DEFAULT 0
);
