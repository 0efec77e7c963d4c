-- The scraper's health page: its runs with their rows and duration.
SELECT r.run_id, r.started_at, r.finished_at, r.rows_scraped, r.duration_s
  FROM {{scraper.scrape_runs}} AS r
 WHERE r.finished_at IS NOT NULL
