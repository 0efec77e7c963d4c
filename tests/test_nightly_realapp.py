"""The nightly validation knows the quarantine (issue 10), on the realapp fixture (dev/realapp.py),
whose wagers.bets step quarantines 6 bets within its threshold.

The nightly compares every step's migrated rows with the legacy rows minus the quarantined ones,
as the 4C gate does (phases.validation.migrated_rows), records that as the baseline, and after
the legacy tables are gone compares the targets with the baseline; it lists the quarantine and
accounts for it. (The legacy schemas are dropped here with DROP SCHEMA, as in test_nightly.py's
post-4D test; the 4D phase itself is tests/test_realapp_4d.py's.)
"""
from __future__ import annotations

import psycopg
import pytest

import phase_helpers as ph
from consolidation.core.plan import load_plan
from consolidation.dev import realapp
from consolidation.phases import nightly

pytestmark = pytest.mark.engine

PLAN = load_plan(str(realapp.PLAN_FILE))
STEPS = {"merge__scraper__team_codes", "copy__scraper__games", "copy__scraper__odds_raw",
         "copy__scraper__scrape_runs", "copy__wagers__bets"}


def _checks(verdict, name: str) -> dict[str, dict]:
    """History rows of one check, by the step's target table (one step per target here)."""
    return {f"{r['schema_name']}.{r['table_name']}": r for r in verdict.rows if r["check_name"] == name}


def test_nightly_accounts_for_the_quarantine_and_fails_when_a_migrated_row_changes(make_db, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSOLIDATION_PLAN", str(realapp.PLAN_FILE))
    dsn = make_db()
    realapp.build(dsn, trigger=False, unplanned=False)
    ph.engine_4a(dsn, PLAN)
    ph.engine_4b(dsn, PLAN)
    ph.engine_4c(dsn, tmp_path / "export", PLAN)

    # after 4C: every migrated row equals its legacy row, the 6 quarantined bets accounted for
    first = nightly.validate(dsn, PLAN, run_id="n-4c", user="test")
    assert first.passed, first.summary()
    rows = _checks(first, "migrated_rows_intact")
    assert set(rows) == {"betting.teams", "betting.games", "ingest.odds_snapshots", "ingest.scrape_runs",
                         "betting.wagers"}
    assert "every row of wagers.bets minus its 6 quarantined row(s) (kept in ops.consolidation_quarantine" \
        in rows["betting.wagers"]["description"]
    [held] = _checks(first, "quarantine_accounted").values()
    assert held["table_name"] == "wagers" and held["passed"]
    assert "wagers.bets -> betting.wagers: 6 row(s) quarantined, not migrated" in held["description"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT step, rows, quarantined FROM ops.consolidation_validation_baseline "
                            "WHERE step = 'copy__wagers__bets'").fetchone() == ("copy__wagers__bets", 294, 6)

    # a migrated row changed while the legacy table is there: named by its key
    with psycopg.connect(dsn) as conn:
        home = conn.execute("SELECT home_abbr FROM betting.games WHERE source_game_ref = 'sbr-2024-0007'").fetchone()[0]
        conn.execute("UPDATE betting.games SET home_abbr = 'XXX' WHERE source_game_ref = 'sbr-2024-0007'")
    changed = nightly.validate(dsn, PLAN, run_id="n-4c-changed", user="test", schemas=["betting"])
    assert not changed.passed
    [problem] = [p for p in changed.problems if "migrated_rows_intact" in p]
    assert problem.startswith("betting.games: migrated_rows_intact on source_game_ref") and \
        '{"source_game_ref": "sbr-2024-0007"}' in problem, problem
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE betting.games SET home_abbr = %s WHERE source_game_ref = 'sbr-2024-0007'", (home,))

    # the legacy schemas gone (what 4D drops): the targets are compared with the baseline
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP SCHEMA scraper, wagers CASCADE")
        conn.execute("INSERT INTO betting.wagers (wager_id, game_id, stake, american_odds, placed_at) "
                     "VALUES (99001, 1, 5, -110, now())")  # the application's new row: not a migrated one
    after = nightly.validate(dsn, PLAN, run_id="n-4d", user="test")
    assert after.passed, after.summary()
    rows = _checks(after, "migrated_rows_intact")
    assert len(rows) == 5 and "are still there, unchanged" in rows["betting.wagers"]["description"]
    assert "the 294 row(s) wagers.bets migrated into betting.wagers" in rows["betting.wagers"]["description"]
    assert len(after.rows) == len(first.rows)  # the same checks, now from the baseline
    assert _checks(after, "quarantine_accounted")["betting.wagers"]["passed"]

    # a migrated row changed after the cleanup, a quarantined row gone: both fail, named
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE betting.wagers SET stake = stake + 1 WHERE wager_id = 1001")
        conn.execute("DELETE FROM ops.consolidation_quarantine WHERE original->>'bet_id' = '1017'")
    broken = nightly.validate(dsn, PLAN, run_id="n-4d-changed", user="test", schemas=["betting"])
    assert not broken.passed
    failed = {(r["table_name"], r["check_name"]) for r in broken.rows if not r["passed"]}
    assert failed == {("wagers", "migrated_rows_intact"), ("wagers", "quarantine_accounted")}, broken.summary()
    [problem] = [p for p in broken.problems if "migrated_rows_intact" in p]
    assert '{"wager_id": 1001}: changed since it was migrated' in problem, problem
