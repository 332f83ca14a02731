CREATE OR REPLACE FUNCTION public.progress_rows_text_chapter_coverage(p_scope uuid)
 RETURNS SETOF mv_text_chapter_coverage
 LANGUAGE sql
 STABLE
AS $function$SELECT * FROM (SELECT vc.text_version_id,
       c.id AS chapter_id,
       count(*) AS verses_with_text,
       c.total_verses,
       count(*) = c.total_verses AS is_complete
  FROM mv_text_verse_coverage vc
  JOIN verses v ON v.id = vc.verse_id
  JOIN chapters c ON c.id = v.chapter_id
 GROUP BY vc.text_version_id, c.id, c.total_verses) r WHERE r.text_version_id = p_scope$function$
