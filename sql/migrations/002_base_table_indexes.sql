-- Indexes the per-version refresh and the change-capture triggers rely on.
-- Named with a progress_ prefix so they never collide with an existing
-- database's own indexes; IF NOT EXISTS keeps the file re-runnable.
--
-- A version's rows are spread over the heap (apps write many versions at
-- once), so the per-version indexes carry every column the refresh reads:
-- index-only scans then read a version's rows from a few index pages instead
-- of one heap page per row, and the cost stays flat as the database grows.

CREATE INDEX IF NOT EXISTS progress_books_bible_version_idx ON books (bible_version_id, id);
CREATE INDEX IF NOT EXISTS progress_chapters_book_idx ON chapters (book_id, id);
CREATE INDEX IF NOT EXISTS progress_verses_chapter_idx ON verses (chapter_id, id);
CREATE INDEX IF NOT EXISTS progress_verses_global_order_idx ON verses (global_order);
CREATE INDEX IF NOT EXISTS progress_audio_versions_language_idx ON audio_versions (language_entity_id);
CREATE INDEX IF NOT EXISTS progress_audio_versions_bible_idx ON audio_versions (bible_version_id);
CREATE INDEX IF NOT EXISTS progress_text_versions_language_idx ON text_versions (language_entity_id);
CREATE INDEX IF NOT EXISTS progress_text_versions_bible_idx ON text_versions (bible_version_id);
DROP INDEX IF EXISTS progress_media_files_version_idx;
CREATE INDEX IF NOT EXISTS progress_media_files_version_covering_idx ON media_files (audio_version_id)
    INCLUDE (id, chapter_id, start_verse_id, end_verse_id,
             media_type, is_bible_audio, upload_status, publish_status, deleted_at);
CREATE INDEX IF NOT EXISTS progress_media_files_chapter_idx ON media_files (chapter_id) WHERE chapter_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS progress_media_files_start_verse_idx ON media_files (start_verse_id) WHERE start_verse_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS progress_media_files_end_verse_idx ON media_files (end_verse_id) WHERE end_verse_id IS NOT NULL;
DROP INDEX IF EXISTS progress_media_files_verses_file_idx;
CREATE INDEX IF NOT EXISTS progress_media_files_verses_file_covering_idx ON media_files_verses (media_file_id, verse_id)
    INCLUDE (deleted_at);
DROP INDEX IF EXISTS progress_verse_texts_version_idx;
CREATE INDEX IF NOT EXISTS progress_verse_texts_version_covering_idx ON verse_texts (text_version_id, verse_id)
    INCLUDE (deleted_at);
