-- How a version is refreshed: the one place, shared by the SQL API and by
-- the Dagster code location. Each read model gets generated functions:
--   progress_rows_<view>(scope)  the rows its definition gives now, one scope
--   progress_sync_<view>(scope)  applies only the difference to the stored rows
-- A version refresh syncs its version-scoped levels in order (verse, chapter,
-- book, summary; each reads the level below as just stored), then the best
-- version of every language entity it touches.

-- One statement that makes a stored read model equal to the desired rows
-- within a scope filter, writing only rows that differ, and counting them.
-- Desired and current rows meet in a FULL JOIN, which PostgreSQL can only run
-- as a hash or merge join: cost stays linear in the scope's rows whatever the
-- row estimates say.
CREATE OR REPLACE FUNCTION progress_diff_statement(
    d progress_read_model_definitions, p_desired text, p_scope_filter text,
    p_keys text[], p_values text[])
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    key_match text;
    old_key_match text;
    differs text := 'false';
    on_conflict text := 'NOTHING';
BEGIN
    SELECT string_agg(format('n.%1$I = o.%1$I', k), ' AND '),
           string_agg(format('t.%1$I = j.%2$I', k, 'old_' || k), ' AND ')
      INTO key_match, old_key_match
      FROM unnest(p_keys) AS k;
    IF cardinality(p_values) > 0 THEN
        SELECT format('(%s) IS DISTINCT FROM (%s)',
                      string_agg(format('n.%I', v), ', '), string_agg(format('o.%I', v), ', ')),
               'UPDATE SET ' || string_agg(format('%1$I = EXCLUDED.%1$I', v), ', ')
          INTO differs, on_conflict
          FROM unnest(p_values) AS v;
    END IF;
    RETURN format($sql$
        WITH desired AS MATERIALIZED (%1$s),
        current AS MATERIALIZED (SELECT * FROM %2$I t WHERE %3$s),
        joined AS MATERIALIZED (
            SELECT n.*, %4$s, n.%5$I IS NOT NULL AS wanted, o.%5$I IS NOT NULL AS stored
              FROM desired n FULL JOIN current o ON %6$s
             WHERE n.%5$I IS NULL OR o.%5$I IS NULL OR %7$s),
        removed AS (
            DELETE FROM %2$I t USING joined j
             WHERE NOT j.wanted AND %8$s
            RETURNING 1),
        written AS (
            INSERT INTO %2$I (%10$s) SELECT %9$s FROM joined j WHERE j.wanted
            ON CONFLICT (%11$s) DO %12$s
            RETURNING xmax = 0 AS fresh)
        SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh),
               (SELECT count(*) FROM removed)
          INTO inserted, updated, deleted
          FROM written;$sql$,
        p_desired, d.stored_name, p_scope_filter,
        array_to_string(ARRAY(SELECT format('o.%I AS %I', k, 'old_' || k) FROM unnest(p_keys) AS k), ', '),
        p_keys[1], key_match, differs, old_key_match,
        array_to_string(ARRAY(SELECT format('j.%I', c) FROM unnest(p_keys || p_values) AS c), ', '),
        progress_column_list(p_keys || p_values),
        progress_column_list(p_keys),
        on_conflict);
END
$$;

-- A generated function running one difference statement, counting its rows
-- (p_declare: its variables, computed before the statement runs).
DROP FUNCTION IF EXISTS progress_create_diff_function(text, text, text);
CREATE OR REPLACE FUNCTION progress_create_diff_function(
    p_name text, p_parameters text, p_statement text, p_declare text DEFAULT '')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %1$I(%2$s OUT inserted bigint, OUT updated bigint, OUT deleted bigint)
        SECURITY DEFINER SET search_path FROM CURRENT
        LANGUAGE plpgsql AS $body$
        DECLARE
            %4$s
        BEGIN
            %3$s
        END
        $body$ $fn$, p_name, p_parameters, p_statement, p_declare);
END
$$;

-- Generates, per read model, progress_rows_<view>(scope) (its definition read
-- from the stored level below, one scope: the stored read model's row type is
-- the return type, so a definition drifting from its storage fails at migrate
-- time), progress_sync_<view>(scope) and progress_rebuild_<view>().
-- p_except: read models about to be swapped in, whose functions follow the swap.
DROP FUNCTION IF EXISTS progress_install_refresh_functions();
CREATE OR REPLACE FUNCTION progress_install_refresh_functions(p_except text[] DEFAULT '{}') RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    cols text[];
    keys text[];
    vals text[];
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name <> ALL (p_except)
              ORDER BY install_order LOOP
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION %I(p_scope uuid) RETURNS SETOF %I LANGUAGE sql STABLE AS %L',
            'progress_rows_' || d.logical_view, d.stored_name,
            format('SELECT * FROM (%s) r WHERE r.%I = p_scope',
                   d.body, d.scope_column));

        SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO cols
          FROM pg_attribute a
         WHERE a.attrelid = d.stored_name::regclass AND a.attnum > 0 AND NOT a.attisdropped;
        keys := d.key_columns;
        vals := ARRAY(SELECT c FROM unnest(cols) AS c WHERE c <> ALL (keys));

        -- Rows are written only where they differ: an unchanged scope writes nothing.
        PERFORM progress_create_diff_function(
            'progress_sync_' || d.logical_view, 'p_scope uuid,',
            progress_diff_statement(d, format('SELECT * FROM %I(p_scope)', 'progress_rows_' || d.logical_view),
                                    format('t.%I = p_scope', d.scope_column), keys, vals));
        -- One row per scope (summary, best version): refreshed on every
        -- change, so planned once per session rather than on each of the first calls.
        IF cardinality(keys) = 1 THEN
            EXECUTE format('ALTER FUNCTION %I(uuid) SET plan_cache_mode = force_generic_plan',
                           'progress_sync_' || d.logical_view);
        END IF;
        -- The same difference for part of a scope, a chapter-scoped refresh:
        -- the rows whose second key (a verse, chapter or book) is a member of
        -- p_chapters, made from sources narrowed to those chapters (see
        -- progress_definition_sql, 'chapters'). The members of each level
        -- are computed first, so the statement is planned with them.
        EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid, text[])', 'progress_sync_' || d.logical_view || '_within');
        IF cardinality(keys) > 1 AND progress_chapter_members(keys[2], '{}') IS NOT NULL THEN
            PERFORM progress_create_diff_function(
                'progress_sync_' || d.logical_view || '_within', 'p_scope uuid, p_chapters text[],',
                progress_diff_statement(
                    d, format('SELECT * FROM (%s) r WHERE r.%I = p_scope AND r.%I = ANY (%I)',
                              progress_definition_sql(d, 'chapters'), d.scope_column, keys[2],
                              'scope_members_' || keys[2]),
                    format('t.%I = p_scope AND t.%I = ANY (%I)', d.scope_column, keys[2],
                           'scope_members_' || keys[2]), keys, vals),
                format('scope_chapters text[] := progress_level_chapters(%L, p_chapters);', keys[2])
                || (SELECT string_agg(format(' %I text[] := progress_chapter_members(%L, scope_chapters);',
                                             'scope_members_' || m, m), '')
                      FROM (SELECT keys[2] AS m
                            UNION
                            SELECT u.key_columns[2] FROM progress_read_model_definitions u
                             WHERE u.stored_name = ANY (d.upstreams) AND cardinality(u.key_columns) > 1) AS x));
            -- Planned once per session: a custom plan for each of the first
            -- calls would cost more than running the statement.
            EXECUTE format('ALTER FUNCTION %I(uuid, text[]) SET plan_cache_mode = force_generic_plan',
                           'progress_sync_' || d.logical_view || '_within');
        END IF;
        -- The same difference over every scope at once: the concurrent rebuild.
        PERFORM progress_create_diff_function(
            'progress_rebuild_' || d.logical_view, '',
            progress_diff_statement(d, d.body, 'true', keys, vals));
    END LOOP;
END
$$;

DO $$
BEGIN
    CREATE TYPE progress_refresh_count AS (
        read_model text, inserted bigint, updated bigint, deleted bigint);
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

CREATE OR REPLACE FUNCTION progress_check_kind(p_kind text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_kind IS NULL OR p_kind NOT IN ('audio', 'text') THEN
        RAISE EXCEPTION 'unknown version kind %: expected audio or text', coalesce(quote_literal(p_kind), 'NULL')
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- Serialises refreshes of one version (advisory lock class 1 audio, 2 text).
CREATE OR REPLACE FUNCTION progress_version_lock_key(p_kind text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE p_kind WHEN 'audio' THEN 1 ELSE 2 END $$;

-- Language entities whose best version a refresh of these versions can move:
-- where each version lives now, and where it is currently the best.
CREATE OR REPLACE FUNCTION progress_affected_language_entities(p_kind text, p_versions uuid[])
RETURNS uuid[] LANGUAGE sql STABLE AS $$
    SELECT ARRAY(
        SELECT e FROM (
            SELECT language_entity_id FROM audio_versions
             WHERE p_kind = 'audio' AND id = ANY (p_versions) AND deleted_at IS NULL
            UNION
            SELECT language_entity_id FROM language_entity_best_audio_version
             WHERE p_kind = 'audio' AND audio_version_id = ANY (p_versions)
            UNION
            SELECT language_entity_id FROM text_versions
             WHERE p_kind = 'text' AND id = ANY (p_versions) AND deleted_at IS NULL
            UNION
            SELECT language_entity_id FROM language_entity_best_text_version
             WHERE p_kind = 'text' AND text_version_id = ANY (p_versions)) AS x (e)
         WHERE e IS NOT NULL ORDER BY e)
$$;

-- The members of a set of chapters at the level a key column names (its
-- verses, the chapters themselves, their books); NULL for any other column.
CREATE OR REPLACE FUNCTION progress_chapter_members(p_column text, p_chapters text[])
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT CASE p_column
           WHEN 'verse_id' THEN ARRAY(SELECT v.id FROM verses v WHERE v.chapter_id = ANY (p_chapters) ORDER BY 1)
           WHEN 'chapter_id' THEN ARRAY(SELECT DISTINCT c FROM unnest(p_chapters) AS c ORDER BY 1)
           WHEN 'book_id' THEN ARRAY(SELECT DISTINCT c.book_id FROM chapters c
                                      WHERE c.id = ANY (p_chapters) AND c.book_id IS NOT NULL ORDER BY 1)
           END
$$;

-- The chapters a level's rows for some chapters are made from: a book row
-- counts all the chapters of its book; other levels, just those chapters.
CREATE OR REPLACE FUNCTION progress_level_chapters(p_column text, p_chapters text[])
RETURNS text[] LANGUAGE sql STABLE AS $$
    SELECT CASE p_column
           WHEN 'book_id' THEN ARRAY(SELECT c.id FROM chapters c
                                      WHERE c.book_id IN (SELECT s.book_id FROM chapters s WHERE s.id = ANY (p_chapters))
                                      ORDER BY 1)
           ELSE p_chapters END
$$;

-- The version-scoped levels of one version, in order. With p_chapters (NULL:
-- the whole version) the levels keyed below the version (verse, chapter,
-- book) sync only the rows of those chapters and their books; the summary,
-- read from the chapter and book levels, is synced whole.
DROP FUNCTION IF EXISTS progress_refresh_version_levels(text, uuid);
CREATE OR REPLACE FUNCTION progress_refresh_version_levels(p_kind text, p_version uuid, p_chapters text[] DEFAULT NULL)
RETURNS SETOF progress_refresh_count
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    c progress_refresh_count;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions
              WHERE kind = p_kind AND scope_column <> 'language_entity_id'
              ORDER BY install_order LOOP
        c.read_model := d.stored_name;
        IF p_chapters IS NULL OR cardinality(d.key_columns) < 2 THEN
            EXECUTE format('SELECT * FROM %I($1)', 'progress_sync_' || d.logical_view)
               INTO c.inserted, c.updated, c.deleted USING p_version;
        ELSE
            EXECUTE format('SELECT * FROM %I($1, $2)', 'progress_sync_' || d.logical_view || '_within')
               INTO c.inserted, c.updated, c.deleted USING p_version, p_chapters;
        END IF;
        RETURN NEXT c;
    END LOOP;
END
$$;

-- Best versions of language entities. Entities are locked in sorted order
-- (advisory lock class 3 audio, 4 text), so concurrent refreshes of versions
-- sharing an entity take turns, and the later one sees the earlier's summary.
CREATE OR REPLACE FUNCTION progress_refresh_language_entities(p_kind text, p_entities uuid[])
RETURNS SETOF progress_refresh_count
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    c progress_refresh_count;
    entity uuid;
    i bigint; u bigint; r bigint;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions
              WHERE kind = p_kind AND scope_column = 'language_entity_id'
              ORDER BY install_order LOOP
        c := ROW(d.stored_name, 0, 0, 0);
        FOR entity IN SELECT DISTINCT e FROM unnest(p_entities) AS e WHERE e IS NOT NULL ORDER BY e LOOP
            PERFORM pg_advisory_xact_lock(progress_version_lock_key(p_kind) + 2, hashtext(entity::text));
            EXECUTE format('SELECT * FROM %I($1)', 'progress_sync_' || d.logical_view)
               INTO i, u, r USING entity;
            c.inserted := c.inserted + i; c.updated := c.updated + u; c.deleted := c.deleted + r;
        END LOOP;
        RETURN NEXT c;
    END LOOP;
END
$$;

-- The matview strategy can only refresh whole materialized views, in
-- dependency order; CONCURRENTLY keeps readers reading, once populated.
CREATE OR REPLACE FUNCTION progress_refresh_matviews(p_concurrently boolean)
RETURNS void
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    use_concurrently boolean := p_concurrently AND progress_read_models_readable();
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        EXECUTE format('REFRESH MATERIALIZED VIEW %s %I',
                       CASE WHEN use_concurrently THEN 'CONCURRENTLY' ELSE '' END, d.stored_name);
    END LOOP;
END
$$;

-- Refreshes one version (or, with p_chapters, the rows those chapters reach):
-- its levels, then (unless the caller batches them) the language entities it touches. Refreshes of one version take turns.
-- JIT is off on this path and the other entry points: compiling the large
-- per-version plans costs seconds where running them costs milliseconds.
-- (With the matview strategy everything is refreshed: it has no finer grain.)
DROP FUNCTION IF EXISTS progress_refresh_version(text, uuid, boolean);
CREATE OR REPLACE FUNCTION progress_refresh_version(
    p_kind text, p_version uuid, p_with_entities boolean DEFAULT true, p_chapters text[] DEFAULT NULL)
RETURNS SETOF progress_refresh_count
SECURITY DEFINER SET search_path FROM CURRENT SET jit = off
LANGUAGE plpgsql AS $$
DECLARE
    entities uuid[];
BEGIN
    PERFORM progress_check_kind(p_kind);
    IF progress_storage_strategy() = 'matview' THEN
        PERFORM progress_refresh_matviews(true);
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(progress_version_lock_key(p_kind), hashtext(p_version::text));
    entities := progress_affected_language_entities(p_kind, ARRAY[p_version]);
    RETURN QUERY SELECT * FROM progress_refresh_version_levels(p_kind, p_version, p_chapters);
    IF p_with_entities THEN
        RETURN QUERY SELECT * FROM progress_refresh_language_entities(p_kind, entities);
    END IF;
END
$$;

