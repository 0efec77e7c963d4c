-- realapp, part 3: the application role with write grants (cluster-wide: created only when missing).

DO $realapp$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'realapp_writer') THEN
        CREATE ROLE realapp_writer NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- another build created it meanwhile
END
$realapp$;

GRANT USAGE ON SCHEMA scraper, wagers, betting, ingest TO realapp_writer;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA scraper, wagers TO realapp_writer;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA scraper, wagers TO realapp_writer;
-- The application only read the consolidated tables so far.
GRANT SELECT ON ALL TABLES IN SCHEMA betting, ingest TO realapp_writer;
