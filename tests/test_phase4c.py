"""Phase 4C: the table registry services read, and the smoke queries that prove it.

The DAG runs once (on a copy of the 4B stage); everything else runs through the engine
functions its tasks call, on clones of the 4C stage (registry written, exported, gate passed).
What is asserted is what a service owner cares about: every migrated table can be
found, never in a legacy schema, and reading a legacy name through the registry returns
exactly the legacy rows; a registry or a target that lies fails the 4C gate, by name.
"""
from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from consolidation import api
from consolidation.checks import gates as phases
from consolidation.checks.gx import GateFailed
from consolidation.core import ledger
from consolidation.phases import registry, smoke

from phase_helpers import PLAN, engine_4c, record_gate, run_gate, table_rows

DAG_ID = "phase4c_service_updates"


@pytest.fixture(scope="module")
def plan():
    return PLAN


def gate_4c(dsn: str, plan, **kw):
    return run_gate(dsn, "4C", plan, run_id="test-gate-4c", **kw)


# ------------------------------------------------------------------ the run
def test_4c_dag_registers_every_migrated_table_and_passes_its_gate(db_4b, run_dag, plan, tmp_path):
    dsn = db_4b
    assert run_dag(DAG_ID, dsn, {"export_dir": str(tmp_path)}) == "success"
    export_file = tmp_path / "registry.json"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT logical_name, physical_schema, physical_table, status, set_by_run, set_by_user, "
                            "filter_column, filter_op, filter_value FROM operational.consolidation_registry").fetchall()
        by_name = {r[0]: r for r in rows}
        # one entry per migrated legacy object, each at its planned target, none in a legacy schema
        assert set(by_name) == {s.source for s in plan.migrating_steps()} and len(rows) == 28
        for step in plan.migrating_steps():
            _, schema, table, status, run, _, *_ = by_name[step.source]
            assert (schema, table, status) == (step.target_schema, step.target_table, "consolidated"), step.source
            assert schema not in plan.legacy_schemas and run.startswith("manual__")
        assert by_name["tracking.active_strategy_configs"][6:] == ("source_table", "=", "tracking.active_strategy_configs")
        assert by_name["action.dim_teams"][6:] == ("action_team_id", "is not null", None)
        # the gate passed, with one check per smoke query, and is in the ledger for 4D
        gate = ledger.latest(conn, plan, phase="4C", kind="gate")
        assert gate["status"] == "success" and gate["run_id"] == by_name["splits.games"][4]
        names = [r["name"] for r in gate["details"]["results"]]
        assert sorted(n for n in names if n.startswith("smoke_")) == sorted(
            f"smoke_{q.name}" for q in smoke.load_queries())
        assert names.count("same_rows_as_legacy") == 28 and "export_matches_table" in names
        assert all(r["passed"] for r in gate["details"]["results"])
        # the JSON export says exactly what the table says
        doc = json.loads(export_file.read_text())
        assert doc["entries"] == registry.entries(conn, plan)
        assert [e["logical_name"] for e in doc["entries"]] == sorted(by_name)
        # services resolve every name, from the database and from the file, to the same place
        for step in plan.migrating_steps():
            from_db = registry.resolve(conn, step.source, plan=plan)
            assert from_db == registry.resolve_file(export_file, step.source)
            assert from_db.schema == step.target_schema and from_db.schema not in plan.legacy_schemas
    assert registry.resolve(dsn, "splits.games") == registry.resolve_file(export_file, "splits.games")  # by DSN


def test_resolved_names_return_the_legacy_rows(ro_4c, plan):
    """Checked here, independently of the gate: renamed, union and merge entries."""
    dsn = ro_4c
    with psycopg.connect(dsn) as conn:
        games = registry.resolve(conn, "splits.games", plan=plan)
        assert games.physical("game_id") == "external_game_id" and games.physical("home") == "home_team"
        legacy = table_rows(conn, sql.SQL("SELECT id, game_id, game_date, home, away, coalesce(source, 'splits'), "
                                          "created_at FROM splits.games"))
        assert table_rows(conn, sql.SQL("SELECT * FROM {} AS g").format(games.relation())) == legacy
        assert len(legacy) == 252
        # a union source sees its own 20 rows of the shared table, with its legacy ids
        configs = registry.resolve(conn, "tracking.active_strategy_configs", plan=plan)
        assert configs.qualified == "operational.strategy_configurations"
        got = table_rows(conn, sql.SQL("SELECT * FROM {} AS c").format(configs.relation()))
        assert got == table_rows(conn, sql.SQL("SELECT * FROM tracking.active_strategy_configs")) and len(got) == 20
        # a merge source: its key and enriched columns, under the legacy names
        teams = registry.resolve(conn, "action.dim_teams", plan=plan)
        got = table_rows(conn, sql.SQL("SELECT * FROM {} AS t").format(teams.relation()))
        assert got == table_rows(conn, sql.SQL("SELECT team_id, abbr, action_network_id, logo_url FROM action.dim_teams"))
        assert [c.name for c in teams.columns] == ["team_id", "abbr", "action_network_id", "logo_url"]
        # a service running as the application role finds and reads every table it could read before
        legacy_counts = {s.source: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(s.source_schema, s.source_table))).fetchone()[0] for s in plan.migrating_steps()}
        conn.execute("SET ROLE betting_app")
        for name, count in legacy_counts.items():
            resolved = registry.resolve(conn, name, plan=plan)
            assert conn.execute(sql.SQL("SELECT count(*) FROM {} AS x").format(resolved.relation())).fetchone()[0] \
                == count, name


def test_rerun_changes_nothing(db_4c, plan):
    with psycopg.connect(db_4c) as conn:
        before = registry.entries(conn, plan)
        for schema in plan.legacy_schemas:
            lines = registry.register_group(conn, plan, schema, run_id="second-run", user="test")
            assert all(line.endswith("(unchanged)") for line in lines)
        assert registry.entries(conn, plan) == before
        # an entry that drifted is put back, and says which run did it
        conn.execute("UPDATE operational.consolidation_registry SET physical_table = 'elsewhere' "
                     "WHERE logical_name = 'public.game_outcomes'")
        conn.commit()
        assert registry.register_group(conn, plan, "public", run_id="repair", user="test")[2] == \
            "public.game_outcomes -> core_betting.game_outcomes"
        after = {e["logical_name"]: e for e in registry.entries(conn, plan)}
        assert after["public.game_outcomes"]["set_by_run"] == "repair"
        assert after["public.sbr_raw_html"]["set_by_run"] == before[0]["set_by_run"] != "repair"


# ------------------------------------------------------------------ refusals and failures
def test_4c_refused_without_a_passed_4b_gate(db_4b, legacy_db, plan):
    with psycopg.connect(legacy_db) as conn:  # nothing migrated at all
        with pytest.raises(phases.PhaseRefused, match="no 4B gate has run yet.*phase4b_data_migration"):
            api.require_gate(conn, plan, "4C")
    record_gate(db_4b, "4B", "failed", run_id="r-4b-failed", message="gate 4B FAILED: 1 of 90 checks")
    with psycopg.connect(db_4b) as conn:  # the latest 4B gate failed: the guard and gate_4C both refuse
        for refuse in (lambda: api.require_gate(conn, plan, "4C"),
                       lambda: api.gate(conn, db_4b, plan, "4C", run_id="r-4c", user="test")):
            with pytest.raises(phases.PhaseRefused, match=r"latest 4B gate \(run r-4b-failed"):
                refuse()
        assert conn.execute("SELECT to_regclass('operational.consolidation_registry')").fetchone()[0] is None
        assert ledger.latest(conn, plan, phase="4C", kind="gate") is None
        assert ledger.rows(conn, plan, "phase = '4C'") == []


def test_broken_entries_fail_the_gate_by_name(db_4c, plan):
    with psycopg.connect(db_4c) as conn:
        conn.execute("UPDATE operational.consolidation_registry SET physical_table = 'pre_game_recs_v2' "
                     "WHERE logical_name = 'tracking.pre_game_recommendations'")
        conn.execute("UPDATE operational.consolidation_registry SET physical_schema = 'backtesting', "
                     "physical_table = 'threshold_configurations' "
                     "WHERE logical_name = 'backtesting.threshold_configurations'")
        conn.execute("REVOKE SELECT ON core_betting.game_outcomes FROM betting_app")
        conn.commit()
        with pytest.raises(registry.NotRegistered, match="points into legacy schema backtesting"):
            registry.resolve(conn, "backtesting.threshold_configurations", plan=plan)
    with pytest.raises(GateFailed) as err:
        gate_4c(db_4c, plan)
    failed = {r.check.name: r for r in err.value.result.failures()}
    assert failed["every_entry_resolves"].sample == [
        {"logical_name": "tracking.pre_game_recommendations", "points_at": "operational.pre_game_recs_v2",
         "problem": "relation does not exist"}]
    assert failed["no_entry_points_into_legacy"].sample == [
        {"logical_name": "backtesting.threshold_configurations", "points_at": "backtesting.threshold_configurations"}]
    assert {r["logical_name"] for r in failed["every_migrated_table_registered"].sample} == {
        "tracking.pre_game_recommendations", "backtesting.threshold_configurations"}
    assert failed["legacy_readers_can_read"].sample == [
        {"logical_name": "public.game_outcomes", "role": "betting_app", "target": "core_betting.game_outcomes",
         "missing": "SELECT"}]
    # every smoke query over the two broken entries fails too, the others pass
    smoke_failed = {n for n in failed if n.startswith("smoke_")}
    assert smoke_failed == {"smoke_tracking_pre_game_card", "smoke_backtesting_orchestrator_queue"}
    with psycopg.connect(db_4c) as conn:
        gate = ledger.latest(conn, plan, phase="4C", kind="gate")
        assert gate["status"] == "failed"
        assert "tracking.pre_game_recommendations" in gate["message"]
        assert "backtesting.threshold_configurations" in gate["message"]


def test_target_altered_after_4b_fails_the_4c_gate(db_4c, plan, state_dir):
    """4C again (as its DAG runs it: register, export, gate) after a consolidated table changed."""
    with psycopg.connect(db_4c) as conn:
        changed = conn.execute("UPDATE core_betting.game_outcomes SET home_score = home_score + 2 "
                               "WHERE game_date = (SELECT max(game_date) FROM core_betting.game_outcomes "
                               "WHERE home_score IS NOT NULL) AND home_score IS NOT NULL").rowcount
        assert changed > 0
    with pytest.raises(GateFailed):
        engine_4c(db_4c, state_dir / "export", plan, run_id="rerun-4c")
    with psycopg.connect(db_4c) as conn:
        gate = ledger.latest(conn, plan, phase="4C", kind="gate")
        assert gate["status"] == "failed" and gate["run_id"] == "rerun-4c"
        failed = {(r["name"], r["step"]) for r in gate["details"]["results"] if not r["passed"]}
        assert failed == {("smoke_public_results_board", None), ("same_rows_as_legacy", "public.game_outcomes")}
        assert "smoke_public_results_board" in gate["message"] and "only in legacy" in gate["message"]


def test_smoke_query_that_differs_is_named(db_4c, plan, tmp_path):
    """A smoke-only difference (the plan's default shows where legacy had NULL) fails by query name."""
    (tmp_path / "splits_unsourced_games.sql").write_text(
        "-- Games the splits feed delivered without a source.\n"
        "SELECT g.game_id, g.game_date FROM {{splits.games}} AS g WHERE g.source IS NULL ORDER BY g.game_id;\n")
    (tmp_path / "splits_games_per_day.sql").write_text(
        "SELECT g.game_date, count(*) FROM {{splits.games}} AS g GROUP BY g.game_date")
    with pytest.raises(GateFailed) as err:
        gate_4c(db_4c, plan, smoke_folder=tmp_path)
    failures = err.value.result.failures()
    assert [r.check.name for r in failures] == ["smoke_splits_unsourced_games"]
    assert failures[0].observed == 31  # every 8th of 252 games had no source
    assert "splits_unsourced_games.sql" in str(err.value)


# ------------------------------------------------------------------ without a database
def _export(tmp_path, entries, legacy=("public", "tracking")) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"format": registry.FORMAT, "legacy_schemas": list(legacy), "entries": entries}))
    return path


def _entry(name, schema, table, **kw):
    e = {"logical_name": name, "legacy_schema": name.split(".")[0], "physical_schema": schema,
         "physical_table": table, "status": "consolidated", "filter_column": None, "filter_op": None,
         "filter_value": None, "columns": [{"name": "id", "column": "source_key", "type": "integer",
                                            "physical_type": "text"}]}
    return e | kw


def test_resolve_file_works_without_a_database_and_refuses_legacy(tmp_path):
    path = _export(tmp_path, [
        _entry("tracking.cfg", "operational", "configs", filter_column="source_table", filter_op="=",
               filter_value="tracking.cfg"),
        _entry("public.old", "tracking", "old"),
        _entry("public.evil", "operational", "x", columns=[{"name": "id", "column": "id", "type": "int); DROP TABLE x; --",
                                                            "physical_type": "text"}]),
    ])
    r = registry.resolve_file(path, "tracking.cfg")
    assert (r.schema, r.table, r.filter.column, r.filter.value) == ("operational", "configs", "source_table", "tracking.cfg")
    assert r.relation().as_string(None) == (
        '(SELECT CAST("t"."source_key" AS integer) AS "id" FROM "operational"."configs" AS t '
        "WHERE \"t\".\"source_table\" = 'tracking.cfg')")
    with pytest.raises(registry.NotRegistered, match="points into legacy schema tracking"):
        registry.resolve_file(path, "public.old")
    with pytest.raises(registry.NotRegistered, match="unreadable type"):
        registry.resolve_file(path, "public.evil")
    with pytest.raises(registry.NotRegistered, match="public.gone is not in the registry file"):
        registry.resolve_file(path, "public.gone")
    with pytest.raises(registry.NotRegistered, match="does not exist; run phase4c_service_updates"):
        registry.resolve_file(tmp_path / "nothing.json", "tracking.cfg")


def test_export_location(monkeypatch, tmp_path):
    from consolidation.core import config

    monkeypatch.delenv(registry.EXPORT_DIR_ENV, raising=False)
    assert registry.export_path() == config.state_dir() / "registry" / "registry.json"
    monkeypatch.setenv(registry.EXPORT_DIR_ENV, str(tmp_path / "env"))
    assert registry.export_path() == tmp_path / "env" / "registry.json"
    assert registry.export_path(tmp_path / "param") == tmp_path / "param" / "registry.json"  # the DAG param wins
    (tmp_path / "env").mkdir()
    _export(tmp_path / "env", [_entry("public.x", "raw_data", "x")])
    assert registry.resolve_file(None, "public.x").qualified == "raw_data.x"


@pytest.mark.parametrize("text, message", [
    ("SELECT * FROM {{splits.games}}", r"needs an alias: write `\{\{splits.games\}\} AS x`"),
    ("SELECT * FROM splits.games AS g", "names no table"),
    ("SELECT 1 FROM {{a.b}} AS x; SELECT 2 FROM {{a.b}} AS y", "one statement per file"),
    ('SELECT 1 FROM {{"a.b}} AS x', "unterminated quoted identifier"),
    ('SELECT 1 FROM {{a.b.c}} AS x', "malformed"),
])
def test_smoke_files_are_validated(tmp_path, text, message):
    with pytest.raises(smoke.SmokeError, match=message):
        smoke.parse(text, tmp_path / "q.sql")


def test_shipped_smoke_queries_cover_every_legacy_schema(plan):
    queries = smoke.load_queries()
    covered = {n.split(".")[0] for q in queries for n in q.names}
    migrating = {s.source_schema for s in plan.migrating_steps()}
    assert migrating <= covered
    assert all(q.description for q in queries)
    for q in queries:  # every name a smoke query uses is a migrated legacy table
        assert all(plan.step_for_source(*n.split(".")).action != "delete" for n in q.names), q.name


def test_cli_resolves_from_file_and_database(template_4c, ro_4c, cli):
    out = cli("registry", "resolve", "splits.games", "--file", str(template_4c.export_file))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "splits.games -> core_betting.supplementary_games"
    assert "game_id                      external_game_id (cast from bigint)" in out.stdout
    out = cli("registry", "resolve", "public.test_table", dsn=ro_4c)
    assert out.returncode == 1 and "public.test_table is not in the registry" in out.stderr
