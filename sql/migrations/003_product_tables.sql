-- The product's own tables: settings, the read-model registry, the refresh
-- queue and the dead letter table. Written so that it also applies on a
-- database of release 0.1.0 (which has them all) and on one that runs the
-- previous design (which has a queue of its own: it is altered in place, never
-- recreated, so every pending entry is kept).

CREATE TABLE IF NOT EXISTS progress_refresh_settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The first migrate may name the strategy (progress.initial_strategy).
INSERT INTO progress_refresh_settings (key, value) VALUES
    ('storage_strategy', coalesce(nullif(current_setting('progress.initial_strategy', true), ''), 'table')),
    ('max_attempts', '3'),
    ('retry_backoff_seconds', '30'),
    ('lease_seconds', '300'),
    ('drain_batch_size', '25')
ON CONFLICT (key) DO NOTHING;

-- One row per read model, written from sql/read_models/ at every migrate: what
-- the generated SQL (storage, logical views, refresh functions) is made from.
CREATE TABLE IF NOT EXISTS progress_read_model_definitions (
    logical_view  text PRIMARY KEY,
    stored_name   text NOT NULL UNIQUE,
    kind          text NOT NULL CHECK (kind IN ('audio', 'text')),
    install_order int NOT NULL,
    scope_column  text NOT NULL,
    key_columns   text[] NOT NULL,
    body          text NOT NULL
);
ALTER TABLE progress_read_model_definitions
    ADD COLUMN IF NOT EXISTS lookup_columns text[] NOT NULL DEFAULT '{}',
    ADD COLUMN IF NOT EXISTS upstreams text[] NOT NULL DEFAULT '{}';

-- Release 0.1.0 mirrored the Python read-model list here; nothing read it.
DROP TABLE IF EXISTS progress_read_models;

CREATE TABLE IF NOT EXISTS progress_refresh_queue (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('audio', 'text')),
    version_id  uuid NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, version_id)
);
ALTER TABLE progress_refresh_queue
    -- Bumped by every change; a refresh removes the entry only when the
    -- generation it claimed is still current, so a change made meanwhile stays queued.
    ADD COLUMN IF NOT EXISTS generation         bigint NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS changed_at         timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS attempts           int NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS not_before         timestamptz,
    ADD COLUMN IF NOT EXISTS claimed_by         text,
    ADD COLUMN IF NOT EXISTS claimed_at         timestamptz,
    ADD COLUMN IF NOT EXISTS claimed_generation bigint,
    ADD COLUMN IF NOT EXISTS lease_until        timestamptz,
    ADD COLUMN IF NOT EXISTS last_error         text;
-- The previous design's queue let enqueued_at be NULL.
UPDATE progress_refresh_queue SET enqueued_at = now() WHERE enqueued_at IS NULL;
ALTER TABLE progress_refresh_queue
    ALTER COLUMN enqueued_at SET DEFAULT now(),
    ALTER COLUMN enqueued_at SET NOT NULL;

-- Every queue write is an upsert on (kind, version_id): a queue kept without
-- that constraint gets it, its duplicates merged into the oldest entry.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_index i
         WHERE i.indrelid = 'progress_refresh_queue'::regclass AND i.indisunique AND i.indpred IS NULL
           AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a
                 WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)) = '{kind,version_id}'
           AND i.indnkeyatts = 2) THEN
        DELETE FROM progress_refresh_queue q USING progress_refresh_queue older
         WHERE older.kind = q.kind AND older.version_id = q.version_id AND older.id < q.id;
        ALTER TABLE progress_refresh_queue ADD UNIQUE (kind, version_id);
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS progress_refresh_queue_enqueued_idx
    ON progress_refresh_queue (enqueued_at, id);

CREATE TABLE IF NOT EXISTS progress_refresh_dead_letter (
    kind            text NOT NULL CHECK (kind IN ('audio', 'text')),
    version_id      uuid NOT NULL,
    attempts        int NOT NULL,
    last_error      text,
    first_queued_at timestamptz NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, version_id)
);
