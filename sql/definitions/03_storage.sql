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

-- Creates a stored read model, or a shadow of one (p_name), from its
-- definition: a table keyed by its key, or a materialized view with a unique
-- index on it; plus an index on the lookup columns. Populated, the rows go in
-- key order (a version's rows then share a few pages) and each index is built
-- once over the finished rows. p_shadowed: upstreams read from their shadows.
CREATE OR REPLACE FUNCTION progress_create_stored(
    d progress_read_model_definitions, p_strategy text, p_name text, p_populate boolean,
    p_shadowed text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    select_rows text := format('SELECT * FROM (%s) r', progress_definition_sql(d, 'shadow', p_shadowed));
BEGIN
    IF p_strategy = 'table' THEN
        EXECUTE format('CREATE TABLE %I AS %s %s', p_name, select_rows,
                       CASE WHEN p_populate THEN 'ORDER BY ' || progress_column_list(d.key_columns)
                            ELSE 'WITH NO DATA' END);
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (%s)', p_name, p_name || '_pkey',
                       progress_column_list(d.key_columns));
    ELSE
        EXECUTE format('CREATE MATERIALIZED VIEW %I AS %s %s', p_name, select_rows,
                       CASE WHEN p_populate THEN 'WITH DATA' ELSE 'WITH NO DATA' END);
        EXECUTE format('CREATE UNIQUE INDEX %I ON %I (%s)', p_name || '_key', p_name,
                       progress_column_list(d.key_columns));
    END IF;
    IF cardinality(d.lookup_columns) > 0 THEN
        EXECUTE format('CREATE INDEX %I ON %I (%s)', p_name || '_lookup', p_name,
                       progress_column_list(d.lookup_columns));
    END IF;
END
$$;

-- DROP statement for whatever relation stands under a name (NULL: nothing).
CREATE OR REPLACE FUNCTION progress_drop_relation_sql(p_name text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('DROP %s %I', CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'v' THEN 'VIEW'
                                               ELSE 'TABLE' END, p_name)
      FROM pg_class c WHERE c.oid = to_regclass(quote_ident(p_name))
$$;

-- Creates the stored read models for a strategy, replacing those of the
-- other strategy (their rows are dropped: repopulate with
-- refresh_progress_materialized_views_full()). Idempotent. p_except: read
-- models built beside and swapped in instead.
DROP FUNCTION IF EXISTS progress_install_storage(text);
CREATE OR REPLACE FUNCTION progress_install_storage(p_strategy text, p_except text[] DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    wanted "char" := CASE p_strategy WHEN 'table' THEN 'r' WHEN 'matview' THEN 'm' END;
    existing "char";
    grants text[] := '{}';  -- the replaced ones' readers keep reading
BEGIN
    IF wanted IS NULL THEN
        RAISE EXCEPTION 'unknown storage strategy %: expected table or matview', quote_literal(p_strategy)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name <> ALL (p_except)
              ORDER BY install_order DESC LOOP
        SELECT relkind INTO existing FROM pg_class WHERE oid = to_regclass(d.stored_name);
        IF existing IS NOT NULL AND existing <> wanted THEN
            grants := grants || ARRAY(SELECT g.statement FROM progress_reader_grants(to_regclass(d.stored_name)) AS g);
            EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid)', 'progress_rows_' || d.logical_view);
            EXECUTE progress_drop_relation_sql(d.stored_name) || ' CASCADE';
            DELETE FROM progress_refresh_settings WHERE key = 'populated_at';
        END IF;
    END LOOP;
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        CONTINUE WHEN to_regclass(d.stored_name) IS NOT NULL OR d.stored_name = ANY (p_except);
        PERFORM progress_create_stored(d, p_strategy, d.stored_name, false);
    END LOOP;
    PERFORM progress_restore_reader_grants(grants);
    INSERT INTO progress_refresh_settings (key, value) VALUES ('storage_strategy', p_strategy)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
     WHERE progress_refresh_settings.value IS DISTINCT FROM EXCLUDED.value;
END
$$;

-- Renames a relation (table, view or materialized view) and the indexes named after it.
CREATE OR REPLACE FUNCTION progress_rename_relation(p_from text, p_to text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    relation regclass := to_regclass(quote_ident(p_from));
    index_name text;
BEGIN
    IF relation IS NULL THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER %s %I RENAME TO %I',
                   CASE (SELECT relkind FROM pg_class WHERE oid = relation)
                        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                   p_from, p_to);
    FOR index_name IN SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                       WHERE x.indrelid = relation AND starts_with(i.relname, p_from) LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', index_name,
                       left(p_to || substr(index_name, length(p_from) + 1), 63));
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION progress_previous_name(p_stored_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT left(p_stored_name, 51) || '__previous' $$;

-- Shadows are built beside the read models they replace while readers keep
-- reading those, then swapped in by progress_swap_in_shadows() in one short
-- transaction: a take-over of the previous design, or a changed definition.
-- The copies of the named read models, dropped upstreams last: their shadows
-- (p_previous false), or what a swap replaced (after its transaction, when
-- readers read the new ones).
DROP FUNCTION IF EXISTS progress_drop_shadows(text[]);
DROP FUNCTION IF EXISTS progress_drop_previous(text[]);
CREATE OR REPLACE FUNCTION progress_drop_copies(p_names text[], p_previous boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    statement text;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (p_names)
              ORDER BY install_order DESC LOOP
        statement := progress_drop_relation_sql(CASE WHEN p_previous THEN progress_previous_name(d.stored_name)
                                                     ELSE progress_shadow_name(d.stored_name) END);
        IF statement IS NOT NULL THEN
            EXECUTE statement || ' CASCADE';
        END IF;
    END LOOP;
END
$$;

-- Builds populated shadows of the named read models, each read from the
-- shadows of its upstreams among them (set-based, in dependency order).
CREATE OR REPLACE FUNCTION progress_build_shadows(p_names text[], p_strategy text) RETURNS void
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
BEGIN
    PERFORM progress_drop_copies(p_names, false);
    PERFORM progress_drop_copies(p_names, true);
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (p_names)
              ORDER BY install_order LOOP
        PERFORM progress_create_stored(d, p_strategy, progress_shadow_name(d.stored_name), true, p_names);
        EXECUTE format('ANALYZE %I', progress_shadow_name(d.stored_name));
    END LOOP;
END
$$;

-- What a relation about to be replaced has that its replacement has not:
-- columns someone added, indexes other than on the read model's key or lookup
-- columns (with their definitions, to make them again), its comment.
CREATE OR REPLACE FUNCTION progress_not_kept(
    p_old regclass, p_new regclass, d progress_read_model_definitions)
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT ARRAY(
        SELECT 'column ' || a.attname
          FROM pg_attribute a
         WHERE a.attrelid = p_old AND a.attnum > 0 AND NOT a.attisdropped
           AND NOT EXISTS (SELECT FROM pg_attribute n
                            WHERE n.attrelid = p_new AND n.attname = a.attname AND NOT n.attisdropped)
        UNION ALL
        SELECT 'index ' || pg_get_indexdef(i.indexrelid)
          FROM pg_index i
         WHERE i.indrelid = p_old
           AND NOT ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY AS k (attnum, n)
                           JOIN pg_attribute a ON a.attrelid = p_old AND a.attnum = k.attnum ORDER BY k.n)
                   IN (d.key_columns, d.lookup_columns)
        UNION ALL
        SELECT 'its comment' WHERE obj_description(p_old, 'pg_class') IS NOT NULL)
$$;

-- Swaps built shadows in under their read models' names, in the caller's
-- transaction: whatever stands under a name (ours, or another design's
-- materialized view, view or table) is dropped, the shadow renamed with its
-- indexes, and every SELECT grant held on the replaced object given to the
-- new one. Readers wait only for this transaction; a dependent object of
-- someone else's makes it fail (nothing changes). Returns what was replaced,
-- and what it had that the new one has not (someone's added columns, indexes
-- other than on the key or the lookup columns, with their definitions to
-- make them again, its comment).
DROP FUNCTION IF EXISTS progress_swap_in_shadows(text[]);
CREATE OR REPLACE FUNCTION progress_swap_in_shadows(p_names text[])
RETURNS TABLE (read_model text, replaced text, readers text[], not_kept text[])
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    shadow text;
    grants jsonb := '{}';
    kinds jsonb := '{}';
    lost jsonb := '{}';
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (p_names)
              ORDER BY install_order DESC LOOP
        -- The generated row function returns the stored row type: regenerated after the swap.
        EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid)', 'progress_rows_' || d.logical_view);
        -- (A read model not there yet, in a partial take-over, adds nothing.)
        SELECT grants || coalesce(jsonb_object_agg(d.stored_name, coalesce(
                   (SELECT jsonb_agg(jsonb_build_object('grantee', g.grantee, 'statement', g.statement))
                      FROM progress_reader_grants(c.oid) AS g), '[]')), '{}'),
               kinds || coalesce(jsonb_object_agg(d.stored_name, CASE c.relkind WHEN 'm' THEN 'materialized view'
                                                                           WHEN 'v' THEN 'view' ELSE 'table' END), '{}'),
               lost || coalesce(jsonb_object_agg(d.stored_name, to_jsonb(progress_not_kept(
                   c.oid, to_regclass(quote_ident(progress_shadow_name(d.stored_name))), d))), '{}')
          INTO grants, kinds, lost
          FROM pg_class c
         WHERE c.oid = to_regclass(quote_ident(d.stored_name));
        -- Renamed, not dropped: dropping a large relation holds its lock while
        -- the files go at commit. progress_drop_copies() drops it afterwards.
        PERFORM progress_rename_relation(d.stored_name, progress_previous_name(d.stored_name));
    END LOOP;
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (p_names)
              ORDER BY install_order LOOP
        shadow := progress_shadow_name(d.stored_name);
        PERFORM progress_rename_relation(shadow, d.stored_name);
        IF kinds ? d.stored_name THEN
            PERFORM progress_revoke_default_grants(to_regclass(quote_ident(d.stored_name)));
        END IF;
        PERFORM progress_restore_reader_grants(ARRAY(
            SELECT x ->> 'statement' FROM jsonb_array_elements(coalesce(grants -> d.stored_name, '[]')) AS x));
        read_model := d.stored_name;
        replaced := kinds ->> d.stored_name;
        readers := ARRAY(SELECT DISTINCT x ->> 'grantee'
                           FROM jsonb_array_elements(coalesce(grants -> d.stored_name, '[]')) AS x ORDER BY 1);
        not_kept := ARRAY(SELECT jsonb_array_elements_text(coalesce(lost -> d.stored_name, '[]')));
        RETURN NEXT;
    END LOOP;
END
$$;

-- A read model no longer defined: its storage, logical view, functions and registry row go.
CREATE OR REPLACE FUNCTION progress_drop_read_model(p_stored_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    statement text;
BEGIN
    SELECT * INTO d FROM progress_read_model_definitions WHERE stored_name = p_stored_name;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid)', 'progress_rows_' || d.logical_view);
    EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid)', 'progress_sync_' || d.logical_view);
    EXECUTE format('DROP FUNCTION IF EXISTS %I()', 'progress_rebuild_' || d.logical_view);
    statement := progress_drop_relation_sql(d.stored_name);
    IF statement IS NOT NULL THEN
        EXECUTE statement;
    END IF;
    EXECUTE format('DROP VIEW IF EXISTS %I', d.logical_view);
    DELETE FROM progress_read_model_definitions WHERE stored_name = p_stored_name;
END
$$;
