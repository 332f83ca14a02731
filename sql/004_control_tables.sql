-- The product's own bookkeeping: settings, the read-model registry (written
-- from orchestration/read_models.py at every migrate), the refresh queue and
-- the dead letter table.

CREATE TABLE IF NOT EXISTS progress_refresh_settings (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The first migrate may name the strategy (progress.initial_strategy); later
-- switches go through progress_install_storage().
INSERT INTO progress_refresh_settings (key, value) VALUES
    ('storage_strategy', coalesce(nullif(current_setting('progress.initial_strategy', true), ''), 'table')),
    ('max_attempts', '3'),
    ('retry_backoff_seconds', '30'),
    ('lease_seconds', '300'),
    ('drain_batch_size', '25')
ON CONFLICT (key) DO NOTHING;

CREATE OR REPLACE FUNCTION progress_setting(p_key text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT value FROM progress_refresh_settings WHERE key = p_key
$$;

-- The read-model graph as orchestration/read_models.py declares it, written
-- at every migrate, so that SQL clients (status, checks) see the same graph.
CREATE TABLE IF NOT EXISTS progress_read_models (
    name         text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('audio', 'text')),
    level        text NOT NULL,
    logical_view text NOT NULL,
    upstreams    text[] NOT NULL DEFAULT '{}',
    description  text NOT NULL DEFAULT ''
);

CREATE TABLE IF NOT EXISTS progress_refresh_queue (
    id                 bigserial PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('audio', 'text')),
    version_id         uuid NOT NULL,
    enqueued_at        timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every change; a refresh removes the entry only when the
    -- generation it claimed is still current, so a change made meanwhile stays queued.
    generation         bigint NOT NULL DEFAULT 1,
    changed_at         timestamptz NOT NULL DEFAULT now(),
    attempts           int NOT NULL DEFAULT 0,
    not_before         timestamptz,
    claimed_by         text,
    claimed_at         timestamptz,
    claimed_generation bigint,
    lease_until        timestamptz,
    last_error         text,
    UNIQUE (kind, version_id)
);

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
