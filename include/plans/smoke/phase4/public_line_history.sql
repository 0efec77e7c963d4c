-- Line history: parsed games per date and market in September, with the range of the
-- first book's home moneyline (the line-movement service reads the JSON payload).
SELECT p.game_date,
       p.payload->>'market' AS market,
       count(*) AS games,
       min((p.payload->'odds'->0->>'home_ml')::int) AS first_book_home_ml_min,
       max((p.payload->'odds'->0->>'home_ml')::int) AS first_book_home_ml_max
  FROM {{public.sbr_parsed_games}} AS p
 WHERE p.home_team IS NOT NULL
   AND p.game_date >= date '2024-09-01'
 GROUP BY p.game_date, p.payload->>'market'
 ORDER BY p.game_date, market;
