"""phase4_rollback before any cleanup, run as a DAG against the real server: the database ends
equal to the pre-Phase-4 fixture (per-table checksums of every schema, computed test-side),
and the rollback refuses - changing nothing - to remove what Phase 4 did not create.
(The rollback after a cleanup is in test_phase4d.py, which shares its cleaned database.)"""
from __future__ import annotations

import psycopg
import pytest

from consolidation.phases import extend, rollback
from consolidation.core import ledger
from consolidation.checks import gates as phases
from consolidation.core.plan import load_plan

from conftest import dbname_of
from test_phase4ab import engine_4a, engine_4b, table_md5

PLAN = load_plan()
DAG = "phase4_rollback"
EVERYTHING = list(PLAN.legacy_schemas) + list(PLAN.consolidated_schemas)


def snapshot(dsn: str) -> dict:
    """{relation: (md5, rows)} of every table, plus every relation's kind and columns, in all
    legacy and consolidated schemas - the tool's own tables (the history) excepted."""
    with psycopg.connect(dsn) as conn:
        rels = conn.execute(
            "SELECT n.nspname || '.' || c.relname, c.relkind, "
            "(SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) "
            "   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND c.relname NOT LIKE 'consolidation\\_%%' ORDER BY 1", (EVERYTHING,)).fetchall()
        out = {name: (kind, cols) for name, kind, cols in rels}
        for name, kind, _ in rels:
            if kind in ("r", "p"):
                out[name] += table_md5(conn, name)
        out["constraints"] = conn.execute(
            "SELECT string_agg(conrelid::regclass::text || ':' || conname, ',' ORDER BY 1) FROM pg_constraint "
            "WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE nspname = ANY(%s)) "
            "AND conrelid::regclass::text NOT LIKE '%%consolidation\\_%%'", (EVERYTHING,)).fetchone()[0]
        return out


@pytest.fixture(scope="module")
def migrated(make_session_db, fixture_template) -> str:
    """4A and 4B done (engine), legacy untouched: what a rollback before cleanup starts from."""
    dsn = make_session_db(template=fixture_template)
    engine_4a(dsn)
    engine_4b(dsn)
    return dsn


def test_rollback_before_cleanup_gives_back_the_pre_phase4_database(migrated, fixture_template, make_db, run_dag):
    dsn = make_db(template=dbname_of(migrated))
    fresh = make_db(template=fixture_template)
    with psycopg.connect(dsn) as conn:  # the merge really changed an existing table, to be undone
        assert conn.execute("SELECT count(action_network_id) FROM core_betting.teams").fetchone()[0] == 30
    assert snapshot(dsn) != snapshot(fresh)
    assert run_dag(DAG, dsn) == "success"
    assert snapshot(dsn) == snapshot(fresh)
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "success" and "dropped table raw_data.sbr_raw_html" in row["details"]["undone"]
        # the ledger now forgets what 4A created, the undo log is empty, and 4B refuses until 4A runs again
        assert extend.created_targets(conn, PLAN) == set()
        assert conn.execute("SELECT count(*) FROM operational.consolidation_undo").fetchone()[0] == 0
        with pytest.raises(phases.PhaseRefused, match="rolled back"):
            phases.require_gate(conn, PLAN, "4B")
    # a second rollback finds nothing to do
    assert run_dag(DAG, dsn) == "success"
    assert snapshot(dsn) == snapshot(fresh)


def test_rollback_then_phase4_again(migrated, make_db):
    """After a rollback, 4A and 4B run again from scratch (the ledger no longer claims the targets)."""
    dsn = make_db(template=dbname_of(migrated))
    with psycopg.connect(dsn) as conn:
        rollback.undo_migration(conn, PLAN, run_id="rb", user="test")
    engine_4a(dsn)
    engine_4b(dsn, run_id="again")
    with psycopg.connect(dsn) as conn:
        assert table_md5(conn, "public.sbr_parsed_games") == table_md5(conn, "raw_data.sbr_parsed_games")
        assert "raw_data.sbr_parsed_games" in extend.created_targets(conn, PLAN)


def test_rollback_refuses_rows_that_did_not_come_from_the_plan(migrated, make_db, run_dag):
    dsn = make_db(template=dbname_of(migrated))
    with psycopg.connect(dsn) as conn:  # a service writes to a table 4A created
        conn.execute("INSERT INTO operational.strategy_integration_log (strategy_name, action, logged_at) "
                     "VALUES ('new_service', 'written after 4B', now())")
    before = snapshot(dsn)
    assert run_dag(DAG, dsn) == "failed"
    assert snapshot(dsn) == before  # nothing changed
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "refused"
        assert "operational.strategy_integration_log (created by 4A) holds 1 row(s) that did not come from the plan" \
            in row["message"]


def test_rollback_refuses_to_touch_a_table_it_never_created(migrated, make_db, run_dag):
    dsn = make_db(template=dbname_of(migrated))
    with psycopg.connect(dsn) as conn:  # someone's own table, pointing at a table 4A created
        conn.execute("CREATE TABLE analytics.config_notes (id int PRIMARY KEY, config_id bigint "
                     "REFERENCES operational.strategy_configurations (config_id), note text)")
        conn.execute("INSERT INTO analytics.config_notes VALUES (1, 3, 'keep me')")
    before = snapshot(dsn)
    assert run_dag(DAG, dsn) == "failed"
    assert snapshot(dsn) == before
    with psycopg.connect(dsn) as conn:
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "refused" and "analytics.config_notes" in row["message"]
        assert "operational.strategy_configurations" in row["message"]
        assert conn.execute("SELECT note FROM analytics.config_notes").fetchall() == [("keep me",)]
        # and the engine names it the same way, without changing anything
        with pytest.raises(rollback.RollbackRefused, match="analytics.config_notes"):
            rollback.undo_migration(conn, PLAN, run_id="again", user="test")
