-- Settings the SQL API reads (progress_refresh_settings). plpgsql, so its
-- one lookup is planned once per session, not on every call.

CREATE OR REPLACE FUNCTION progress_setting(p_key text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT value FROM progress_refresh_settings WHERE key = p_key);
END
$$;
