-- Base tables the apps write (SPEC section 2). Created only where absent: a
-- database that already has them (Supabase) keeps its own definitions, and the
-- migration runner checks their required columns before this file runs.

CREATE TABLE IF NOT EXISTS language_entities (
    id   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text
);

CREATE TABLE IF NOT EXISTS bible_versions (
    id   text PRIMARY KEY,
    name text UNIQUE
);

CREATE TABLE IF NOT EXISTS books (
    id               text PRIMARY KEY,
    bible_version_id text REFERENCES bible_versions (id) ON DELETE CASCADE,
    book_number      int ,
    name             text
);

CREATE TABLE IF NOT EXISTS chapters (
    id             text PRIMARY KEY,
    book_id        text REFERENCES books (id) ON DELETE CASCADE,
    chapter_number int ,
    total_verses   int  NOT NULL
);

CREATE TABLE IF NOT EXISTS verses (
    id           text PRIMARY KEY,
    chapter_id   text   REFERENCES chapters (id) ON DELETE CASCADE,
    verse_number int   ,
    global_order bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS audio_versions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    language_entity_id uuid REFERENCES language_entities (id),
    bible_version_id   text REFERENCES bible_versions (id),
    name               text,
    created_at         timestamptz DEFAULT now(),
    deleted_at         timestamptz
);

CREATE TABLE IF NOT EXISTS text_versions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    language_entity_id uuid REFERENCES language_entities (id),
    bible_version_id   text REFERENCES bible_versions (id),
    name               text,
    created_at         timestamptz DEFAULT now(),
    deleted_at         timestamptz
);

CREATE TABLE IF NOT EXISTS media_files (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    audio_version_id uuid REFERENCES audio_versions (id) ON DELETE CASCADE,
    media_type       text DEFAULT 'audio' CHECK (media_type IN ('audio', 'video')),
    is_bible_audio   boolean,
    upload_status    text DEFAULT 'pending'
                     CHECK (upload_status IN ('pending', 'uploading', 'completed', 'failed')),
    publish_status   text DEFAULT 'pending'
                     CHECK (publish_status IN ('pending', 'published', 'archived')),
    chapter_id       text REFERENCES chapters (id) ON DELETE SET NULL,
    start_verse_id   text REFERENCES verses (id) ON DELETE SET NULL,
    end_verse_id     text REFERENCES verses (id) ON DELETE SET NULL,
    deleted_at       timestamptz
);

CREATE TABLE IF NOT EXISTS media_files_verses (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    media_file_id uuid REFERENCES media_files (id) ON DELETE CASCADE,
    verse_id      text REFERENCES verses (id) ON DELETE CASCADE,
    deleted_at    timestamptz,
    UNIQUE (media_file_id, verse_id)
);

CREATE TABLE IF NOT EXISTS verse_texts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    text_version_id uuid REFERENCES text_versions (id) ON DELETE CASCADE,
    verse_id        text REFERENCES verses (id) ON DELETE CASCADE,
    verse_text      text,
    deleted_at      timestamptz,
    UNIQUE (verse_id, text_version_id)
);
