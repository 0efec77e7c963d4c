-- Splits coverage in June: games per date and feed with the sharp-action signals
-- detected for them (the splits dashboard; game_id is the feed's text id).
SELECT g.game_date, g.source,
       count(DISTINCT g.id) AS games,
       count(sa.id) AS sharp_signals,
       min(g.away || ' @ ' || g.home) AS first_matchup,
       max(g.game_id) AS last_game_id
  FROM {{splits.games}} AS g
  LEFT JOIN {{splits.sharp_actions}} AS sa ON sa.game_id = g.game_id
 WHERE g.source IN ('vsin', 'sbd', 'action_network')
   AND g.game_date BETWEEN date '2024-06-01' AND date '2024-06-30'
 GROUP BY g.game_date, g.source
 ORDER BY g.game_date, g.source;
