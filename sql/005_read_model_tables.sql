-- Read models stored as ordinary tables, maintained per version (the default
-- storage strategy). Same names and columns as the seed's materialized views,
-- so readers of the mv_* names keep working. Primary keys are the unique
-- indexes readers look up by (a version's rows are a key prefix).

CREATE TABLE IF NOT EXISTS mv_audio_verse_coverage (
    audio_version_id uuid NOT NULL,
    verse_id         text NOT NULL,
    PRIMARY KEY (audio_version_id, verse_id)
);

CREATE TABLE IF NOT EXISTS mv_audio_chapter_coverage (
    audio_version_id uuid    NOT NULL,
    chapter_id       text    NOT NULL,
    covered_verses   bigint  NOT NULL,
    total_verses     int     NOT NULL,
    has_any          boolean NOT NULL,
    is_complete      boolean NOT NULL,
    PRIMARY KEY (audio_version_id, chapter_id)
);

CREATE TABLE IF NOT EXISTS mv_audio_book_coverage (
    audio_version_id  uuid    NOT NULL,
    book_id           text    NOT NULL,
    complete_chapters bigint  NOT NULL,
    total_chapters    bigint  NOT NULL,
    is_complete       boolean NOT NULL,
    PRIMARY KEY (audio_version_id, book_id)
);

CREATE TABLE IF NOT EXISTS mv_audio_version_progress_summary (
    audio_version_id    uuid PRIMARY KEY,
    covered_verses      bigint NOT NULL,
    total_verses        bigint NOT NULL,
    verse_fraction      numeric,
    chapters_with_audio bigint NOT NULL,
    total_chapters      bigint NOT NULL,
    chapter_fraction    numeric,
    books_complete      bigint NOT NULL,
    total_books         bigint NOT NULL,
    book_fraction       numeric
);

CREATE TABLE IF NOT EXISTS mv_text_verse_coverage (
    text_version_id uuid NOT NULL,
    verse_id        text NOT NULL,
    PRIMARY KEY (text_version_id, verse_id)
);

CREATE TABLE IF NOT EXISTS mv_text_chapter_coverage (
    text_version_id  uuid    NOT NULL,
    chapter_id       text    NOT NULL,
    verses_with_text bigint  NOT NULL,
    total_verses     int     NOT NULL,
    is_complete      boolean NOT NULL,
    PRIMARY KEY (text_version_id, chapter_id)
);

CREATE TABLE IF NOT EXISTS mv_text_book_coverage (
    text_version_id   uuid    NOT NULL,
    book_id           text    NOT NULL,
    complete_chapters bigint  NOT NULL,
    total_chapters    bigint  NOT NULL,
    is_complete       boolean NOT NULL,
    PRIMARY KEY (text_version_id, book_id)
);

CREATE TABLE IF NOT EXISTS mv_text_version_progress_summary (
    text_version_id   uuid PRIMARY KEY,
    covered_verses    bigint NOT NULL,
    total_verses      bigint NOT NULL,
    verse_fraction    numeric,
    complete_chapters bigint NOT NULL,
    total_chapters    bigint NOT NULL,
    chapter_fraction  numeric,
    books_complete    bigint NOT NULL,
    total_books       bigint NOT NULL,
    book_fraction     numeric
);

CREATE TABLE IF NOT EXISTS language_entity_best_audio_version (
    language_entity_id uuid PRIMARY KEY,
    audio_version_id   uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS language_entity_best_audio_version_version_idx
    ON language_entity_best_audio_version (audio_version_id);

CREATE TABLE IF NOT EXISTS language_entity_best_text_version (
    language_entity_id uuid PRIMARY KEY,
    text_version_id    uuid NOT NULL
);
CREATE INDEX IF NOT EXISTS language_entity_best_text_version_version_idx
    ON language_entity_best_text_version (text_version_id);
