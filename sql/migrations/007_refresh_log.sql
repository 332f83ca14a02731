-- Every finished refresh of a version, whoever ran it (a Dagster run, the
-- command line, the SQL API called by pg_cron), so Dagster can report the
-- refreshes it did not run and everybody can read the lag of what was
-- refreshed. Written by progress_log_refresh() in the refresh's own
-- transaction; rows older than refresh_log_keep_days are pruned as new ones
-- arrive.
--
-- first_enqueued_at is the queue entry's enqueued_at read inside the refresh
-- transaction, before progress_finish() releases the entry (a release resets
-- enqueued_at to the claim time, since every older change was seen): the
-- oldest change this refresh made visible. NULL for a version refreshed by
-- name while it was not queued, which has no lag to measure.
CREATE TABLE IF NOT EXISTS progress_refresh_log (
    id                bigserial PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('audio', 'text')),
    version_id        uuid NOT NULL,
    first_enqueued_at timestamptz,
    -- clock_timestamp() at the end of the refresh, in its transaction: its commit, to a few milliseconds.
    refreshed_at      timestamptz NOT NULL,
    -- 'dagster:<run id>', 'cli' or 'sql' (progress.refresh_source of the session, 'sql' when unset).
    source            text NOT NULL,
    -- Rows inserted, updated and deleted in the version's read models; NULL for a whole-view refresh.
    rows_written      bigint,
    -- The writing transaction: a reader takes rows below its snapshot's xmin,
    -- which no transaction still open can add to, so none is skipped.
    xact_id           xid8 NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX IF NOT EXISTS progress_refresh_log_refreshed_idx ON progress_refresh_log (refreshed_at);
CREATE INDEX IF NOT EXISTS progress_refresh_log_xact_idx ON progress_refresh_log (xact_id);
CREATE INDEX IF NOT EXISTS progress_refresh_log_source_idx ON progress_refresh_log (source, kind);

INSERT INTO progress_refresh_settings (key, value) VALUES ('refresh_log_keep_days', '7')
ON CONFLICT (key) DO NOTHING;
