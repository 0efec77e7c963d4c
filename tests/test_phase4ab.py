"""Phases 4A and 4B against a real database built by the fixture: once as DAGs (dag.test),
everything else through the engine functions the DAG tasks call, on clones of the 4B stage.

What is asserted is what the owner of the database cares about: every row arrived,
byte for byte (checksums computed here, independently of the engine), nothing was
duplicated, bad rows are quarantined and stop the gate, and a refusal is a refusal.
"""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from consolidation import api
from consolidation.checks import gates as phases
from consolidation.checks.gx import GateFailed
from consolidation.checks.inventory import InventoryBlocked
from consolidation.checks.probes import probe_insert
from consolidation.core import ledger
from consolidation.phases import extend
from consolidation.phases.migrate import run_step

from conftest import read_only, state_folder, task_states
from phase_helpers import PLAN, engine_4b, q, snapshot, steps_4b, table_md5

COPIES = [s for s in PLAN.steps if s.action == "copy" and not s.is_recreated_view]
TARGETS = sorted({s.target for s in PLAN.migrating_steps()})


# ------------------------------------------------------------------ the DAGs
def test_4a_then_4b_dags_migrate_exactly_what_the_engine_does(legacy_db, template_4b, run_dag):
    """phase4a_schema_extension then phase4b_data_migration on a copy of the fixture: both succeed,
    every step and both gates are in the ledger under the DAG runs, and every target holds exactly
    the rows of the 4B stage built through the engine (which the tests below examine). 4B is
    parsed after 4A, as the DAG processor does: by the step graph 4A wrote, independent steps
    side by side (its shape: test_parallel_4b)."""
    from phase_helpers import DAG_4B as B, parse_4b

    assert run_dag("phase4a_schema_extension", legacy_db) == "success"
    dag = parse_4b()[B]
    assert "runs its steps by the step graph" in dag.doc_md and dag.max_active_tasks == 2
    assert run_dag(B, legacy_db, dags={B: dag}) == "success"
    assert snapshot(legacy_db, PLAN.consolidated_schemas) == snapshot(read_only(template_4b.dsn), PLAN.consolidated_schemas)
    with psycopg.connect(legacy_db) as conn:
        rows = ledger.rows(conn, PLAN, "phase = '4B' AND kind = 'step'")
        assert {r["name"] for r in rows} == {s.name for s in PLAN.steps if s.action != "delete"}
        assert {r["run_id"] for r in rows} == {ledger.latest(conn, PLAN, phase="4B", kind="gate")["run_id"]}
        for r in rows:
            assert r["status"] == "success" and r["source_checksum"] == r["target_checksum"], r["name"]
        gates = ledger.rows(conn, PLAN, "kind = 'gate'")
        assert [(g["phase"], g["status"], g["run_id"][:8]) for g in gates] == [
            ("4A", "success", "manual__"), ("4B", "success", "manual__")]
        assert {g["triggered_by"] for g in gates} == {"dag_test"}


def test_4b_dag_refuses_without_a_passed_4a_gate_and_its_gate_refuses_too(legacy_db, run_dag):
    """The guard fails the run; gate_4B (trigger rule all_done) still runs, and refuses too:
    no step ran, no gate was recorded."""
    assert run_dag("phase4b_data_migration", legacy_db) == "failed"
    _, states = task_states("phase4b_data_migration")
    assert states["require_4A_gate"] == "failed"
    assert states["gate_4B"] == "failed"  # it ran (all_done) and refused; not upstream_failed
    steps = {task: state for task, state in states.items() if task.rsplit(".", 1)[-1] in steps_4b()}
    assert len(steps) == len(steps_4b()) and set(steps.values()) == {"upstream_failed"}
    with psycopg.connect(legacy_db) as conn:
        assert conn.execute("SELECT to_regclass('raw_data.sbr_raw_html')").fetchone()[0] is None
        if conn.execute("SELECT to_regclass('operational.consolidation_ledger')").fetchone()[0]:  # (the lease's)
            assert ledger.rows(conn, PLAN, "phase = '4B' AND kind IN ('step', 'gate')") == []


# ------------------------------------------------------------------ the migrated data
def test_4a_4b_move_every_row_exactly(ro_4b):
    with psycopg.connect(ro_4b) as conn:
        for step in COPIES:
            if step.source == "splits.games":
                continue  # renamed/cast columns: checked below
            src = table_md5(conn, step.source)
            tgt = table_md5(conn, step.target)
            assert src == tgt, f"{step.source} -> {step.target}"
            assert tgt[1] == step.stated_rows, step.target
        # the mapped copy: rename, cast text -> bigint, default for NULL sources
        src = conn.execute("SELECT md5(string_agg(ROW(id, game_id::bigint, game_date, home, away, "
                           "coalesce(source, 'splits'), created_at)::text, ',' ORDER BY id)) FROM splits.games").fetchone()
        tgt = conn.execute("SELECT md5(string_agg(ROW(id, external_game_id, game_date, home_team, away_team, "
                           "data_source, created_at)::text, ',' ORDER BY id)) FROM core_betting.supplementary_games").fetchone()
        assert src == tgt
        assert conn.execute("SELECT count(*) FROM core_betting.supplementary_games").fetchone()[0] == 252
        # a view snapshot holds the view's rows; a recreated view returns the same rows as the legacy one
        assert table_md5(conn, "action.games_with_teams") == table_md5(conn, "core_betting.action_network_games_enhanced")
        assert table_md5(conn, "backtesting.recent_config_changes") == table_md5(conn, "operational.recent_config_changes")
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'operational.recent_config_changes'::regclass"
                            ).fetchone()[0] == "v"
        # foreign keys re-pointed at the targets, including the cross-schema one
        fks = dict(conn.execute(
            "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND connamespace IN (SELECT oid FROM pg_namespace WHERE nspname IN "
            "('raw_data','core_betting','operational','analytics'))").fetchall())
        assert fks["raw_data.sbr_parsed_games"] == "raw_data.sbr_raw_html"
        assert fks["operational.pre_game_recommendations"] == "core_betting.game_outcomes"
        assert fks["core_betting.action_network_games"] == "core_betting.teams"
        # the ledger saw every step, with reconciling counts and equal checksums
        rows = ledger.rows(conn, PLAN, "phase = '4B' AND kind = 'step'")
        assert {r["name"] for r in rows} == {s.name for s in PLAN.steps if s.action != "delete"}
        for r in rows:
            assert r["status"] == "success" and r["source_checksum"] == r["target_checksum"], r["name"]
            assert r["rows_read"] == r["rows_inserted"] + r["rows_merged"] + r["rows_quarantined"] + \
                r["details"]["already_present"]
        gates = ledger.rows(conn, PLAN, "kind = 'gate'")
        assert [(g["phase"], g["status"]) for g in gates] == [("4A", "success"), ("4B", "success")]


def test_teams_are_enriched_not_multiplied(ro_4b):
    with psycopg.connect(ro_4b) as conn:
        n, enriched, formatted = conn.execute(
            "SELECT count(*), count(action_network_id), count(display_name) FROM core_betting.teams").fetchone()
        assert (n, enriched, formatted) == (30, 30, 30)
        same = conn.execute(
            "SELECT count(*) FROM core_betting.teams t JOIN action.dim_teams d ON d.abbr = t.abbreviation "
            "WHERE t.action_network_id = d.action_network_id AND t.action_team_id = d.team_id "
            "AND t.logo_url IS NOT DISTINCT FROM d.logo_url").fetchone()[0]
        assert same == 30
        # differing names are conflicts: recorded, target kept
        conflicts = conn.execute(
            "SELECT key->>'abbreviation', target_value, source_value, resolution "
            "FROM operational.consolidation_conflicts ORDER BY 1").fetchall()
        assert len(conflicts) == 2 and all(c[3] == "target kept" for c in conflicts)
        for abbr, target_value, _, _ in conflicts:
            assert conn.execute("SELECT name FROM core_betting.teams WHERE abbreviation = %s",
                                (abbr,)).fetchone()[0] == target_value


def test_union_keeps_provenance_without_collisions(ro_4b):
    with psycopg.connect(ro_4b) as conn:
        by_source = dict(conn.execute(
            "SELECT source_table, count(*) FROM operational.strategy_configurations GROUP BY 1").fetchall())
        assert by_source == {"tracking.active_strategy_configs": 20, "backtesting.strategy_configurations": 36}
        assert conn.execute("SELECT count(DISTINCT config_id) FROM operational.strategy_configurations").fetchone()[0] == 56
        for legacy, extra in (("tracking.active_strategy_configs", "updated_at"),
                              ("backtesting.strategy_configurations", "min_roi")):
            missing = conn.execute(sql.SQL(
                "SELECT count(*) FROM {} s WHERE NOT EXISTS (SELECT 1 FROM operational.strategy_configurations t "
                "WHERE t.source_table = %s AND t.source_key = s.id::text AND t.strategy_name = s.strategy_name "
                "AND t.config = s.config AND t.{} IS NOT DISTINCT FROM s.{})").format(
                q(legacy), sql.Identifier(extra), sql.Identifier(extra)), (legacy,)).fetchone()[0]
            assert missing == 0, legacy


def test_4b_twice_gives_identical_targets(db_4b):
    with psycopg.connect(db_4b) as conn:
        before = {t: table_md5(conn, t) for t in TARGETS}
    assert engine_4b(db_4b, run_id="second-run", gate=False) == {}
    with psycopg.connect(db_4b) as conn:
        after = {t: table_md5(conn, t) for t in TARGETS}
        assert after == before
        runs = conn.execute("SELECT count(DISTINCT run_id) FROM operational.consolidation_ledger "
                            "WHERE phase = '4B' AND kind = 'step'").fetchone()[0]
        assert runs == 2
        # keyed steps insert nothing the second time; the keyless view snapshot is refreshed whole
        inserted = dict(conn.execute(
            "SELECT name, rows_inserted FROM operational.consolidation_ledger WHERE phase = '4B' AND kind = 'step' "
            "AND run_id = 'second-run'").fetchall())
        assert inserted.pop("copy__action__games_with_teams") == 15
        assert set(inserted.values()) == {0}


def test_targets_survive_dropping_the_legacy_schemas(db_4b):
    targets = sorted({s.target for s in PLAN.migrating_steps() if not s.is_recreated_view})
    with psycopg.connect(db_4b) as conn:
        defaults_before = conn.execute(
            "SELECT count(*) FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid "
            "WHERE c.relnamespace::regnamespace::text IN ('raw_data','core_betting','analytics','operational')"
        ).fetchone()[0]
        for schema in PLAN.legacy_schemas:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        conn.commit()
        defaults_after = conn.execute(
            "SELECT count(*) FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid "
            "WHERE c.relnamespace::regnamespace::text IN ('raw_data','core_betting','analytics','operational')"
        ).fetchone()[0]
        assert defaults_after == defaults_before
        results = [probe_insert(conn, *t.split(".")) for t in targets]
        failures = [(r.table, r.error) for r in results if not r.ok]
        assert not failures
        keyed = {r.table: r.key for r in results if r.key}
        assert keyed["raw_data.sbr_parsed_games"]["id"] > 19436  # the sequence is past the migrated keys
        assert keyed["operational.strategy_configurations"]["config_id"] > 56
        # the probes were rolled back
        assert conn.execute("SELECT count(*) FROM raw_data.sbr_parsed_games").fetchone()[0] == 19436


# ------------------------------------------------------------------ failures
DAMAGE = {"core_betting.game_outcomes": "UPDATE core_betting.game_outcomes SET home_score = home_score + 1 WHERE id = 5",
          "operational.migration_log": "DELETE FROM operational.migration_log WHERE id = 3"}


@pytest.fixture(scope="module")
def failed_4b(make_session_db, template_4a, tmp_path_factory):
    """4B on a copy of the 4A stage where one legacy value cannot be cast; afterwards two other
    targets are damaged; then gate_4B, once (as the DAG runs it after a failed step): (dsn,
    failed steps, GateFailed)."""
    dsn = make_session_db(template=template_4a.name)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE splits.games SET game_id = 'test_sharp_action_777' WHERE id = 17")
    with state_folder(tmp_path_factory.mktemp("failed-4b")):
        failed = engine_4b(dsn, gate=False)
        with psycopg.connect(dsn) as conn:
            for table, damage in DAMAGE.items():
                assert conn.execute(damage).rowcount == 1, f"the damage must hit a row of {table}"
        with psycopg.connect(dsn) as conn, pytest.raises(GateFailed) as err:
            api.gate(conn, dsn, PLAN, "4B", run_id="r-4b", user="test")
    return dsn, failed, err.value


def test_uncastable_row_is_quarantined_and_fails_the_gate(failed_4b):
    dsn, failed, _ = failed_4b
    assert list(failed) == ["copy__splits__games"] and "quarantined" in str(failed["copy__splits__games"])
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT step, original, reason FROM operational.consolidation_quarantine").fetchall()
        assert len(rows) == 1
        step, original, reason = rows[0]
        assert step == "copy__splits__games" and original["id"] == 17
        assert original["game_id"] == "test_sharp_action_777" and "bigint" in reason
        # every other row still arrived; the bad one is not lost, it is in quarantine
        assert conn.execute("SELECT count(*) FROM core_betting.supplementary_games").fetchone()[0] == 251
        step_row = ledger.latest(conn, PLAN, phase="4B", kind="step", name="copy__splits__games")
        assert step_row["status"] == "failed" and "quarantined" in step_row["message"]
        gate = ledger.latest(conn, PLAN, phase="4B", kind="gate")
        assert gate["status"] == "failed" and gate["run_id"] == "r-4b"
        assert "core_betting.supplementary_games" in gate["message"] and "quarantined" in gate["message"]
        # and 4C refuses to start on it
        with pytest.raises(phases.PhaseRefused, match=r"latest 4B gate \(run r-4b"):
            phases.require_gate(conn, PLAN, "4C")


def test_gate_fails_and_names_each_damaged_table(failed_4b):
    _, _, err = failed_4b
    summary = str(err)
    failed = {(r.check.table, r.check.name) for r in err.result.failures()}
    for table in DAMAGE:
        assert table in summary, table
        assert (table, "rows_present") in failed
    assert "FAILED" in summary
    # nothing else is blamed: the damaged targets and the one with a quarantined row
    assert {t for t, _ in failed} == set(DAMAGE) | {"core_betting.supplementary_games"}


def test_quarantine_threshold_lets_a_step_pass(db_4a):
    import yaml
    from consolidation.core import config
    from consolidation.core.plan import parse_plan

    raw = yaml.safe_load(open(config.DEFAULT_PLAN))
    next(s for s in raw["steps"] if s["source"] == "splits.games")["quarantine_threshold"] = 1
    plan = parse_plan(raw)
    with psycopg.connect(db_4a) as conn:  # the 4A stage: same targets (the threshold changes no DDL)
        conn.execute("UPDATE splits.games SET game_id = 'n/a' WHERE id = 3")
        conn.commit()
        result = run_step(conn, plan, "copy__splits__games", run_id="t", user="test")
    assert (result.read, result.inserted, result.quarantined, result.path) == (252, 251, 1, "per-row")


def test_existing_target_with_other_columns_stops_4a(legacy_db):
    with psycopg.connect(legacy_db) as conn:
        conn.execute("CREATE TABLE core_betting.action_network_games (id integer PRIMARY KEY, "
                     "action_network_game_id text, kickoff timestamptz)")
        conn.commit()
        # the DAG's first task refuses (the inventory names the drift) ...
        blocked = api.inventory(conn, PLAN).failure
        assert isinstance(blocked, InventoryBlocked) and "core_betting.action_network_games" in str(blocked)
        # ... and the group that would create it refuses with a column-by-column diff
        with pytest.raises(extend.TargetConflict) as err:
            extend.extend_group(conn, PLAN, "action", run_id="t", user="test")
        text = str(err.value)
        assert "core_betting.action_network_games already exists and differs" in text
        assert "action_network_game_id: core_betting.action_network_games has text, the plan gives integer" in text
        assert "start_time: missing" in text
        # nothing was changed in the existing table, and no gate passed
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = "
                                           "'core_betting.action_network_games'::regclass AND attnum > 0")]
        assert cols == ["id", "action_network_game_id", "kickoff"]
        assert ledger.latest(conn, PLAN, phase="4A", kind="gate") is None


def test_4b_refuses_without_a_passed_4a_gate(legacy_db):
    with psycopg.connect(legacy_db) as conn:
        with pytest.raises(phases.PhaseRefused, match="no 4A gate has run yet.*trigger phase4a_schema_extension first"):
            api.require_gate(conn, PLAN, "4B")
        # a failed 4A gate is named with its run
        extend.ensure_schemas(conn, PLAN, run_id="r-failed", user="test")
        ledger.record(conn, PLAN, status="failed", message="gate 4A FAILED: 1 of 2 checks", run_id="r-failed",
                      phase="4A", kind="gate", name="gate_4A")
        conn.commit()
        with pytest.raises(phases.PhaseRefused, match="latest 4A gate \\(run r-failed"):
            api.require_gate(conn, PLAN, "4B")
        with pytest.raises(phases.PhaseRefused, match="latest 4A gate \\(run r-failed"):
            api.gate(conn, legacy_db, PLAN, "4B", run_id="r-4b", user="test")  # gate_4B refuses as well
        assert ledger.latest(conn, PLAN, phase="4B", kind="gate") is None
