"""The realapp fixture (dev/realapp.py, include/plans/realapp.yaml): a database shaped by its
application, not by the plan. 4A and 4B run through the DAGs; the test then accounts for every
legacy row with its own SQL (not the engine's): in its target with the values the plan's
mapping gives it, or in quarantine. Lost must be 0.

The whole fixture, its trigger with its function and the leftover table included: the plan
recreates the function (the trigger follows its copied table) and drops the leftover
(tests/test_realapp_objects.py follows them to 4D).
"""
from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from consolidation.dev import realapp

REPO = Path(__file__).resolve().parents[1]
PLAN_FILE = str(realapp.PLAN_FILE)

# Test-side accounting: for each legacy table, the legacy rows found in their target with the
# values the plan says (written here by hand, independently of the engine's SQL).
FOUND = {
    "scraper.team_codes": """
        SELECT count(*) FROM scraper.team_codes AS s WHERE EXISTS (
          SELECT 1 FROM betting.teams AS t WHERE t.abbr = s.code
             AND t.league IS NOT DISTINCT FROM CASE s.league WHEN 'American' THEN 'AL' WHEN 'National' THEN 'NL' END)""",
    "scraper.games": """
        SELECT count(*) FROM scraper.games AS s WHERE EXISTS (
          SELECT 1 FROM betting.games AS t WHERE t.source_game_ref = s.id
             AND t.game_start = (s.game_data->>'game_datetime')::timestamptz
             AND t.home_abbr = s.game_data->>'home' AND t.away_abbr = s.game_data->'teams'->>'away'
             AND t.status = CASE s.state WHEN 'new' THEN 'pending' WHEN 'done' THEN 'final'
                                         WHEN 'ppd' THEN 'postponed' ELSE 'cancelled' END
             AND t.season = 2024 AND t.created_at = s.updated_at)""",
    "scraper.odds_raw": """
        SELECT count(*) FROM scraper.odds_raw AS s WHERE EXISTS (
          SELECT 1 FROM ingest.odds_snapshots AS t WHERE t.legacy_odds_id = s.id AND t.game_ref = s.game_id
             AND t.book = s.sportsbook AND t.scraped_at = s.scrape_timestamp::timestamptz
             AND t.date_scraped = s.scrape_timestamp::date
             AND t.ml_home IS NOT DISTINCT FROM (s.payload->'ml'->>'home')::numeric
             AND t.ml_away IS NOT DISTINCT FROM (s.payload->'ml'->>'away')::numeric
             AND t.total_line IS NOT DISTINCT FROM (s.payload->'total'->>'line')::numeric
             AND t.source = 'sbr')""",
    "scraper.scrape_runs": """
        SELECT count(*) FROM scraper.scrape_runs AS s WHERE EXISTS (
          SELECT 1 FROM ingest.scrape_runs AS t WHERE (t.*)::text = (s.*)::text)""",
    "wagers.bets": """
        SELECT count(*) FROM wagers.bets AS s WHERE EXISTS (
          SELECT 1 FROM betting.wagers AS t WHERE t.wager_id = s.bet_id AND t.game_id::text = s.game_id
             AND t.stake = s.stake_cents / 100.0 AND t.american_odds = s.odds::integer AND t.placed_at = s.placed
             AND t.outcome = CASE s.result WHEN 'W' THEN 'won' WHEN 'L' THEN 'lost' WHEN 'P' THEN 'push' ELSE 'open' END)""",
}
STEP_OF = {"scraper.team_codes": "merge__scraper__team_codes", "scraper.games": "copy__scraper__games",
           "scraper.odds_raw": "copy__scraper__odds_raw", "scraper.scrape_runs": "copy__scraper__scrape_runs",
           "wagers.bets": "copy__wagers__bets"}


@pytest.fixture(scope="module")
def realapp_template(make_session_db) -> str:
    """A session database holding the whole realapp fixture; clone it."""
    from conftest import dbname_of

    dsn = make_session_db()
    realapp.build(dsn)
    return dbname_of(dsn)


@pytest.fixture(scope="module")
def realapp_dags(airflow_dags):
    """The DAGs of dags/ parsed with CONSOLIDATION_PLAN=realapp.yaml (their tasks follow its steps)."""
    from airflow.dag_processing.dagbag import DagBag

    saved = os.environ.get("CONSOLIDATION_PLAN")
    os.environ["CONSOLIDATION_PLAN"] = PLAN_FILE
    try:
        bag = DagBag(str(REPO / "dags"))
    finally:
        if saved is None:
            os.environ.pop("CONSOLIDATION_PLAN", None)
        else:
            os.environ["CONSOLIDATION_PLAN"] = saved
    needed = ("phase4a_schema_extension", "phase4b_data_migration")  # what these tests run
    errors = {f: e for f, e in bag.import_errors.items() if any(n in f for n in needed)}
    assert not errors and all(n in bag.dags for n in needed), errors
    return bag.dags


def account(conn) -> dict[str, dict]:
    """Per legacy table: rows, found in the target as mapped, quarantined, lost."""
    out = {}
    for table, found_sql in FOUND.items():
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".")))).fetchone()[0]
        found = conn.execute(found_sql).fetchone()[0]
        quarantined = conn.execute("SELECT count(*) FROM ops.consolidation_quarantine WHERE step = %s",
                                   (STEP_OF[table],)).fetchone()[0]
        out[table] = {"rows": rows, "found": found, "quarantined": quarantined, "lost": rows - found - quarantined}
    return out


def test_realapp_4a_4b_through_the_dags_lose_nothing(run_dag, realapp_dags, make_db, realapp_template, monkeypatch):
    monkeypatch.setenv("CONSOLIDATION_PLAN", PLAN_FILE)
    dsn = make_db(template=realapp_template)
    assert run_dag("phase4a_schema_extension", dsn, dags=realapp_dags) == "success"
    assert run_dag("phase4b_data_migration", dsn, dags=realapp_dags) == "success"
    with psycopg.connect(dsn) as conn:
        books = account(conn)
        assert {t: b["lost"] for t, b in books.items()} == {t: 0 for t in FOUND}, books
        assert books["wagers.bets"]["quarantined"] == len(realapp.UNSTORABLE_BETS)
        assert all(b["quarantined"] == 0 for t, b in books.items() if t != "wagers.bets"), books
        quarantined = {int(r[0]) for r in conn.execute(
            "SELECT original->>'bet_id' FROM ops.consolidation_quarantine WHERE step = 'copy__wagers__bets'")}
        assert quarantined == set(realapp.UNSTORABLE_BETS)
        # the application's own rows are still there, untouched, beside the migrated ones
        assert conn.execute("SELECT count(*) FROM betting.games WHERE source_game_ref LIKE 'app-%'").fetchone()[0] == 20
        assert conn.execute("SELECT count(*) FROM ingest.odds_snapshots WHERE legacy_odds_id IS NULL "
                            "AND source = 'app'").fetchone()[0] == 30
        assert conn.execute("SELECT count(*) FROM betting.wagers WHERE wager_id <= 10").fetchone()[0] == 10
        # the 2 new team codes were inserted whole; the 10 known teams kept their names
        assert conn.execute("SELECT name, league FROM betting.teams WHERE abbr = 'LAD'").fetchone() == (
            "Los Angeles Dodgers", "NL")
        assert conn.execute("SELECT count(*) FROM betting.teams").fetchone()[0] == 12
        # the legacy foreign key odds_raw -> games, carried onto the pre-existing targets and validated by 4B
        assert conn.execute("SELECT convalidated, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                            "'ingest.odds_snapshots'::regclass AND contype = 'f'").fetchall() == [
            (True, "FOREIGN KEY (game_ref) REFERENCES betting.games(source_game_ref)")]
        gate = conn.execute("SELECT status FROM ops.consolidation_ledger WHERE kind = 'gate' AND name = 'gate_4B' "
                            "ORDER BY id DESC LIMIT 1").fetchone()
        assert gate == ("success",)


def test_realapp_inventory_names_what_the_plan_misses(make_db):
    """The whole fixture: the trigger's function, the trigger and the leftover table are listed with
    what the plan says; without the plan's entries, each is named with what to add (a warning)."""
    from consolidation.checks.inventory import take_inventory
    from consolidation.core.plan import load_plan

    dsn = make_db()
    counts = realapp.build(dsn)
    assert counts == {**realapp.LEGACY_ROWS, **realapp.APPLICATION_ROWS, **realapp.UNPLANNED_ROWS}
    plan = load_plan(PLAN_FILE)
    with psycopg.connect(dsn) as conn:
        listed = {o["object"]: o["decision"] for o in take_inventory(conn, plan).legacy_objects}
        assert listed == {"scraper.set_scrape_duration()": "recreate", "wagers.bets_export_2023": "drop",
                          "scraper.scrape_runs.scrape_runs_duration": "carried"}
        plan.objects = []
        inv = take_inventory(conn, plan)
        assert inv.ok  # 4A to 4C are not blocked
        named = {f.object: f for f in inv.findings if f.code == "unplanned_object"}
        assert set(named) == {"wagers.bets_export_2023", "scraper.set_scrape_duration",
                              "scraper.scrape_runs.scrape_runs_duration"}
        assert all(f.severity == "warning" for f in named.values())
        assert "recreate: schema" in named["scraper.scrape_runs.scrape_runs_duration"].message
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'scrape_runs_duration'").fetchone()[0] == 1
        assert conn.execute("SELECT has_table_privilege('realapp_writer', 'wagers.bets', 'INSERT')").fetchone()[0]


def test_realapp_build_is_deterministic(make_db):
    import phase_helpers as ph

    a, b = make_db(), make_db()
    realapp.build(a)
    realapp.build(b)
    schemas = list(realapp.LEGACY_SCHEMAS + realapp.APPLICATION_SCHEMAS)
    assert ph.snapshot(a, schemas) == ph.snapshot(b, schemas)
    with pytest.raises(realapp.RealappError, match="schemas .* exist"):
        realapp.build(a)


@pytest.mark.parametrize("which", ["realapp", "demo"])
def test_the_catalog_reads_every_tables_keys_and_indexes_as_the_one_table_query_does(which, make_db, realapp_template,
                                                                                     fixture_template):
    """Catalog.table_details reads all relations' constraints and indexes in two queries; each
    must be exactly what table_details() reads for that relation alone (names, columns, order)."""
    from consolidation.core.catalog import introspect, table_details
    from consolidation.core.plan import load_plan

    dsn = make_db(template=realapp_template if which == "realapp" else fixture_template)
    plan = load_plan(PLAN_FILE) if which == "realapp" else load_plan()
    with psycopg.connect(dsn) as conn:
        catalog = introspect(conn, list(plan.legacy_schemas) + list(plan.consolidated_schemas), count_rows=False)
        relations = sorted(catalog.relations)
        compared = {rel: (catalog.table_details(conn, *rel), table_details(conn, *rel)) for rel in relations}
    assert len(relations) > 10
    assert all(batched == alone for batched, alone in compared.values()), [
        rel for rel, (b, a) in compared.items() if b != a]
    assert sum(len(c) + len(i) for (c, i), _ in compared.values()) > 15  # not vacuous: keys and indexes read
