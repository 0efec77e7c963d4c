"""phase4_rollback before any cleanup, through its DAG's task bodies (assess, restore_legacy,
undo_migration, in order) on clones of the 4B stage: the database ends equal to the pre-Phase-4
fixture (per-table checksums of every schema, computed test-side), and the rollback refuses -
changing nothing - to remove what Phase 4 did not create.
(The rollback DAG itself runs after a cleanup, in test_phase4d.py, which shares its cleaned database.)"""
from __future__ import annotations

import psycopg
import pytest

from consolidation.airflow import tasks
from consolidation.checks import gates as phases
from consolidation.core import ledger
from consolidation.core.session import created_targets
from consolidation.phases import rollback

from phase_helpers import EVERYTHING, PLAN, call_task, leased, engine_4a, engine_4b, snapshot as _snapshot, table_md5

DAG = "phase4_rollback"


def snapshot(dsn: str) -> dict:
    """Every relation of the legacy and consolidated schemas: kind, columns, rows (md5), constraints."""
    return _snapshot(dsn, EVERYTHING, kinds=True)


def run_rollback(dsn: str, run_id: str = "manual__rollback") -> dict:
    """The DAG's tasks, in order, as its run calls them (inside the run's lease); undo's value."""
    run = {"dag_id": DAG, "run_id": run_id}
    with leased(dsn, DAG, run_id):
        call_task(tasks.assess, dsn, **run)
        call_task(tasks.restore_legacy, dsn, **run)
        return call_task(tasks.undo_migration, dsn, **run)


def test_rollback_before_cleanup_gives_back_the_pre_phase4_database(db_4b, legacy_db):
    dsn, fresh = db_4b, legacy_db
    with psycopg.connect(dsn) as conn:  # the merge really changed an existing table, to be undone
        assert conn.execute("SELECT count(action_network_id) FROM core_betting.teams").fetchone()[0] == 30
    assert snapshot(dsn) != snapshot(fresh)
    assert run_rollback(dsn)["undone"] > 0
    assert snapshot(dsn) == snapshot(fresh)
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "success" and "dropped table raw_data.sbr_raw_html" in row["details"]["undone"]
        # the ledger now forgets what 4A created, the undo log is empty, and 4B refuses until 4A runs again
        assert created_targets(conn, PLAN) == set()
        assert conn.execute("SELECT count(*) FROM operational.consolidation_undo").fetchone()[0] == 0
        with pytest.raises(phases.PhaseRefused, match="rolled back"):
            phases.require_gate(conn, PLAN, "4B")
    # a second rollback finds nothing to do
    assert run_rollback(dsn, "manual__again") == {"undone": 0}
    assert snapshot(dsn) == snapshot(fresh)


def test_rollback_then_phase4_again(db_4b):
    """After a rollback, 4A and 4B run again from scratch (the ledger no longer claims the targets)."""
    dsn = db_4b
    with psycopg.connect(dsn) as conn:
        rollback.undo_migration(conn, PLAN, run_id="rb", user="test")
    engine_4a(dsn)
    assert engine_4b(dsn, run_id="again", gate=False) == {}
    with psycopg.connect(dsn) as conn:
        assert table_md5(conn, "public.sbr_parsed_games") == table_md5(conn, "raw_data.sbr_parsed_games")
        assert "raw_data.sbr_parsed_games" in created_targets(conn, PLAN)


def test_rollback_refuses_rows_that_did_not_come_from_the_plan(db_4b):
    dsn = db_4b
    with psycopg.connect(dsn) as conn:  # a service writes to a table 4A created
        conn.execute("INSERT INTO operational.strategy_integration_log (strategy_name, action, logged_at) "
                     "VALUES ('new_service', 'written after 4B', now())")
    before = snapshot(dsn)
    with pytest.raises(rollback.RollbackRefused):
        run_rollback(dsn)  # undo_migration fails the run
    assert snapshot(dsn) == before  # nothing changed
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "refused"
        assert "operational.strategy_integration_log (created by 4A) holds 1 row(s) that did not come from the plan" \
            in row["message"]


def test_rollback_refuses_to_touch_a_table_it_never_created(db_4b):
    dsn = db_4b
    with psycopg.connect(dsn) as conn:  # someone's own table, pointing at a table 4A created
        conn.execute("CREATE TABLE analytics.config_notes (id int PRIMARY KEY, config_id bigint "
                     "REFERENCES operational.strategy_configurations (config_id), note text)")
        conn.execute("INSERT INTO analytics.config_notes VALUES (1, 3, 'keep me')")
    before = snapshot(dsn)
    with pytest.raises(rollback.RollbackRefused):
        run_rollback(dsn)  # undo_migration fails the run
    assert snapshot(dsn) == before
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "refused" and "analytics.config_notes" in row["message"]
        assert "operational.strategy_configurations" in row["message"]
        assert conn.execute("SELECT note FROM analytics.config_notes").fetchall() == [("keep me",)]
        # and the engine names it the same way, without changing anything
        with pytest.raises(rollback.RollbackRefused, match="analytics.config_notes"):
            rollback.undo_migration(conn, PLAN, run_id="again", user="test")


def test_rollback_after_4c_points_the_registry_back_at_the_legacy_tables(db_4c, cli):
    """After 4C services resolve through the registry; a rollback marks every entry rolled_back,
    pointing at its legacy table under its legacy columns (resolve answers the legacy location,
    and reads exactly the legacy rows), rewrites the JSON export, and `status` shows it."""
    import json

    from psycopg import sql

    from consolidation.phases import registry

    with psycopg.connect(db_4c) as conn:
        before = registry.resolve(conn, "splits.games", plan=PLAN)
        assert before.schema == "core_betting" and before.status == registry.CONSOLIDATED
        exported = registry.exported_in_run(conn, PLAN, None)
    done = run_rollback(db_4c)
    assert done["undone"] > 0
    with psycopg.connect(db_4c) as conn:
        for name in ("splits.games", "public.sbr_parsed_games", "tracking.active_strategy_configs"):
            r = registry.resolve(conn, name, plan=PLAN)
            assert (r.schema, r.table, r.status, r.filter) == (*name.split("."), registry.ROLLED_BACK, None), r
            assert all(c.name == c.column and c.type == c.physical_type for c in r.columns)
            legacy = conn.execute(sql.SQL("SELECT count(*), sum(hashtext(t::text)) FROM {} AS t").format(
                sql.Identifier(*name.split(".")))).fetchone()
            through = conn.execute(sql.SQL("SELECT count(*), sum(hashtext(t::text)) FROM {} AS t").format(
                r.relation())).fetchone()
            assert through == legacy, name
        assert conn.execute("SELECT count(*) FROM operational.consolidation_registry "
                            "WHERE status <> 'rolled_back'").fetchone()[0] == 0
        rewritten = registry.exported_in_run(conn, PLAN, None)
    doc = json.loads(rewritten.read_text())
    assert doc["exported_by_run"] == "manual__rollback" and rewritten != exported or doc["exported_by_run"] == "manual__rollback"
    games = next(e for e in doc["entries"] if e["logical_name"] == "splits.games")
    assert (games["physical_schema"], games["status"]) == ("splits", "rolled_back")
    assert registry.resolve_file(rewritten, "splits.games").schema == "splits"
    out = cli("status", dsn=db_4c)
    assert "rolled back by run manual__rollback" in out.stdout and "point at the legacy tables again" in out.stdout, out.stdout
