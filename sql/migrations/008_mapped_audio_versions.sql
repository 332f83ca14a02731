-- The audio versions that have (or had) a media file with verse mappings: a
-- chapter-scoped refresh looks for mapped files only in these, so a version
-- recorded as chapter files or verse ranges never reads the mappings other
-- versions hold for the same verses. A superset is fine: a version stays
-- listed when its mappings go. Kept by the change-capture triggers and
-- filled by every migrate (sql/definitions/04_change_capture.sql).
CREATE TABLE IF NOT EXISTS progress_mapped_audio_versions (
    audio_version_id uuid PRIMARY KEY
);
