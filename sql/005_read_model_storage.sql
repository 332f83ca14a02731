-- Where the read models are stored, by strategy (chosen at migrate time,
-- `progress-refresh migrate --strategy table|matview`):
--   table    ordinary tables maintained per version (the default): the same
--            names and columns as the seed's materialized views, so readers of
--            the mv_* names keep working;
--   matview  true materialized views, refreshed whole in dependency order with
--            REFRESH MATERIALIZED VIEW [CONCURRENTLY]: the seed's design, kept
--            as an option and as the benchmark's baseline.
-- Either way each stored read model is created from its definition (so its
-- columns and types are exactly the logical view's), with a unique index on
-- its key and an index on its lookup columns.

ALTER TABLE progress_read_model_definitions
    ADD COLUMN IF NOT EXISTS lookup_columns text[] NOT NULL DEFAULT '{}';
UPDATE progress_read_model_definitions
   SET lookup_columns = ARRAY[kind || '_version_id']
 WHERE scope_column = 'language_entity_id';

CREATE OR REPLACE FUNCTION progress_storage_strategy() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(progress_setting('storage_strategy'), 'table')
$$;

-- True when every stored read model can be read (a materialized view cannot
-- until its first refresh).
CREATE OR REPLACE FUNCTION progress_read_models_readable() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(bool_and(c.relispopulated), false)
      FROM progress_read_model_definitions d
      JOIN pg_class c ON c.oid = to_regclass(d.stored_name)
$$;

-- A quoted, comma-separated column list for generated DDL.
CREATE OR REPLACE FUNCTION progress_column_list(p_columns text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_to_string(ARRAY(SELECT quote_ident(c) FROM unnest(p_columns) AS c), ', ')
$$;

-- Creates the stored read models for a strategy, replacing those of the
-- other strategy (their rows are dropped: repopulate with
-- refresh_progress_materialized_views_full()). Idempotent.
CREATE OR REPLACE FUNCTION progress_install_storage(p_strategy text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    wanted "char" := CASE p_strategy WHEN 'table' THEN 'r' WHEN 'matview' THEN 'm' END;
    existing "char";
    select_rows text;
BEGIN
    IF wanted IS NULL THEN
        RAISE EXCEPTION 'unknown storage strategy %: expected table or matview', quote_literal(p_strategy)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order DESC LOOP
        SELECT relkind INTO existing FROM pg_class WHERE oid = to_regclass(d.stored_name);
        IF existing IS NOT NULL AND existing <> wanted THEN
            EXECUTE format('DROP %s %I CASCADE',
                           CASE existing WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, d.stored_name);
            DELETE FROM progress_refresh_settings WHERE key = 'populated_at';
        END IF;
    END LOOP;
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        CONTINUE WHEN to_regclass(d.stored_name) IS NOT NULL;
        select_rows := format('SELECT * FROM (%s) r', progress_definition_sql(d.body, 'stored'));
        IF p_strategy = 'table' THEN
            EXECUTE format('CREATE TABLE %I AS %s WITH NO DATA', d.stored_name, select_rows);
            EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (%s)', d.stored_name,
                           progress_column_list(d.key_columns));
        ELSE
            EXECUTE format('CREATE MATERIALIZED VIEW %I AS %s WITH NO DATA', d.stored_name, select_rows);
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (%s)', d.stored_name || '_key', d.stored_name,
                           progress_column_list(d.key_columns));
        END IF;
        IF cardinality(d.lookup_columns) > 0 THEN
            EXECUTE format('CREATE INDEX %I ON %I (%s)', d.stored_name || '_lookup', d.stored_name,
                           progress_column_list(d.lookup_columns));
        END IF;
    END LOOP;
    INSERT INTO progress_refresh_settings (key, value) VALUES ('storage_strategy', p_strategy)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();
END
$$;

SELECT progress_install_storage(progress_storage_strategy());
