-- realapp, part 2: the legacy schemas the application grew before it had the consolidated
-- ones. Values the consolidated tables need sit in JSONB payloads or use other codes.

CREATE SCHEMA scraper;
CREATE SCHEMA wagers;

-- Team codes as the scraper knew them: 10 known to betting.teams, 2 new; the league spelled out.
CREATE TABLE scraper.team_codes (
    code       text PRIMARY KEY,
    team_name  text NOT NULL,
    league     text
);
INSERT INTO scraper.team_codes (code, team_name, league)
SELECT t.code, t.name, t.league
  FROM unnest(ARRAY['NYY', 'BOS', 'TOR', 'TB', 'BAL', 'CLE', 'DET', 'KC', 'MIN', 'CWS', 'SEA', 'LAD'],
              ARRAY['New York Yankees', 'Boston Red Sox', 'Toronto Blue Jays', 'Tampa Bay Rays',
                    'Baltimore Orioles', 'Cleveland Guardians', 'Detroit Tigers', 'Kansas City Royals',
                    'Minnesota Twins', 'Chicago White Sox', 'Seattle Mariners', 'Los Angeles Dodgers'],
              ARRAY['American', 'American', 'American', 'American', 'American', 'American', 'American',
                    'American', 'American', 'American', 'American', 'National']) AS t (code, name, league);

-- Text ids; when, who and where live inside game_data; state uses the scraper's codes.
CREATE TABLE scraper.games (
    id          text PRIMARY KEY,
    game_data   jsonb       NOT NULL,
    state       text        NOT NULL,
    updated_at  timestamptz NOT NULL
);
INSERT INTO scraper.games (id, game_data, state, updated_at)
SELECT 'sbr-2024-' || lpad(i::text, 4, '0'),
       jsonb_build_object(
           'game_datetime', to_char(timestamp '2024-04-01 23:05' + (i - 1) * interval '5 hours',
                                    'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'home', (ARRAY['NYY', 'BOS', 'TOR', 'TB', 'BAL', 'SEA'])[1 + i % 6],
           'teams', jsonb_build_object('away', (ARRAY['CLE', 'DET', 'KC', 'MIN', 'CWS', 'LAD'])[1 + (i * 7) % 6]),
           'venue', 'Park ' || (1 + i % 6)),
       (ARRAY['new', 'done', 'done', 'ppd', 'done', 'canc', 'done'])[1 + i % 7],
       timestamptz '2024-04-01 00:00+00' + i * interval '97 minutes'
  FROM generate_series(1, 120) AS i;

-- One scrape per row: the prices inside the payload, the time without a time zone.
-- Every 10th payload has no total; every 25th has no prices at all.
CREATE TABLE scraper.odds_raw (
    id                serial PRIMARY KEY,
    game_id           text      NOT NULL REFERENCES scraper.games (id),
    sportsbook        text      NOT NULL,
    scrape_timestamp  timestamp NOT NULL,
    payload           jsonb     NOT NULL
);
INSERT INTO scraper.odds_raw (game_id, sportsbook, scrape_timestamp, payload)
SELECT 'sbr-2024-' || lpad((1 + i % 120)::text, 4, '0'),
       (ARRAY['draftkings', 'fanduel', 'betmgm', 'caesars'])[1 + i % 4],
       timestamp '2024-03-31 06:00' + i * interval '37 minutes',
       CASE
           WHEN i % 25 = 0 THEN jsonb_build_object('status', 'suspended')
           WHEN i % 10 = 0 THEN jsonb_build_object('ml', jsonb_build_object('home', -100 - i % 90, 'away', 100 + i % 80))
           ELSE jsonb_build_object('ml', jsonb_build_object('home', -100 - i % 90, 'away', 100 + i % 80),
                                   'total', jsonb_build_object('line', 7 + (i % 6) * 0.5, 'over', -110))
       END
  FROM generate_series(1, 600) AS i;

-- Scrape runs; duration_s is kept by a trigger (04_trigger.sql).
CREATE TABLE scraper.scrape_runs (
    run_id        serial PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    rows_scraped  integer     NOT NULL DEFAULT 0,
    duration_s    integer
);


INSERT INTO scraper.scrape_runs (started_at, finished_at, rows_scraped, duration_s)
SELECT r.started_at, r.finished_at, r.rows_scraped,
       extract(epoch FROM r.finished_at - r.started_at)::integer
  FROM (SELECT timestamptz '2024-03-31 06:00+00' + i * interval '6 hours' AS started_at,
               CASE WHEN i = 40 THEN NULL ELSE timestamptz '2024-03-31 06:00+00' + i * interval '6 hours'
                                                + (60 + i * 7) * interval '1 second' END AS finished_at,
               15 * i AS rows_scraped
          FROM generate_series(1, 40) AS i) AS r;

-- Bets as the old betting service stored them: game ids as text (the application's game_id,
-- or 'TBD' before the game was known), stakes in cents, odds as signed text, results as letters.
CREATE TABLE wagers.bets (
    bet_id       serial PRIMARY KEY,
    game_id      text        NOT NULL,
    stake_cents  integer     NOT NULL,
    odds         text        NOT NULL,
    placed       timestamptz NOT NULL,
    result       char(1)
);
INSERT INTO wagers.bets (bet_id, game_id, stake_cents, odds, placed, result)
SELECT 1000 + i,
       CASE WHEN i IN (17, 88, 203) THEN 'TBD'
            WHEN i = 150 THEN ''
            WHEN i = 240 THEN '9999'          -- no such game: the foreign key refuses it
            ELSE (1 + i % 20)::text END,
       CASE WHEN i = 275 THEN 0 ELSE 500 + (i % 40) * 250 END,   -- a zero stake: the CHECK refuses it
       CASE WHEN i % 3 = 0 THEN '+' || (100 + i % 150) ELSE '-' || (105 + i % 60) END,
       timestamptz '2024-03-28 10:00+00' + i * interval '53 minutes',
       (ARRAY['W', 'L', 'P', NULL, 'L', 'W'])[1 + i % 6]
  FROM generate_series(1, 300) AS i;
SELECT setval(pg_get_serial_sequence('wagers.bets', 'bet_id'), 1300);
