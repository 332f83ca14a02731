-- The chapters each verse-range file reaches, per audio version: a
-- chapter-scoped refresh finds the ranges reaching its chapters with one
-- lookup per chapter instead of comparing every range of the version (a
-- version recorded verse by verse holds tens of thousands). A superset is
-- fine: rows of a moved or deleted range may stay until a rebuild; the files
-- found are read through the live files and their coverage recomputed. Kept
-- by the change-capture triggers, filled by every migrate and every rebuild
-- (sql/definitions/04_change_capture.sql).
CREATE TABLE IF NOT EXISTS progress_range_file_chapters (
    audio_version_id uuid NOT NULL,
    chapter_id       text NOT NULL,
    media_file_id    uuid NOT NULL,
    PRIMARY KEY (audio_version_id, chapter_id, media_file_id)
);

-- Audio versions whose ranges a structure change may have moved to other
-- chapters: the change queues them whole, and their whole-version refresh
-- lists their ranges' chapters again.
CREATE TABLE IF NOT EXISTS progress_range_versions_to_relist (
    audio_version_id uuid PRIMARY KEY
);
