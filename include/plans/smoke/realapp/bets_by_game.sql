-- The settlement service: bets per game with the time of the first and last bet.
SELECT b.game_id, count(*) AS bets, min(b.placed) AS first_bet, max(b.placed) AS last_bet
  FROM {{wagers.bets}} AS b
 GROUP BY b.game_id
