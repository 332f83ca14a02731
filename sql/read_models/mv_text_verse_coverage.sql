-- Which verses each live text version covers with typed text: one row per covered verse.
--
-- kind: text
-- level: verse
-- logical view: text_verse_coverage
-- key: text_version_id, verse_id
-- upstreams: -
-- base tables: text_versions, verse_texts, verses
SELECT vt.text_version_id, vt.verse_id
  FROM verse_texts vt
  JOIN text_versions tv ON tv.id = vt.text_version_id AND tv.deleted_at IS NULL
 -- (A text with no verse covers none.)
 WHERE vt.deleted_at IS NULL AND vt.verse_id IS NOT NULL
