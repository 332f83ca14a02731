-- How a version is refreshed: the one place, shared by the SQL API and by
-- the Dagster code location. Each read model gets generated functions:
--   progress_rows_<view>(scope)  the rows its definition gives now, one scope
--   progress_sync_<view>(scope)  applies only the difference to the stored rows
-- A version refresh syncs its version-scoped levels in order (verse, chapter,
-- book, summary; each reads the level below as just stored), then the best
-- version of every language entity it touches.

-- Generated SQL pieces over a read model's value columns: whether a new row
-- (alias p_new) differs from an old one (p_old), and the assignments that
-- give a stored row the values of p_source.
CREATE OR REPLACE FUNCTION progress_columns_differ(p_columns text[], p_new text, p_old text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('(%s) IS DISTINCT FROM (%s)',
                  string_agg(format('%s.%I', p_new, c), ', '), string_agg(format('%s.%I', p_old, c), ', '))
      FROM unnest(p_columns) AS c
$$;

CREATE OR REPLACE FUNCTION progress_column_assignments(p_columns text[], p_source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%1$I = %2$s.%1$I', c, p_source), ', ') FROM unnest(p_columns) AS c
$$;

-- One statement that makes a stored read model equal to the desired rows
-- within a scope filter, writing only rows that differ, and counting them.
-- Desired and current rows meet in a FULL JOIN, which PostgreSQL can only run
-- as a hash or merge join: cost stays linear in the scope's rows whatever the
-- row estimates say.
--
-- With p_capture, the rows it changed are also kept, as they were and as they
-- are now, in the variables <p_capture>_old and <p_capture>_new (arrays of the
-- stored row type): what a summary's additive counts move by.
--
-- With p_scope_value (an expression every row of the scope has as its first
-- key), the rows to remove are found by one index scan over their second
-- keys rather than one lookup each: a chapter's verses leave together.
DROP FUNCTION IF EXISTS progress_diff_statement(progress_read_model_definitions, text, text, text[], text[]);
DROP FUNCTION IF EXISTS progress_diff_statement(progress_read_model_definitions, text, text, text[], text[], text);
CREATE OR REPLACE FUNCTION progress_diff_statement(
    d progress_read_model_definitions, p_desired text, p_scope_filter text,
    p_keys text[], p_values text[], p_capture text DEFAULT NULL, p_scope_value text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    key_match text;
    old_key_match text;
    removal text;
    differs text := 'false';
    on_conflict text := 'NOTHING';
    stored_columns text[];
    captured_rows text := '';
    captured_into text := '';
BEGIN
    IF p_capture IS NOT NULL THEN
        stored_columns := ARRAY(SELECT a.attname::text FROM pg_attribute a
                                 WHERE a.attrelid = d.stored_name::regclass AND a.attnum > 0 AND NOT a.attisdropped
                                 ORDER BY a.attnum);
        SELECT format(', ROW(%s)::%I AS old_row, ROW(%s)::%I AS new_row',
                      string_agg(format('o.%I', c), ', '), d.stored_name,
                      string_agg(format('n.%I', c), ', '), d.stored_name)
          INTO captured_rows FROM unnest(stored_columns) AS c;
        captured_into := format(E',\n               (SELECT array_agg(j.old_row) FROM joined j WHERE j.stored),'
                                || E'\n               (SELECT array_agg(j.new_row) FROM joined j WHERE j.wanted)'
                                || E'\n          INTO inserted, updated, deleted, %I, %I',
                                p_capture || '_old', p_capture || '_new');
    END IF;
    SELECT string_agg(format('n.%1$I = o.%1$I', k), ' AND '),
           string_agg(format('t.%1$I = j.%2$I', k, 'old_' || k), ' AND ')
      INTO key_match, old_key_match
      FROM unnest(p_keys) AS k;
    removal := CASE WHEN p_scope_value IS NOT NULL AND cardinality(p_keys) = 2
                    THEN format(E'%1$I t\n             WHERE t.%2$I = %3$s AND t.%4$I = ANY (ARRAY(SELECT j.%5$I FROM joined j WHERE NOT j.wanted))',
                                d.stored_name, p_keys[1], p_scope_value, p_keys[2], 'old_' || p_keys[2])
                    ELSE format(E'%I t USING joined j\n             WHERE NOT j.wanted AND %s', d.stored_name, old_key_match) END;
    IF cardinality(p_values) > 0 THEN
        differs := progress_columns_differ(p_values, 'n', 'o');
        on_conflict := 'UPDATE SET ' || progress_column_assignments(p_values, 'EXCLUDED');
    END IF;
    RETURN format($sql$
        WITH desired AS MATERIALIZED (%1$s),
        current AS MATERIALIZED (SELECT * FROM %2$I t WHERE %3$s),
        joined AS MATERIALIZED (
            SELECT n.*, %4$s, n.%5$I IS NOT NULL AS wanted, o.%5$I IS NOT NULL AS stored%13$s
              FROM desired n FULL JOIN current o ON %6$s
             WHERE n.%5$I IS NULL OR o.%5$I IS NULL OR %7$s),
        removed AS (
            DELETE FROM %8$s
            RETURNING 1),
        written AS (
            INSERT INTO %2$I (%10$s) SELECT %9$s FROM joined j WHERE j.wanted
            ON CONFLICT (%11$s) DO %12$s
            RETURNING xmax = 0 AS fresh)
        SELECT count(*) FILTER (WHERE fresh), count(*) FILTER (WHERE NOT fresh),
               (SELECT count(*) FROM removed)%14$s
          FROM written;$sql$,
        p_desired, d.stored_name, p_scope_filter,
        array_to_string(ARRAY(SELECT format('o.%I AS %I', k, 'old_' || k) FROM unnest(p_keys) AS k), ', '),
        p_keys[1], key_match, differs, removal,
        array_to_string(ARRAY(SELECT format('j.%I', c) FROM unnest(p_keys || p_values) AS c), ', '),
        progress_column_list(p_keys || p_values),
        progress_column_list(p_keys),
        on_conflict, captured_rows,
        CASE WHEN p_capture IS NULL THEN E'\n          INTO inserted, updated, deleted' ELSE captured_into END);
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

-- A stored read model's columns other than its key, in table order.
CREATE OR REPLACE FUNCTION progress_value_columns(d progress_read_model_definitions) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(a.attname::text ORDER BY a.attnum), '{}')
      FROM pg_attribute a
     WHERE a.attrelid = d.stored_name::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname::text <> ALL (d.key_columns)
$$;

-- Code setting the scope variables a narrowed definition reads (see
-- progress_definition_sql, 'chapters') for a level made from a set of
-- chapters (changed_chapters, or book_chapters: every chapter of their
-- books): scope_chapters and scope_members_<key> for the level's own second
-- key and its upstreams'. The sets are computed once, by the first statement
-- of the generated function (progress_install_chapter_refresh): here they are
-- only assigned.
-- p_computed lists the scope variables declared already.
CREATE OR REPLACE FUNCTION progress_scope_code(
    d progress_read_model_definitions, p_chapter_set text, p_computed text[],
    OUT code text, OUT computed text[], OUT declared text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    member_key text;
BEGIN
    code := format(E'\n    scope_chapters := %I;', p_chapter_set);
    declared := '';
    computed := p_computed;
    FOR member_key IN SELECT d.key_columns[2] WHERE cardinality(d.key_columns) > 1
                      UNION
                      SELECT u.key_columns[2] FROM progress_read_model_definitions u
                       WHERE u.stored_name = ANY (d.upstreams) AND cardinality(u.key_columns) > 1 LOOP
        IF NOT progress_chapter_member_key(member_key) THEN
            RAISE EXCEPTION 'read model %: % cannot be narrowed to chapters', d.stored_name, member_key;
        END IF;
        IF 'scope_members_' || member_key <> ALL (computed) THEN
            declared := declared || format(E'\n    %I text[];', 'scope_members_' || member_key);
            computed := computed || ('scope_members_' || member_key);
        END IF;
        -- The books of whole books are the changed chapters' books.
        code := code || format(E'\n    %I := %s;', 'scope_members_' || member_key,
                               CASE WHEN member_key = 'chapter_id' THEN quote_ident(p_chapter_set)
                                    WHEN member_key = 'book_id' THEN 'changed_books'
                                    WHEN member_key = 'verse_id' AND p_chapter_set = 'changed_chapters'
                                        THEN 'changed_verses'
                                    WHEN member_key = 'verse_id'
                                        THEN format('ARRAY(SELECT v.id FROM verses v WHERE v.chapter_id = ANY (%I))',
                                                    p_chapter_set)
                               END);
    END LOOP;
END
$$;

-- The columns of a query's rows, in order.
CREATE OR REPLACE FUNCTION progress_query_columns(p_query text) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    columns text[];
BEGIN
    EXECUTE 'CREATE TEMP VIEW progress_query_columns_probe AS ' || p_query;
    columns := ARRAY(SELECT a.attname::text FROM pg_attribute a
                      WHERE a.attrelid = 'progress_query_columns_probe'::regclass AND a.attnum > 0
                      ORDER BY a.attnum);
    DROP VIEW progress_query_columns_probe;
    RETURN columns;
END
$$;

-- Generates progress_refresh_chapters_<kind>(p_scope, p_chapters): the
-- chapter-scoped refresh of one version, its levels in order. A level keyed
-- below the version (verse, chapter, book) applies the difference for the
-- rows whose second key is a member of the chapters (a book level: of their
-- books), made from sources narrowed to them (progress_definition_sql,
-- 'chapters'). A level keyed by the version alone (the summary) with
-- additive counts (see orchestration/read_models.py) moves its stored counts
-- by what the rows the levels below changed held before and after (their
-- difference statements keep them: progress_diff_statement, p_capture), and
-- makes its row from them; without, or with no row stored yet, it is synced
-- whole, from the levels below. Every statement is written into one function
-- and the members of the chapters are computed once, by its first statement:
-- its plans are made once per session (generic), where per-level calls and
-- dynamic SQL would plan and compute again on every change, and each call of
-- a function on this path costs more than its work. Its plans never scan a
-- table (sequential scans off): a generic plan knows neither the version nor
-- the chapters, and would scan the versions, books and chapters tables
-- wherever they are small, making a change's cost grow with the database.
-- Nor do they memoize: their lookups seldom see a key twice (often there is
-- one outer row), and a memo cache would be set up on every call for nothing.
-- Nor do they consider merge joins: one never wins for a handful of rows,
-- yet costing them was a tenth of a session's first chapter refresh, which
-- plans every statement; the plans come out the same.
CREATE OR REPLACE FUNCTION progress_install_chapter_refresh(p_kind text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    narrowed progress_read_model_definitions%ROWTYPE;
    scope record;
    computed text[] := '{}';
    declared text := '';
    body text := '';
    counts_columns text[];
    counted text;
    value_columns text[];
    -- The levels whose changed rows a summary's additive counts read.
    captured text[] := ARRAY(
        SELECT DISTINCT u.stored_name
          FROM progress_read_model_definitions s
          JOIN progress_read_model_definitions u ON u.stored_name = ANY (s.upstreams)
         WHERE s.kind = p_kind AND s.counts_sql IS NOT NULL AND cardinality(s.key_columns) = 1
           AND s.counts_sql ~ ('\m' || u.stored_name || '\M'));
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions
              WHERE kind = p_kind AND scope_column <> 'language_entity_id'
              ORDER BY install_order LOOP
        IF cardinality(d.key_columns) > 1 AND progress_chapter_member_key(d.key_columns[2]) THEN
            -- A row of a book counts every chapter of its book.
            SELECT * INTO scope FROM progress_scope_code(
                d, CASE WHEN d.key_columns[2] = 'book_id' THEN 'book_chapters' ELSE 'changed_chapters' END, computed);
            computed := scope.computed;
            declared := declared || scope.declared;
            IF d.stored_name = ANY (captured) THEN
                declared := declared || format(E'\n    %1$I %2$I[];\n    %3$I %2$I[];',
                                               d.stored_name || '_old', d.stored_name, d.stored_name || '_new');
            END IF;
            body := body || scope.code || progress_diff_statement(
                d, format('SELECT * FROM (%s) r WHERE r.%I = p_scope AND r.%I = ANY (%I)',
                          progress_definition_sql(d, 'chapters'), d.scope_column, d.key_columns[2],
                          'scope_members_' || d.key_columns[2]),
                format('t.%I = p_scope AND t.%I = ANY (%I)', d.scope_column, d.key_columns[2],
                       'scope_members_' || d.key_columns[2]),
                d.key_columns, progress_value_columns(d),
                CASE WHEN d.stored_name = ANY (captured) THEN d.stored_name END, 'p_scope');
        ELSIF cardinality(d.key_columns) = 1 AND d.counts_sql IS NOT NULL THEN
            declared := declared || format(E'\n    %I record;\n    %I record;\n    %I boolean;',
                                           d.logical_view || '_before', d.logical_view || '_after',
                                           d.logical_view || '_known');
            narrowed := d;
            narrowed.body := d.counts_sql;
            counts_columns := progress_query_columns(d.counts_sql);
            -- The stored counts, moved by the difference (a column that does
            -- not read the levels above differs by nothing).
            counted := replace(d.rows_sql, '<counts>', format(
                'SELECT %s FROM %I o WHERE o.%I = p_scope',
                (SELECT string_agg(CASE WHEN c = d.scope_column THEN format('o.%I', c)
                                        ELSE format('o.%1$I - %2$I.%1$I + %3$I.%1$I AS %1$I', c,
                                                    d.logical_view || '_before', d.logical_view || '_after') END,
                                   ', ' ORDER BY n)
                   FROM unnest(counts_columns) WITH ORDINALITY AS x (c, n)),
                d.stored_name, d.scope_column));
            -- The stored row moved in place by one update (written only if it
            -- differs); synced whole when the version was not live before or
            -- after, or has no row stored yet.
            value_columns := progress_value_columns(d);
            body := body
                    || format(E'\n    SELECT * INTO %I FROM (%s) r WHERE r.%I = p_scope;\n    %I := FOUND;',
                              d.logical_view || '_before', progress_definition_sql(narrowed, 'old'),
                              d.scope_column, d.logical_view || '_known')
                    || format(E'\n    SELECT * INTO %I FROM (%s) r WHERE r.%I = p_scope;\n    %I := %I AND FOUND;',
                              d.logical_view || '_after', progress_definition_sql(narrowed, 'new'), d.scope_column,
                              d.logical_view || '_known', d.logical_view || '_known')
                    || format(E'\n    IF %1$I THEN\n        UPDATE %2$I t SET %3$s FROM (%4$s) n'
                              || E'\n         WHERE t.%5$I = p_scope AND n.%5$I = p_scope AND %6$s;'
                              || E'\n        GET DIAGNOSTICS updated = ROW_COUNT;\n        inserted := 0;\n        deleted := 0;'
                              || E'\n        IF updated = 0 THEN\n            %1$I := EXISTS (SELECT FROM %2$I t WHERE t.%5$I = p_scope);'
                              || E'\n        END IF;\n    END IF;',
                              d.logical_view || '_known', d.stored_name,
                              progress_column_assignments(value_columns, 'n'), counted, d.scope_column,
                              progress_columns_differ(value_columns, 'n', 't'))
                    || format(E'\n    IF NOT %I THEN\n        SELECT * INTO inserted, updated, deleted FROM %I(p_scope);\n    END IF;',
                              d.logical_view || '_known', 'progress_sync_' || d.logical_view);
        ELSE
            body := body || format(E'\n    SELECT * INTO inserted, updated, deleted FROM %I(p_scope);',
                                   'progress_sync_' || d.logical_view);
        END IF;
        body := body || format(E'\n    RETURN NEXT ROW(%L, inserted, updated, deleted)::progress_refresh_count;',
                               d.stored_name);
    END LOOP;
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %1$I(p_scope uuid, p_chapters text[])
        RETURNS SETOF progress_refresh_count
        SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
        SET enable_seqscan = off SET enable_memoize = off SET enable_mergejoin = off
        LANGUAGE plpgsql AS $body$
        DECLARE
            inserted bigint;
            updated bigint;
            deleted bigint;
            changed_chapters text[];
            changed_verses text[];
            changed_books text[];
            book_chapters text[];
            scope_chapters text[];%2$s
        BEGIN
            -- The sets the levels narrow to: the changed chapters (distinct),
            -- their verses, their books, and every chapter of those books (what
            -- a book row counts), in no particular order (matched with = ANY).
            -- Each chapter and book is looked up on its own (OFFSET 0): verses
            -- and chapters are never scanned.
            WITH changed AS MATERIALIZED (
                     SELECT DISTINCT c AS id FROM unnest(p_chapters) AS c WHERE c IS NOT NULL),
                 changed_book_ids AS MATERIALIZED (
                     SELECT DISTINCT b.book_id
                       FROM changed ch
                      CROSS JOIN LATERAL (SELECT c.book_id FROM chapters c WHERE c.id = ch.id OFFSET 0) AS b
                      WHERE b.book_id IS NOT NULL)
            SELECT ARRAY(SELECT ch.id FROM changed ch),
                   ARRAY(SELECT v.id FROM changed ch
                          CROSS JOIN LATERAL (SELECT v.id FROM verses v WHERE v.chapter_id = ch.id OFFSET 0) AS v),
                   ARRAY(SELECT b.book_id FROM changed_book_ids b),
                   ARRAY(SELECT c.id FROM changed_book_ids b
                          CROSS JOIN LATERAL (SELECT c.id FROM chapters c WHERE c.book_id = b.book_id OFFSET 0) AS c)
              INTO changed_chapters, changed_verses, changed_books, book_chapters;%3$s
        END
        $body$ $fn$, 'progress_refresh_chapters_' || p_kind, declared, body);
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
    keys text[];
    vals text[];
    model_kind text;
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions WHERE stored_name <> ALL (p_except)
              ORDER BY install_order LOOP
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION %I(p_scope uuid) RETURNS SETOF %I LANGUAGE sql STABLE AS %L',
            'progress_rows_' || d.logical_view, d.stored_name,
            format('SELECT * FROM (%s) r WHERE r.%I = p_scope',
                   d.body, d.scope_column));

        keys := d.key_columns;
        vals := progress_value_columns(d);

        -- Rows are written only where they differ: an unchanged scope writes nothing.
        PERFORM progress_create_diff_function(
            'progress_sync_' || d.logical_view, 'p_scope uuid,',
            progress_diff_statement(d, format('SELECT * FROM %I(p_scope)', 'progress_rows_' || d.logical_view),
                                    format('t.%I = p_scope', d.scope_column), keys, vals));
        -- One row per scope (summary, best version): refreshed on every
        -- change, so planned once per session rather than on each of the
        -- first calls; and its plan looks the scope up by index, never scans
        -- a table that grows with the database (a generic plan knows no
        -- parameter, and prices a scan of a few hundred versions below an
        -- index lookup: the cost would grow with every version).
        IF cardinality(keys) = 1 THEN
            EXECUTE format('ALTER FUNCTION %I(uuid) SET plan_cache_mode = force_generic_plan SET enable_seqscan = off',
                           'progress_sync_' || d.logical_view);
        END IF;
        -- (Chapter-scoped refreshes of these rows: progress_install_chapter_refresh.)
        EXECUTE format('DROP FUNCTION IF EXISTS %I(uuid, text[])', 'progress_sync_' || d.logical_view || '_within');
        -- The same difference over every scope at once: the concurrent rebuild.
        PERFORM progress_create_diff_function(
            'progress_rebuild_' || d.logical_view, '',
            progress_diff_statement(d, d.body, 'true', keys, vals));
    END LOOP;
    FOR model_kind IN SELECT DISTINCT r.kind FROM progress_read_model_definitions r ORDER BY 1 LOOP
        CONTINUE WHEN EXISTS (SELECT FROM progress_read_model_definitions r
                               WHERE r.kind = model_kind AND r.stored_name = ANY (p_except));
        PERFORM progress_install_chapter_refresh(model_kind);
        PERFORM progress_install_entity_refresh(model_kind);
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

-- Waits for the version's turn (until the transaction ends). Plain SQL, so a
-- caller's statement inlines it.
CREATE OR REPLACE FUNCTION progress_lock_version(p_kind text, p_version uuid) RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(progress_version_lock_key(p_kind), hashtext(p_version::text)) $$;

-- A full rebuild empties every read model in one statement (TRUNCATE), so it
-- must not overlap a refresh that has read one read model (where its version
-- is the best) and waits to write another: the two would deadlock. A full
-- rebuild holds this lock exclusively; a worker's or a caller's refresh takes
-- it shared before touching a read model. A SQL drain needs none: it holds
-- the rebuild's own lock shared throughout (progress_refresh_queue_ready).
CREATE OR REPLACE FUNCTION progress_full_rebuild_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 7370214002::bigint $$;

-- Marks a version picked for a refresh until the transaction ends, if no
-- other session has (advisory lock class 5 audio, 6 text; true when marked):
-- a SQL drain's batch, a worker's claim (see progress_pick_ready). Apart from
-- the refresh lock above, which a picked version's refresh still takes.
CREATE OR REPLACE FUNCTION progress_try_pick_version(p_kind text, p_version uuid) RETURNS boolean
LANGUAGE sql AS $$ SELECT pg_try_advisory_xact_lock(progress_version_lock_key(p_kind) + 4, hashtext(p_version::text)) $$;

-- Language entities whose best version a refresh of these versions can move:
-- where each version lives now, and where it is currently the best. Looked
-- up by index, never scanned (see progress_install_chapter_refresh).
CREATE OR REPLACE FUNCTION progress_affected_language_entities(p_kind text, p_versions uuid[])
RETURNS uuid[] LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
BEGIN
    IF p_kind = 'audio' THEN
        RETURN ARRAY(SELECT e FROM (SELECT language_entity_id FROM audio_versions
                                     WHERE id = ANY (p_versions) AND deleted_at IS NULL
                                    UNION
                                    SELECT language_entity_id FROM language_entity_best_audio_version
                                     WHERE audio_version_id = ANY (p_versions)) AS x (e)
                      WHERE e IS NOT NULL ORDER BY e);
    END IF;
    RETURN ARRAY(SELECT e FROM (SELECT language_entity_id FROM text_versions
                                 WHERE id = ANY (p_versions) AND deleted_at IS NULL
                                UNION
                                SELECT language_entity_id FROM language_entity_best_text_version
                                 WHERE text_version_id = ANY (p_versions)) AS x (e)
                  WHERE e IS NOT NULL ORDER BY e);
END
$$;

-- The key columns a chapter-scoped refresh narrows a level by: a row keyed
-- by one of these belongs to some chapters (see progress_install_chapter_refresh).
DROP FUNCTION IF EXISTS progress_chapter_members(text, text[]);
DROP FUNCTION IF EXISTS progress_book_chapters(text[]);
DROP FUNCTION IF EXISTS progress_level_chapters(text, text[]);
CREATE OR REPLACE FUNCTION progress_chapter_member_key(p_column text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_column IN ('verse_id', 'chapter_id', 'book_id') $$;

DROP FUNCTION IF EXISTS progress_chapter_sets(text[]);

-- The version-scoped levels of one version, in order. With p_chapters (NULL:
-- the whole version) the levels keyed below the version (verse, chapter,
-- book) sync only the rows of those chapters and their books
-- (progress_refresh_chapters_<kind>); the summary, read from the chapter and
-- book levels, is synced whole. A whole audio version lists its ranges'
-- chapters again first when a structure change may have moved them
-- (progress_range_versions_to_relist).
DROP FUNCTION IF EXISTS progress_refresh_version_levels(text, uuid);
CREATE OR REPLACE FUNCTION progress_refresh_version_levels(p_kind text, p_version uuid, p_chapters text[] DEFAULT NULL)
RETURNS SETOF progress_refresh_count
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    c progress_refresh_count;
BEGIN
    IF p_chapters IS NOT NULL AND p_kind = 'audio' THEN
        RETURN QUERY SELECT * FROM progress_refresh_chapters_audio(p_version, p_chapters);
        RETURN;
    ELSIF p_chapters IS NOT NULL THEN
        RETURN QUERY SELECT * FROM progress_refresh_chapters_text(p_version, p_chapters);
        RETURN;
    ELSIF p_kind = 'audio' THEN
        DELETE FROM progress_range_versions_to_relist WHERE audio_version_id = p_version;
        IF FOUND THEN
            PERFORM progress_list_range_files(p_version);
        END IF;
    END IF;
    FOR d IN SELECT * FROM progress_read_model_definitions
              WHERE kind = p_kind AND scope_column <> 'language_entity_id'
              ORDER BY install_order LOOP
        c.read_model := d.stored_name;
        EXECUTE format('SELECT * FROM %I($1)', 'progress_sync_' || d.logical_view)
           INTO c.inserted, c.updated, c.deleted USING p_version;
        RETURN NEXT c;
    END LOOP;
END
$$;

-- Locks language entities of a kind for a refresh of their rows keyed by
-- entity, each once, in sorted order (advisory lock class 3 audio, 4 text),
-- so refreshes of versions sharing an entity take turns and never deadlock;
-- returns them in that order.
CREATE OR REPLACE FUNCTION progress_lock_language_entities(p_kind text, p_entities uuid[]) RETURNS uuid[]
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    sorted uuid[] := ARRAY(SELECT DISTINCT e FROM unnest(p_entities) AS e WHERE e IS NOT NULL ORDER BY e);
    lock_class int := progress_version_lock_key(p_kind) + 2;
    entity uuid;
BEGIN
    FOREACH entity IN ARRAY sorted LOOP
        PERFORM pg_advisory_xact_lock(lock_class, hashtext(entity::text));
    END LOOP;
    RETURN sorted;
END
$$;

-- Generates progress_refresh_entities_<kind>(p_entities): the rows keyed by
-- language entity (best versions) of those entities. The entities are locked
-- first (progress_lock_language_entities), so concurrent refreshes of
-- versions sharing an entity take turns, and the later one sees the
-- earlier's summary. Static calls: planned once per session.
CREATE OR REPLACE FUNCTION progress_install_entity_refresh(p_kind text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    body text := '';
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions
              WHERE kind = p_kind AND scope_column = 'language_entity_id'
              ORDER BY install_order LOOP
        -- The difference statement itself, as progress_sync_<view> has it:
        -- one call fewer per entity.
        body := body || format($step$
            c := ROW(%1$L, 0, 0, 0);
            FOREACH entity IN ARRAY entities LOOP%2$s
                c.inserted := c.inserted + inserted; c.updated := c.updated + updated;
                c.deleted := c.deleted + deleted;
            END LOOP;
            RETURN NEXT c;$step$,
            d.stored_name,
            progress_diff_statement(d, format('SELECT * FROM %I(entity)', 'progress_rows_' || d.logical_view),
                                    format('t.%I = entity', d.scope_column),
                                    d.key_columns, progress_value_columns(d)));
    END LOOP;
    -- Planned like progress_sync_<view> of a one-row level: generic, and
    -- never scanning (see progress_install_refresh_functions).
    EXECUTE format($fn$
        CREATE OR REPLACE FUNCTION %1$I(p_entities uuid[])
        RETURNS SETOF progress_refresh_count
        SECURITY DEFINER SET search_path FROM CURRENT SET plan_cache_mode = force_generic_plan
        SET enable_seqscan = off
        LANGUAGE plpgsql AS $body$
        DECLARE
            entities uuid[] := progress_lock_language_entities(%3$L, p_entities);
            entity uuid;
            c progress_refresh_count;
            inserted bigint; updated bigint; deleted bigint;
        BEGIN%2$s
        END
        $body$ $fn$, 'progress_refresh_entities_' || p_kind, body, p_kind);
END
$$;

CREATE OR REPLACE FUNCTION progress_refresh_language_entities(p_kind text, p_entities uuid[])
RETURNS SETOF progress_refresh_count
SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind = 'audio' THEN
        RETURN QUERY SELECT * FROM progress_refresh_entities_audio(p_entities);
    ELSE
        RETURN QUERY SELECT * FROM progress_refresh_entities_text(p_entities);
    END IF;
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
    PERFORM progress_lock_version(p_kind, p_version);
    IF p_with_entities THEN
        -- Read before the refresh: where the version is the best now.
        entities := progress_affected_language_entities(p_kind, ARRAY[p_version]);
    END IF;
    RETURN QUERY SELECT * FROM progress_refresh_version_levels(p_kind, p_version, p_chapters);
    IF p_with_entities THEN
        RETURN QUERY SELECT * FROM progress_refresh_language_entities(p_kind, entities);
    END IF;
END
$$;

