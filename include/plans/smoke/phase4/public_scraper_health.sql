-- Scraper health: SportsbookReview pages per HTTP status, the games parsed from them and
-- the parse failures (the ingestion monitor).
SELECT coalesce(h.status_code::text, 'unknown') AS status,
       count(DISTINCT h.id) AS pages,
       count(p.id) AS parsed_games,
       count(p.id) FILTER (WHERE p.parsed_at IS NULL) AS parse_failures,
       max(h.fetched_at) AS last_fetch,
       max(length(h.html)) AS largest_page
  FROM {{public.sbr_raw_html}} AS h
  LEFT JOIN {{public.sbr_parsed_games}} AS p ON p.raw_html_id = h.id
 GROUP BY 1
 ORDER BY 1;
