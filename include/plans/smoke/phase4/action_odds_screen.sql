-- Odds screen: the latest ten games that were not postponed, both teams joined by their
-- Action Network team id, with totals and moneylines.
SELECT g.action_network_game_id, g.start_time, g.status,
       h.abbr AS home, a.abbr AS away, h.action_network_id AS home_an_id, a.logo_url AS away_logo,
       g.total, g.home_ml, g.away_ml
  FROM {{action.fact_games}} AS g
  JOIN {{action.dim_teams}} AS h ON h.team_id = g.home_team_id
  JOIN {{action.dim_teams}} AS a ON a.team_id = g.away_team_id
 WHERE g.status <> 'postponed'
 ORDER BY g.start_time DESC, g.id DESC
 LIMIT 10;
