-- realapp, part 5: a leftover nobody put in the plan (a one-off export of 2023's bets).
CREATE TABLE wagers.bets_export_2023 (
    bet_id   integer PRIMARY KEY,
    game_id  text,
    stake    numeric(10,2)
);
INSERT INTO wagers.bets_export_2023
SELECT i, (1 + i % 20)::text, 5 + i FROM generate_series(1, 25) AS i;
GRANT SELECT ON wagers.bets_export_2023 TO realapp_writer;
