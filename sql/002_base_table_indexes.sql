-- Indexes the per-version refresh and the change-capture triggers rely on.
-- Named with a progress_ prefix so they never collide with an existing
-- database's own indexes; IF NOT EXISTS keeps the file re-runnable.

CREATE INDEX IF NOT EXISTS progress_books_bible_version_idx ON books (bible_version_id, id);
CREATE INDEX IF NOT EXISTS progress_chapters_book_idx ON chapters (book_id, id);
CREATE INDEX IF NOT EXISTS progress_verses_chapter_idx ON verses (chapter_id, id);
CREATE INDEX IF NOT EXISTS progress_verses_global_order_idx ON verses (global_order);
CREATE INDEX IF NOT EXISTS progress_audio_versions_language_idx ON audio_versions (language_entity_id);
CREATE INDEX IF NOT EXISTS progress_audio_versions_bible_idx ON audio_versions (bible_version_id);
CREATE INDEX IF NOT EXISTS progress_text_versions_language_idx ON text_versions (language_entity_id);
CREATE INDEX IF NOT EXISTS progress_text_versions_bible_idx ON text_versions (bible_version_id);
CREATE INDEX IF NOT EXISTS progress_media_files_version_idx ON media_files (audio_version_id);
CREATE INDEX IF NOT EXISTS progress_media_files_chapter_idx ON media_files (chapter_id) WHERE chapter_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS progress_media_files_start_verse_idx ON media_files (start_verse_id) WHERE start_verse_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS progress_media_files_end_verse_idx ON media_files (end_verse_id) WHERE end_verse_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS progress_media_files_verses_file_idx ON media_files_verses (media_file_id, verse_id);
CREATE INDEX IF NOT EXISTS progress_verse_texts_version_idx ON verse_texts (text_version_id, verse_id);
