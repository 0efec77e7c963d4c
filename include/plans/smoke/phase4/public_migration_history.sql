-- Migration history across both logs (the ops page), newest first.
SELECT 'main' AS log, m.id, m.migration_name, m.phase, m.status, m.rows_migrated, m.finished_at
  FROM {{public.migration_log}} AS m
UNION ALL
SELECT 'phase2b', m.id, m.migration_name, m.phase, m.status, m.rows_migrated, m.finished_at
  FROM {{public.migration_log_phase2b}} AS m
 ORDER BY 7 DESC NULLS LAST, 1, 2;
