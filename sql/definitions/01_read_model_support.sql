-- What the read-model definitions (sql/read_models/, one file each) share:
-- the live-bible-audio rule, the best-version sort key, bible version totals,
-- and the generators that turn a definition into its logical view.

-- Release 0.1.0 wrote definitions with {placeholders}.
DROP FUNCTION IF EXISTS progress_definition_sql(text, text);

-- A file counts only while it is published, uploaded, undeleted bible audio.
CREATE OR REPLACE FUNCTION progress_is_live_bible_audio(
    p_media_type text, p_is_bible_audio boolean, p_upload_status text,
    p_publish_status text, p_deleted_at timestamptz)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_deleted_at IS NULL
       AND p_media_type = 'audio'
       AND p_is_bible_audio IS TRUE
       AND p_upload_status = 'completed'
       AND p_publish_status = 'published'
$$;

-- The best-version rule as one sort key (sorted descending, then by id):
-- higher fractions first with NULL last at each step, then the newest
-- created_at with NULL last. Fractions lie in [0, 1], so -1 sorts NULL last;
-- a created_at is ranked by whether it is known first, so NULL sorts after
-- '-infinity' too. The epoch is read in UTC: the same number, from immutable
-- functions only, so the planner inlines this rather than calling it row by row.
CREATE OR REPLACE FUNCTION progress_version_rank(
    p_verse_fraction numeric, p_chapter_fraction numeric, p_book_fraction numeric,
    p_created_at timestamptz)
RETURNS numeric[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY[coalesce(p_verse_fraction, -1),
                 coalesce(p_chapter_fraction, -1),
                 coalesce(p_book_fraction, -1),
                 (p_created_at IS NOT NULL)::int,
                 coalesce(extract(epoch FROM p_created_at AT TIME ZONE 'UTC'), 0)]
$$;

-- Totals of a bible version: counted rows, not the sum of chapters.total_verses.
-- Verses are counted per chapter through the (chapter_id, id) index. NULL:
-- every bible version that has books or a stored count.
CREATE OR REPLACE FUNCTION progress_count_bible_versions(p_bible_version_ids text[])
RETURNS TABLE (bible_version_id text, total_verses bigint, total_chapters bigint, total_books bigint)
LANGUAGE sql STABLE AS $$
    SELECT bv.id,
           coalesce((SELECT sum((SELECT count(*) FROM verses v WHERE v.chapter_id = c.id))
                       FROM books b JOIN chapters c ON c.book_id = b.id
                      WHERE b.bible_version_id = bv.id), 0)::bigint,
           (SELECT count(*) FROM books b JOIN chapters c ON c.book_id = b.id WHERE b.bible_version_id = bv.id),
           (SELECT count(*) FROM books b WHERE b.bible_version_id = bv.id)
      FROM (SELECT DISTINCT x FROM unnest(p_bible_version_ids) AS x
             WHERE x IS NOT NULL
            UNION
            SELECT DISTINCT b.bible_version_id FROM books b
             WHERE p_bible_version_ids IS NULL AND b.bible_version_id IS NOT NULL
            UNION
            SELECT k.bible_version_id FROM progress_bible_version_counts k
             WHERE p_bible_version_ids IS NULL) AS bv (id)
$$;

-- Makes the stored counts of these bible versions (NULL: all) exact. Called
-- by the structure triggers in the writer's transaction. The rows are locked
-- first and counted after, in a statement of its own: under READ COMMITTED it
-- sees every transaction that changed the same bible version and committed
-- while this one waited, so concurrent writers never leave a stale count.
CREATE OR REPLACE FUNCTION progress_recount_bible_versions(p_bible_version_ids text[])
RETURNS void SECURITY DEFINER SET search_path FROM CURRENT
LANGUAGE plpgsql AS $$
BEGIN
    IF p_bible_version_ids IS NULL THEN
        INSERT INTO progress_bible_version_counts (bible_version_id)
        SELECT DISTINCT b.bible_version_id FROM books b WHERE b.bible_version_id IS NOT NULL
        ON CONFLICT DO NOTHING;
        PERFORM FROM progress_bible_version_counts ORDER BY bible_version_id FOR UPDATE;
    ELSE
        INSERT INTO progress_bible_version_counts (bible_version_id)
        SELECT DISTINCT x FROM unnest(p_bible_version_ids) AS x WHERE x IS NOT NULL ORDER BY 1
        ON CONFLICT DO NOTHING;
        PERFORM FROM progress_bible_version_counts
          WHERE bible_version_id = ANY (p_bible_version_ids) ORDER BY bible_version_id FOR UPDATE;
    END IF;
    UPDATE progress_bible_version_counts k
       SET total_verses = n.total_verses, total_chapters = n.total_chapters, total_books = n.total_books
      FROM progress_count_bible_versions(p_bible_version_ids) n
     WHERE k.bible_version_id = n.bible_version_id
       AND (k.total_verses, k.total_chapters, k.total_books)
           IS DISTINCT FROM (n.total_verses, n.total_chapters, n.total_books);
END
$$;

-- Totals of a bible version, as progress_count_bible_versions counts them,
-- read from the stored counts (zero for a bible version without books). The
-- fixed search_path lets REFRESH MATERIALIZED VIEW (which runs with an empty
-- one) resolve the table. A definer's function: the summaries' logical views
-- call it with their reader's rights, and the counts are not the reader's to
-- read (see progress_apply_grants).
CREATE OR REPLACE FUNCTION progress_bible_version_totals(p_bible_version_id text)
RETURNS TABLE (total_verses bigint, total_chapters bigint, total_books bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT coalesce(max(k.total_verses), 0)::bigint, coalesce(max(k.total_chapters), 0)::bigint,
           coalesce(max(k.total_books), 0)::bigint
      FROM progress_bible_version_counts k
     WHERE k.bible_version_id = p_bible_version_id
$$;

-- The counts are made exact at every migrate too: structure written while the
-- triggers were not installed (before this release, or during a take-over).
SELECT progress_recount_bible_versions(NULL);

CREATE OR REPLACE VIEW progress_live_bible_audio_files AS
SELECT mf.id, mf.audio_version_id, mf.chapter_id, mf.start_verse_id, mf.end_verse_id
  FROM media_files mf
  JOIN audio_versions av ON av.id = mf.audio_version_id AND av.deleted_at IS NULL
 WHERE progress_is_live_bible_audio(mf.media_type::text, mf.is_bible_audio, mf.upload_status::text,
                                    mf.publish_status::text, mf.deleted_at);

-- The bible version each verse belongs to (ranges stay inside the start verse's).
CREATE OR REPLACE VIEW progress_verse_structure AS
SELECT v.id AS verse_id, v.chapter_id, b.bible_version_id, v.global_order
  FROM verses v
  JOIN chapters c ON c.id = v.chapter_id
  JOIN books b ON b.id = c.book_id;

-- The live files of one audio version whose coverage can reach the given
-- chapters: a file of one of them, a file mapped to one of their verses
-- (found verse first, in versions that have mappings at all), a verse range
-- listed as reaching one of them (progress_range_file_chapters, one lookup
-- per chapter however many ranges the version holds). A superset of what
-- reaches them, never less.
-- Not inlined (plpgsql) and declared few rows: the definition reading it is
-- planned as lookups from a handful of files, whatever the version holds.
-- Every lookup is driven by the given chapters (unnest), so the plan cached
-- once per session (generic) stays a chain of index lookups. A version with
-- neither mapped files nor ranges (recorded as chapter files, the common
-- case) runs only the chapter lookup: a plan a third the size, set up and
-- run on every chapter change.
DROP FUNCTION IF EXISTS progress_live_bible_audio_files_reaching(uuid, text[]);
CREATE OR REPLACE FUNCTION progress_live_bible_audio_files_reaching(p_version uuid, p_chapters text[])
RETURNS SETOF progress_live_bible_audio_files LANGUAGE plpgsql STABLE ROWS 10
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    -- Only a version listed there can have mapped files (see 008_mapped_audio_versions).
    mapped boolean := EXISTS (SELECT FROM progress_mapped_audio_versions m WHERE m.audio_version_id = p_version);
    -- A version recorded as chapter files has no ranges to compare with.
    ranged boolean := EXISTS (SELECT FROM media_files r
                               WHERE r.audio_version_id = p_version AND r.start_verse_id IS NOT NULL);
BEGIN
    IF NOT (mapped OR ranged) THEN
        RETURN QUERY
        SELECT f.*
          FROM (SELECT DISTINCT c FROM unnest(p_chapters) AS c) AS ch (id)
         CROSS JOIN LATERAL (SELECT m.id FROM media_files m
                              WHERE m.audio_version_id = p_version AND m.chapter_id = ch.id OFFSET 0) AS mf
         CROSS JOIN LATERAL (
               SELECT * FROM progress_live_bible_audio_files l
                WHERE l.id = mf.id AND l.audio_version_id = p_version
               OFFSET 0) AS f;
        RETURN;
    END IF;
    RETURN QUERY
    SELECT f.*
      FROM (SELECT mf.id FROM unnest(p_chapters) AS ch (id)
             CROSS JOIN LATERAL (SELECT m.id FROM media_files m
                                  WHERE m.audio_version_id = p_version AND m.chapter_id = ch.id OFFSET 0) AS mf
            UNION
            -- The mapped files of every version, each once, and of those
            -- the version's own, told apart by one probe each among the
            -- version's entries (progress_media_files_version_file_idx;
            -- OFFSET 0: a probe per file, never a hash of the version's
            -- files): other versions' files are never read.
            SELECT m.media_file_id
              FROM (SELECT DISTINCT mfv.media_file_id FROM unnest(p_chapters) AS ch (id)
                      JOIN verses v ON v.chapter_id = ch.id
                      JOIN media_files_verses mfv ON mfv.verse_id = v.id
                     WHERE mapped AND mfv.deleted_at IS NULL) AS m
             WHERE EXISTS (SELECT FROM media_files own
                            WHERE own.audio_version_id = p_version AND own.id = m.media_file_id OFFSET 0)
            UNION
            -- The version's ranges listed for each chapter.
            SELECT rc.media_file_id FROM unnest(p_chapters) AS ch (id)
             CROSS JOIN LATERAL (SELECT r.media_file_id FROM progress_range_file_chapters r
                                  WHERE r.audio_version_id = p_version AND r.chapter_id = ch.id OFFSET 0) AS rc
             WHERE ranged) AS reach (id)
     -- Each candidate looked up by its key, never a hash of the version's files.
     CROSS JOIN LATERAL (
           SELECT * FROM progress_live_bible_audio_files l
            WHERE l.id = reach.id AND l.audio_version_id = p_version
           OFFSET 0) AS f;
END
$$;

-- What a chapter-scoped refresh reads instead of a base source a definition
-- names: a function of (scope, chapters) returning the source's rows for that
-- scope that can reach those chapters (a superset is fine: the rows made are
-- filtered to the chapters' members). Sources not listed are read as they are.
CREATE OR REPLACE FUNCTION progress_chapter_scoped_sources()
RETURNS TABLE (source text, scoped_function text) LANGUAGE sql IMMUTABLE AS $$
    VALUES ('progress_live_bible_audio_files', 'progress_live_bible_audio_files_reaching')
$$;

-- A definition's SQL reads the stored read models above it (mv_*). The same
-- SQL with those names replaced reads other sources:
--   'stored'  as written: the per-version refresh and the matview strategy;
--   'view'    the logical views above it, live from the base tables: the
--             logical view, the reference every read model is checked against;
--   'shadow'  the shadow copies being built beside the stored read models named
--             in p_shadowed (a take-over, or a changed definition);
--   'chapters' a chapter-scoped refresh (the generated *_within functions):
--             each stored read model above it narrowed to its rows of the
--             scope (p_scope) whose second key is a member of the chapters
--             (scope_members_<key>, see progress_install_chapter_refresh),
--             and each base source of progress_chapter_scoped_sources()
--             replaced by its scoped function. Cost follows the chapters,
--             not the version;
--   'old', 'new' each read model above it replaced by its rows that a
--             chapter-scoped refresh changed, as they were and as they are
--             now (<stored name>_old and _new, see progress_diff_statement).
CREATE OR REPLACE FUNCTION progress_definition_sql(
    d progress_read_model_definitions, p_source text, p_shadowed text[] DEFAULT '{}')
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    sql text := d.body;
    up progress_read_model_definitions%ROWTYPE;
    scoped record;
BEGIN
    IF p_source = 'stored' THEN
        RETURN sql;
    END IF;
    IF p_source = 'chapters' THEN
        -- Each scoped source is computed once (a definition may read it in several branches).
        FOR scoped IN SELECT * FROM progress_chapter_scoped_sources() LOOP
            CONTINUE WHEN sql !~ ('\m' || scoped.source || '\M');
            sql := format('WITH %I AS MATERIALIZED (SELECT * FROM %I(p_scope, scope_chapters)) ',
                          'scoped_' || scoped.source, scoped.scoped_function)
                   || regexp_replace(sql, '\m' || scoped.source || '\M', 'scoped_' || scoped.source, 'g');
        END LOOP;
    END IF;
    FOR up IN SELECT * FROM progress_read_model_definitions WHERE stored_name = ANY (d.upstreams) LOOP
        IF p_source = 'chapters' THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M',
                                  format('(SELECT * FROM %I WHERE %I = p_scope AND %I = ANY (%I))',
                                         up.stored_name, up.scope_column, up.key_columns[2],
                                         'scope_members_' || up.key_columns[2]), 'g');
        ELSIF p_source IN ('old', 'new') THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M',
                                  format('(SELECT * FROM unnest(%I))', up.stored_name || '_' || p_source), 'g');
        ELSIF p_source = 'view' THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M', up.logical_view, 'g');
        ELSIF up.stored_name = ANY (p_shadowed) THEN
            sql := regexp_replace(sql, '\m' || up.stored_name || '\M', progress_shadow_name(up.stored_name), 'g');
        END IF;
    END LOOP;
    RETURN sql;
END
$$;

-- Where a read model is built before it is swapped in under its own name.
CREATE OR REPLACE FUNCTION progress_shadow_name(p_stored_name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT left(p_stored_name, 55) || '__next' $$;

-- (Re)creates every logical view in dependency order. A view whose columns
-- changed is dropped and created again, with the views that read it.
-- What the views and materialized views among p_relations read, by their
-- rewrite rules: relations (p_class pg_class) or functions (pg_proc).
CREATE OR REPLACE FUNCTION progress_rule_reads(p_relations oid[], p_class regclass)
RETURNS TABLE (relation oid, reads oid) LANGUAGE sql STABLE AS $$
    SELECT DISTINCT r.ev_class, d.refobjid
      FROM pg_rewrite r
      JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                      AND d.refclassid = p_class AND d.refobjid <> r.ev_class
     WHERE r.ev_class = ANY (p_relations)
$$;

-- The views and materialized views standing under read models' names (their
-- stored names and logical views: the previous design's, replaced by a
-- take-over) in the order a reader locks them: a view before what it reads.
CREATE OR REPLACE FUNCTION progress_replaced_relations_in_lock_order()
RETURNS TABLE (relation regclass, kind text, owner name) LANGUAGE sql STABLE AS $$
    WITH RECURSIVE named AS (
        SELECT c.oid, c.relkind FROM progress_read_model_definitions d
          JOIN pg_class c ON c.oid IN (to_regclass(quote_ident(d.logical_view)),
                                       to_regclass(quote_ident(d.stored_name)))
         WHERE c.relkind IN ('v', 'm')),
    reads AS (
        SELECT * FROM progress_rule_reads(ARRAY(SELECT oid FROM named), 'pg_class')
         WHERE reads IN (SELECT oid FROM named)),
    depth (oid, depth) AS (
        SELECT oid, 0 FROM named
        UNION ALL
        SELECT r.reads, d.depth + 1 FROM depth d JOIN reads r ON r.relation = d.oid
         WHERE d.depth < 20)
    SELECT c.oid::regclass, CASE c.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
           pg_get_userbyid(c.relowner)
      FROM depth JOIN pg_class c ON c.oid = depth.oid
     GROUP BY c.oid
     ORDER BY max(depth.depth), c.relname
$$;

-- A role as GRANT and REVOKE name it (0 in an ACL: PUBLIC).
CREATE OR REPLACE FUNCTION progress_grantee(p_role oid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_role = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(p_role)) END
$$;

-- The statements that give a relation's readers their SELECT back (on the
-- whole relation or on columns) once another relation holds its name: a
-- read model or a logical view replaced by a take-over or a changed
-- definition keeps its readers. Its owner, when another role than the one
-- making the new relation (which will own it), is one of them: it read it.
CREATE OR REPLACE FUNCTION progress_reader_grants(p_relation regclass)
RETURNS TABLE (grantee text, statement text) LANGUAGE sql STABLE AS $$
    SELECT g.grantee,
           format('GRANT SELECT%s ON %I TO %s%s', g.columns, c.relname, g.grantee,
                  CASE WHEN g.grantable THEN ' WITH GRANT OPTION' ELSE '' END)
      FROM pg_class c
     CROSS JOIN LATERAL (
           SELECT a.grantee AS role, '' AS columns, a.is_grantable AS grantable
             FROM aclexplode(c.relacl) a WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
           UNION ALL
           SELECT a.grantee, format(' (%I)', att.attname), a.is_grantable
             FROM pg_attribute att CROSS JOIN LATERAL aclexplode(att.attacl) a
            WHERE att.attrelid = c.oid AND NOT att.attisdropped AND a.privilege_type = 'SELECT'
              AND a.grantee <> c.relowner
           UNION ALL
           SELECT c.relowner, '', false
            WHERE c.relowner <> (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user)) AS r
     CROSS JOIN LATERAL (SELECT progress_grantee(r.role) AS grantee, r.columns, r.grantable) AS g
     WHERE c.oid = p_relation
$$;

-- What default privileges gave a new relation (Supabase's give its API roles
-- every privilege on new tables), taken back before it takes a replaced
-- relation's name: it gets that relation's readers (progress_reader_grants)
-- and the product's roles, no others.
CREATE OR REPLACE FUNCTION progress_revoke_default_grants(p_relation regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN
        SELECT DISTINCT progress_grantee(a.grantee)
          FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE c.oid = p_relation AND a.grantee <> c.relowner
           AND pg_get_userbyid(a.grantee) NOT IN ('progress_refresher', 'progress_admin')
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', p_relation, grantee);
    END LOOP;
END
$$;

-- Runs those statements; a column the new relation lacks is passed over.
CREATE OR REPLACE FUNCTION progress_restore_reader_grants(p_statements text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    statement text;
BEGIN
    FOREACH statement IN ARRAY coalesce(p_statements, '{}') LOOP
        BEGIN
            EXECUTE statement;
        EXCEPTION WHEN undefined_column THEN
            NULL;
        END;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION progress_install_definitions() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    d progress_read_model_definitions%ROWTYPE;
    -- A view re-created (its columns changed, or its dependents went with
    -- it) comes back without its grants: they are given again at the end.
    grants text[] := ARRAY(
        SELECT g.statement FROM progress_read_model_definitions r
         CROSS JOIN LATERAL progress_reader_grants(to_regclass(quote_ident(r.logical_view))) AS g);
BEGIN
    FOR d IN SELECT * FROM progress_read_model_definitions ORDER BY install_order LOOP
        BEGIN
            EXECUTE format('CREATE OR REPLACE VIEW %I AS %s', d.logical_view, progress_definition_sql(d, 'view'));
        EXCEPTION WHEN invalid_table_definition OR wrong_object_type OR datatype_mismatch THEN
            EXECUTE format('DROP VIEW IF EXISTS %I CASCADE', d.logical_view);
            EXECUTE format('CREATE VIEW %I AS %s', d.logical_view, progress_definition_sql(d, 'view'));
        END;
    END LOOP;
    PERFORM progress_restore_reader_grants(grants);
END
$$;
