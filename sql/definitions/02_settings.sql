-- Settings the SQL API reads (progress_refresh_settings).

CREATE OR REPLACE FUNCTION progress_setting(p_key text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT value FROM progress_refresh_settings WHERE key = p_key
$$;
