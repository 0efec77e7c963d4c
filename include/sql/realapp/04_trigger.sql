-- realapp, part 4: a trigger of a legacy table with its function in the legacy schema
-- (it keeps duration_s in step with started_at / finished_at, as 02 filled it).

CREATE FUNCTION scraper.set_scrape_duration() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.duration_s := CASE WHEN NEW.finished_at IS NULL THEN NULL
                           ELSE extract(epoch FROM NEW.finished_at - NEW.started_at)::integer END;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER scrape_runs_duration BEFORE INSERT OR UPDATE ON scraper.scrape_runs
    FOR EACH ROW EXECUTE FUNCTION scraper.set_scrape_duration();
