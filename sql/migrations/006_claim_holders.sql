-- Who holds a claim, in a form the database can check against its own
-- sessions: the claimant's backend pid and that backend's start time (a pid
-- alone can be reused). A claim whose holder's session is gone is taken over
-- by the next claim instead of waiting out its lease.
ALTER TABLE progress_refresh_queue
    ADD COLUMN IF NOT EXISTS holder_pid int,
    ADD COLUMN IF NOT EXISTS holder_backend_start timestamptz;

-- 'off' behind a transaction-mode connection pooler, where the backend that
-- claimed is not the worker's own: claims then wait for their lease (a server
-- restart still frees them at once). See docs/operators-guide.md.
INSERT INTO progress_refresh_settings (key, value) VALUES ('claim_holder_check', 'on')
ON CONFLICT (key) DO NOTHING;
