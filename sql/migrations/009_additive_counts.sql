-- A summary's additive counts (see orchestration/read_models.py): the query
-- of the leading CTE its definition names, and the SQL that reads it. NULL
-- for a read model that declares none.
ALTER TABLE progress_read_model_definitions
    ADD COLUMN IF NOT EXISTS counts_sql text,
    ADD COLUMN IF NOT EXISTS rows_sql text;
