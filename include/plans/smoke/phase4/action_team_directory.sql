-- Team directory: display name, slug and logo per team with its number of games
-- (teams_formatted, dim_teams and the games_with_teams view together).
SELECT f.slug, f.display_name, d.logo_url, d.action_network_id, count(w.id) AS games
  FROM {{action.teams_formatted}} AS f
  JOIN {{action.dim_teams}} AS d ON d.abbr = f.abbr
  LEFT JOIN {{action.games_with_teams}} AS w ON f.abbr IN (w.home_abbr, w.away_abbr)
 GROUP BY f.slug, f.display_name, d.logo_url, d.action_network_id
 ORDER BY f.slug;
