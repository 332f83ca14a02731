-- When each logged refresh started, and what it wrote to each read model: the
-- sensor that reports refreshes Dagster did not run (the command line, the SQL
-- API, pg_cron) gives each read model its own rows written and the time the
-- refreshes took, as a run's materializations do. NULL in rows logged before
-- this release; rows_by_read_model is NULL for a whole-view (matview) refresh,
-- and holds the language-entity read models only when the refresh of the
-- version refreshed them (a drain refreshes them once for its batch).
ALTER TABLE progress_refresh_log
    ADD COLUMN IF NOT EXISTS started_at timestamptz,
    ADD COLUMN IF NOT EXISTS rows_by_read_model jsonb;
