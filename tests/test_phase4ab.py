"""Phases 4A and 4B, run as DAGs (dag.test) against a real database built by the fixture.

What is asserted is what the owner of the database cares about: every row arrived,
byte for byte (checksums computed here, independently of the engine), nothing was
duplicated, bad rows are quarantined and stop the gate, and a refusal is a refusal.
"""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from consolidation.phases import extend
from consolidation.core import ledger
from consolidation.checks import gates as phases
from consolidation.checks.gate_4a import gate_4a_checks
from consolidation.checks.gate_4b import gate_4b_checks
from consolidation.checks.gx import GateFailed
from consolidation.phases.migrate import StepFailed, run_step
from consolidation.core.plan import load_plan
from consolidation.checks.probes import probe_insert

from conftest import dbname_of


def q(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(*map(sql.Identifier, name.split(".")))


def table_md5(conn, name: str, columns: list[str] | None = None, where: str = "TRUE") -> tuple[str, int]:
    """Order-independent digest of a table's rows over the given columns (test-side, not the engine's)."""
    cols = sql.SQL("*") if columns is None else sql.SQL(", ").join(map(sql.Identifier, columns))
    row = conn.execute(sql.SQL(
        "SELECT md5(coalesce(string_agg(h, ',' ORDER BY h), '')), count(*) "
        "FROM (SELECT md5(ROW(x.*)::text) AS h FROM (SELECT {} FROM {} WHERE " + where + ") x) y").format(
        cols, q(name))).fetchone()
    return row[0], row[1]


def engine_4a(dsn: str, plan=None) -> None:
    """4A through the engine functions the DAG tasks call (used to set up other tests fast)."""
    plan = plan or load_plan()
    with psycopg.connect(dsn) as conn:
        extend.ensure_schemas(conn, plan, run_id="setup-4a", user="test")
        for schema in plan.legacy_schemas:
            extend.extend_group(conn, plan, schema, run_id="setup-4a", user="test")
        extend.finalize(conn, plan, run_id="setup-4a", user="test")
        checks = gate_4a_checks(conn, plan)
        conn.commit()
        phases.run_phase_gate(conn, dsn, plan, "4A", checks, run_id="setup-4a", user="test")


def engine_4b(dsn: str, plan=None, run_id: str = "setup-4b") -> None:
    plan = plan or load_plan()
    with psycopg.connect(dsn) as conn:
        for step in plan.steps:
            if step.action != "delete":
                run_step(conn, plan, step.name, run_id=run_id, user="test")


def gate_4b(dsn: str, plan=None):
    plan = plan or load_plan()
    with psycopg.connect(dsn) as conn:
        checks = gate_4b_checks(conn, plan)
        conn.commit()
        return phases.run_phase_gate(conn, dsn, plan, "4B", checks, run_id="test-gate", user="test")


@pytest.fixture(scope="module")
def migrated_template(request):
    """A database migrated through 4A and 4B by the DAGs; tests clone it."""
    make_session_db = request.getfixturevalue("make_session_db")
    fixture_template = request.getfixturevalue("fixture_template")
    run_dag = request.getfixturevalue("run_dag")
    dsn = make_session_db(template=fixture_template)
    assert run_dag("phase4a_schema_extension", dsn) == "success"
    assert run_dag("phase4b_data_migration", dsn) == "success"
    return dsn


# ------------------------------------------------------------------ full run
COPIES = [s for s in load_plan().steps if s.action == "copy" and not s.is_recreated_view]


def test_4a_4b_move_every_row_exactly(migrated_template):
    plan = load_plan()
    with psycopg.connect(migrated_template) as conn:
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
        rows = ledger.rows(conn, plan, "phase = '4B' AND kind = 'step'")
        assert {r["name"] for r in rows} == {s.name for s in plan.steps if s.action != "delete"}
        for r in rows:
            assert r["status"] == "success" and r["source_checksum"] == r["target_checksum"], r["name"]
            assert r["rows_read"] == r["rows_inserted"] + r["rows_merged"] + r["rows_quarantined"] + \
                r["details"]["already_present"]
        gates = ledger.rows(conn, plan, "kind = 'gate'")
        assert [(g["phase"], g["status"]) for g in gates] == [("4A", "success"), ("4B", "success")]


def test_teams_are_enriched_not_multiplied(migrated_template):
    with psycopg.connect(migrated_template) as conn:
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


def test_union_keeps_provenance_without_collisions(migrated_template):
    with psycopg.connect(migrated_template) as conn:
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


def test_4b_twice_gives_identical_targets(migrated_template, make_db, run_dag):
    plan = load_plan()
    dsn = make_db(template=dbname_of(migrated_template))
    targets = sorted({s.target for s in plan.migrating_steps()})
    with psycopg.connect(dsn) as conn:
        before = {t: table_md5(conn, t) for t in targets}
    assert run_dag("phase4b_data_migration", dsn) == "success"
    with psycopg.connect(dsn) as conn:
        after = {t: table_md5(conn, t) for t in targets}
        assert after == before
        runs = conn.execute("SELECT count(DISTINCT run_id) FROM operational.consolidation_ledger "
                            "WHERE phase = '4B' AND kind = 'step'").fetchone()[0]
        assert runs == 2
        # keyed steps insert nothing the second time; the keyless view snapshot is refreshed whole
        inserted = dict(conn.execute(
            "SELECT name, rows_inserted FROM operational.consolidation_ledger WHERE phase = '4B' AND kind = 'step' "
            "AND run_id = (SELECT run_id FROM operational.consolidation_ledger WHERE phase = '4B' AND kind = 'step' "
            "ORDER BY id DESC LIMIT 1)").fetchall())
        assert inserted.pop("copy__action__games_with_teams") == 15
        assert set(inserted.values()) == {0}


# ------------------------------------------------------------------ failures
def test_uncastable_row_is_quarantined_and_fails_the_gate(legacy_db, run_dag):
    with psycopg.connect(legacy_db) as conn:
        conn.execute("UPDATE splits.games SET game_id = 'test_sharp_action_777' WHERE id = 17")
    engine_4a(legacy_db)
    assert run_dag("phase4b_data_migration", legacy_db) == "failed"
    plan = load_plan()
    with psycopg.connect(legacy_db) as conn:
        rows = conn.execute("SELECT step, original, reason FROM operational.consolidation_quarantine").fetchall()
        assert len(rows) == 1
        step, original, reason = rows[0]
        assert step == "copy__splits__games" and original["id"] == 17
        assert original["game_id"] == "test_sharp_action_777" and "bigint" in reason
        # every other row still arrived; the bad one is not lost, it is in quarantine
        assert conn.execute("SELECT count(*) FROM core_betting.supplementary_games").fetchone()[0] == 251
        step_row = ledger.latest(conn, plan, phase="4B", kind="step", name="copy__splits__games")
        assert step_row["status"] == "failed" and "quarantined" in step_row["message"]
        gate = ledger.latest(conn, plan, phase="4B", kind="gate")
        assert gate["status"] == "failed"
        assert "core_betting.supplementary_games" in gate["message"] and "quarantined" in gate["message"]


def test_quarantine_threshold_lets_a_step_pass(legacy_db):
    import yaml
    from consolidation.core import config
    from consolidation.core.plan import parse_plan

    raw = yaml.safe_load(open(config.DEFAULT_PLAN))
    next(s for s in raw["steps"] if s["source"] == "splits.games")["quarantine_threshold"] = 1
    plan = parse_plan(raw)
    with psycopg.connect(legacy_db) as conn:
        conn.execute("UPDATE splits.games SET game_id = 'n/a' WHERE id = 3")
    engine_4a(legacy_db, plan)
    with psycopg.connect(legacy_db) as conn:
        result = run_step(conn, plan, "copy__splits__games", run_id="t", user="test")
    assert (result.read, result.inserted, result.quarantined, result.path) == (252, 251, 1, "per-row")


@pytest.mark.parametrize("damage", ["UPDATE core_betting.game_outcomes SET home_score = home_score + 1 WHERE id = 5",
                                    "DELETE FROM operational.migration_log WHERE id = 3"])
def test_gate_fails_and_names_the_table_after_damage(migrated_template, make_db, damage):
    dsn = make_db(template=dbname_of(migrated_template))
    gate_4b(dsn)  # passes before the damage
    with psycopg.connect(dsn) as conn:
        touched = conn.execute(damage).rowcount
    assert touched == 1, "the damage must hit a row"
    with pytest.raises(GateFailed) as err:
        gate_4b(dsn)
    table = "core_betting.game_outcomes" if "game_outcomes" in damage else "operational.migration_log"
    summary = str(err.value)
    assert table in summary and "FAILED" in summary
    failed = {(r.check.table, r.check.name) for r in err.value.result.failures()}
    assert (table, "rows_present") in failed


def test_existing_target_with_other_columns_stops_4a(legacy_db, run_dag):
    with psycopg.connect(legacy_db) as conn:
        conn.execute("CREATE TABLE core_betting.action_network_games (id integer PRIMARY KEY, "
                     "action_network_game_id text, kickoff timestamptz)")
    assert run_dag("phase4a_schema_extension", legacy_db) == "failed"
    plan = load_plan()
    with psycopg.connect(legacy_db) as conn:
        with pytest.raises(extend.TargetConflict) as err:
            extend.extend_group(conn, plan, "action", run_id="t", user="test")
        text = str(err.value)
        assert "core_betting.action_network_games already exists and differs" in text
        assert "action_network_game_id: core_betting.action_network_games has text, the plan gives integer" in text
        assert "start_time: missing" in text
        # nothing was changed in the existing table, and no gate passed
        cols = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = "
                                           "'core_betting.action_network_games'::regclass AND attnum > 0")]
        assert cols == ["id", "action_network_game_id", "kickoff"]
        assert ledger.latest(conn, plan, phase="4A", kind="gate") is None


def test_4b_refuses_without_a_passed_4a_gate(legacy_db, run_dag):
    assert run_dag("phase4b_data_migration", legacy_db) == "failed"
    plan = load_plan()
    with psycopg.connect(legacy_db) as conn:
        with pytest.raises(phases.PhaseRefused, match="no 4A gate has run yet.*trigger phase4a_schema_extension first"):
            phases.require_gate(conn, plan, "4B")
        # nothing was migrated
        assert conn.execute("SELECT to_regclass('raw_data.sbr_raw_html')").fetchone()[0] is None
        # a failed 4A gate is named with its run
        extend.ensure_schemas(conn, plan, run_id="r-failed", user="test")
        ledger.record(conn, plan, status="failed", message="gate 4A FAILED: 1 of 2 checks", run_id="r-failed",
                      phase="4A", kind="gate", name="gate_4A")
        conn.commit()
        with pytest.raises(phases.PhaseRefused, match="latest 4A gate \\(run r-failed"):
            phases.require_gate(conn, plan, "4B")


def test_targets_survive_dropping_the_legacy_schemas(migrated_template, make_db):
    plan = load_plan()
    dsn = make_db(template=dbname_of(migrated_template))
    targets = sorted({s.target for s in plan.migrating_steps() if not s.is_recreated_view})
    with psycopg.connect(dsn) as conn:
        defaults_before = conn.execute(
            "SELECT count(*) FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid "
            "WHERE c.relnamespace::regnamespace::text IN ('raw_data','core_betting','analytics','operational')"
        ).fetchone()[0]
        for schema in plan.legacy_schemas:
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
