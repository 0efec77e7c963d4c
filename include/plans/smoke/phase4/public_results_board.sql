-- Results board of the outcomes service: completed games per date with home wins and
-- scoring, latest 30 dates first.
SELECT o.game_date,
       count(*) AS games,
       count(*) FILTER (WHERE o.home_win) AS home_wins,
       round(avg(o.total_runs), 2) AS avg_total_runs,
       max(o.home_score + o.away_score) AS max_runs,
       string_agg(o.away_team || '@' || o.home_team, ' ' ORDER BY o.game_id) AS matchups
  FROM {{public.game_outcomes}} AS o
 WHERE o.home_score IS NOT NULL
 GROUP BY o.game_date
 ORDER BY o.game_date DESC
 LIMIT 30;
