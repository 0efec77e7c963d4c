-- The odds screen: scrapes per book and game, first and last scrape time.
SELECT o.sportsbook, o.game_id, count(*) AS scrapes, min(o.scrape_timestamp) AS first_seen,
       max(o.scrape_timestamp) AS last_seen
  FROM {{scraper.odds_raw}} AS o
 GROUP BY o.sportsbook, o.game_id
