-- Integration activity per strategy and action since July 3rd, busiest first (ops).
SELECT l.strategy_name, l.action,
       count(*) AS events,
       count(DISTINCT l."user") AS users,
       sum((l.details->>'games_evaluated')::int) AS games_evaluated,
       max(l.logged_at) AS last_event
  FROM {{tracking.strategy_integration_log}} AS l
 WHERE l.logged_at >= timestamptz '2024-07-03 00:00:00+00'
 GROUP BY l.strategy_name, l.action
 ORDER BY events DESC, l.strategy_name, l.action
 LIMIT 25;
