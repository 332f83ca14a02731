-- Who may do what. Functions that write read models or the queue run as
-- SECURITY DEFINER with the search_path fixed at migrate time (see each
-- function's header); here EXECUTE is taken from everyone and given back only
-- to the roles the product creates. progress_apply_grants() runs at the end
-- of every migrate, so functions created or replaced later are covered too.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'progress_refresher') THEN
        CREATE ROLE progress_refresher NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'progress_admin') THEN
        CREATE ROLE progress_admin NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'cannot create roles progress_refresher / progress_admin (no CREATEROLE): create them and re-run migrate';
END
$$;

-- The functions the logical views call, through the views they read. A view
-- reads tables with its owner's rights, but calls functions with its
-- reader's: whoever may read a logical view must be able to call these.
CREATE OR REPLACE FUNCTION progress_logical_view_functions() RETURNS SETOF regprocedure
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE viewed (oid) AS (
        SELECT to_regclass(quote_ident(logical_view))::oid FROM progress_read_model_definitions
        UNION
        SELECT r.reads
          FROM viewed v
         CROSS JOIN LATERAL progress_rule_reads(ARRAY[v.oid], 'pg_class') AS r
          JOIN pg_class c ON c.oid = r.reads AND c.relkind = 'v')
    SELECT DISTINCT p.oid::regprocedure
      FROM progress_rule_reads(ARRAY(SELECT oid FROM viewed), 'pg_proc') AS r
      JOIN pg_proc p ON p.oid = r.reads
     WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'progress\_%'
$$;

CREATE OR REPLACE FUNCTION progress_apply_grants() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    fn regprocedure;
    public_roles text := 'PUBLIC';
    reader_roles text;
    product_tables text[] := ARRAY['progress_refresh_queue', 'progress_refresh_dead_letter',
                                   'progress_refresh_settings', 'progress_bible_version_counts',
                                   'progress_read_model_definitions', 'progress_schema_migrations',
                                   'progress_refresh_log', 'progress_mapped_audio_versions',
                                   'progress_range_file_chapters', 'progress_range_versions_to_relist',
                                   'progress_refresh_queue_ready'];
    -- Only those standing (a take-over grants on its read models when it swaps them in).
    read_models text[] := ARRAY(SELECT stored_name FROM progress_read_model_definitions
                                 WHERE to_regclass(quote_ident(stored_name)) IS NOT NULL);
    t text;
BEGIN
    -- Supabase grants its API roles everything by default; take writes away from them too.
    SELECT string_agg(quote_ident(rolname), ', ') INTO reader_roles
      FROM pg_roles WHERE rolname IN ('anon', 'authenticated');
    IF reader_roles IS NOT NULL THEN
        public_roles := public_roles || ', ' || reader_roles;
    END IF;

    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = current_schema()::regnamespace
           AND (p.proname LIKE 'progress\_%' OR p.proname IN (
                'enqueue_progress_refresh', 'drain_progress_refresh_queue', 'refresh_progress_version',
                'refresh_progress_materialized_views_full', 'refresh_progress_materialized_views_concurrently',
                'refresh_progress_materialized_views_safe', 'requeue_progress_dead_letters'))
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %s', fn, public_roles);
        -- Emptying every read model, and (re)installing, are for the admin only.
        IF NOT fn::text LIKE ANY (ARRAY['refresh_progress_materialized_views_full%', 'progress_rebuild_all%',
                                        'progress_install%', 'progress_create_diff_function%', 'progress_drop_indexes%',
                                        'progress_apply_grants%']) THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO progress_refresher', fn);
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO progress_admin', fn);
    END LOOP;

    -- Read-only helpers the logical views call: anyone reading the views may
    -- call them (they read nothing the views would not show).
    FOR fn IN SELECT * FROM progress_logical_view_functions() LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %s', fn, public_roles);
    END LOOP;

    FOREACH t IN ARRAY product_tables LOOP
        EXECUTE format('REVOKE ALL ON TABLE %I FROM %s', t, public_roles);
        EXECUTE format('GRANT SELECT ON TABLE %I TO progress_refresher, progress_admin', t);
    END LOOP;
    -- Read models stay readable as the database decides (dashboards read them),
    -- but only the refresh functions write them.
    FOREACH t IN ARRAY read_models LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE %I FROM %s', t, public_roles);
        EXECUTE format('GRANT SELECT ON TABLE %I TO progress_refresher, progress_admin', t);
    END LOOP;
    GRANT progress_refresher TO progress_admin;
    -- The checks compare read models with the logical views.
    EXECUTE coalesce((SELECT string_agg(format('GRANT SELECT ON %I TO progress_refresher', logical_view), '; ')
                        FROM progress_read_model_definitions
                       WHERE to_regclass(quote_ident(logical_view)) IS NOT NULL), '');
EXCEPTION WHEN undefined_object THEN
    RAISE WARNING 'roles progress_refresher / progress_admin are missing: grants not applied';
END
$$;
