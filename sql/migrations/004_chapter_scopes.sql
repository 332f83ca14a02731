-- What a queued change can alter, below the version: the chapters it touched.
-- NULL means the whole version (a version-level or structure change, a manual
-- enqueue, a rebuild, and every entry queued before this migration), and the
-- whole version absorbs any chapter set merged into it.
ALTER TABLE progress_refresh_queue
    ADD COLUMN IF NOT EXISTS chapter_ids         text[],
    -- The scope a claim refreshes, kept for status and the refresh log.
    ADD COLUMN IF NOT EXISTS claimed_chapter_ids text[];
