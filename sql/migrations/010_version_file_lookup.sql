-- Whether a file belongs to a version, answered inside that version's own
-- entries: a chapter-scoped refresh of a version with mapped files finds the
-- mappings of the chapters' verses in every version, and keeps its own
-- without reading the other versions' files (one page each, which at scale
-- comes from disk: a cost growing with the versions mapping the same verses).
CREATE INDEX IF NOT EXISTS progress_media_files_version_file_idx ON media_files (audio_version_id, id);
