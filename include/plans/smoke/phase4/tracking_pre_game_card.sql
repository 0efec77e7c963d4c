-- Pre-game card: each recommendation with its game from the splits feed and, once
-- played, the outcome (three legacy schemas joined).
SELECT r.id, r.strategy_name, r.recommendation, r.confidence, r.odds,
       g.game_date, g.away || ' @ ' || g.home AS matchup,
       o.home_score, o.away_score, o.home_win
  FROM {{tracking.pre_game_recommendations}} AS r
  LEFT JOIN {{splits.games}} AS g ON g.game_id = r.game_id
  LEFT JOIN {{public.game_outcomes}} AS o ON o.id = r.game_outcome_id
 ORDER BY r.created_at DESC, r.id;
