"""Inventory of the fixture against the plan: views, cross-schema dependencies, drift, unplanned objects."""
from __future__ import annotations

import json

import psycopg
import yaml

from consolidation.core import config
from consolidation.checks.inventory import take_inventory
from consolidation.core.plan import parse_plan


def codes(inv, code):
    return {f.object: f for f in inv.findings if f.code == code}


def test_fixture_inventory_is_clean_but_reports_the_plans_arithmetic(legacy_db):
    inv = take_inventory(dsn=legacy_db)
    assert inv.ok, [f.message for f in inv.blocking]
    kinds = {f"{o.schema}.{o.name}": o.kind for o in inv.objects}
    assert [k for k, v in kinds.items() if v == "view"] == [
        "action.teams_formatted", "action.games_with_teams", "backtesting.recent_config_changes"]
    rows = {f"{o.schema}.{o.name}": o.rows for o in inv.objects}
    assert rows["public.sbr_parsed_games"] == 19436 and rows["action.teams_formatted"] == 30
    bad = codes(inv, "plan_inconsistent")
    assert "22,098" in bad["public"].message and "22,016" in bad["public"].message
    assert "333" in bad["backtesting"].message and "175" in bad["backtesting"].message
    assert inv.schema_totals["public"]["actual_rows"] == 22016
    # grants to the application role are inventoried
    grants = {f"{o.schema}.{o.name}": o.grants for o in inv.objects}
    assert any(g.startswith("betting_app:") for g in grants["public.game_outcomes"])


def test_dependencies_including_cross_schema(legacy_db):
    inv = take_inventory(dsn=legacy_db)
    deps = {(d["kind"], d["dependent"], d["referenced"]): d for d in inv.dependencies}
    assert ("foreign_key", "tracking.pre_game_recommendations", "public.game_outcomes") in deps
    assert deps[("foreign_key", "tracking.pre_game_recommendations", "public.game_outcomes")]["crosses_schemas"]
    assert ("foreign_key", "public.sbr_parsed_games", "public.sbr_raw_html") in deps
    assert ("view", "action.games_with_teams", "action.fact_games") in deps
    assert ("sequence_owner", "public.sbr_raw_html_id_seq", "public.sbr_raw_html") in deps


def test_unplanned_table_warns_and_blocks_only_its_schemas_drop(legacy_db):
    with psycopg.connect(legacy_db) as conn:
        conn.execute("CREATE TABLE splits.line_history (id serial PRIMARY KEY, line numeric)")
        conn.execute("INSERT INTO splits.line_history (line) SELECT generate_series(1, 7)")
    inv = take_inventory(dsn=legacy_db)
    assert inv.ok  # 4A to 4C go on; 4D does not drop splits (checks.legacy_objects)
    f = codes(inv, "unplanned_object")["splits.line_history"]
    assert f.severity == "warning" and f.message == (
        "splits.line_history (table) is not in the plan: add `objects: - {name: splits.line_history, "
        "drop: reason}` or `recreate: schema`")
    assert "4D does not drop splits" in f.fix
    # its sequence goes with it (owned by the table), not reported on its own
    assert "splits.line_history_id_seq" not in codes(inv, "unplanned_object")


def test_missing_table_and_view_where_plan_expects_table(legacy_db):
    raw = yaml.safe_load(open(config.DEFAULT_PLAN))
    step = next(s for s in raw["steps"] if s["source"] == "action.games_with_teams")
    del step["object"], step["view_mode"]  # the seed plan calls it a table
    with psycopg.connect(legacy_db) as conn:
        conn.execute("DROP TABLE public.test_table")
    inv = take_inventory(plan=parse_plan(raw), dsn=legacy_db)
    mismatch = codes(inv, "kind_mismatch")["action.games_with_teams"]
    assert mismatch.severity == "blocking" and "it is a view" in mismatch.message
    assert "object: view" in mismatch.fix
    assert codes(inv, "missing_object")["public.test_table"].severity == "blocking"


def test_row_count_drift_is_a_warning(legacy_db):
    with psycopg.connect(legacy_db) as conn:
        conn.execute("DELETE FROM public.benchmark_test WHERE id <= 3")
    inv = take_inventory(dsn=legacy_db)
    f = codes(inv, "row_count_drift")["public.benchmark_test"]
    assert f.severity == "warning" and "500" in f.message and "497" in f.message
    assert inv.ok


def test_cli_table_json_and_exit_codes(legacy_db, cli):
    out = cli("inventory", dsn=legacy_db)
    assert out.returncode == 0, out.stderr
    assert "public.sbr_parsed_games" in out.stdout and "19,436" in out.stdout
    assert "Result: OK" in out.stdout
    js = cli("inventory", "--json", dsn=legacy_db)
    data = json.loads(js.stdout)
    assert data["ok"] is True and len(data["objects"]) == 34
    with psycopg.connect(legacy_db) as conn:
        conn.execute("CREATE TABLE backtesting.scratch_notes (note text)")  # unplanned: a warning (4D only)
    warned = cli("inventory", dsn=legacy_db)
    assert warned.returncode == 0 and "backtesting.scratch_notes (table) is not in the plan" in warned.stdout
    with psycopg.connect(legacy_db) as conn:
        conn.execute("DROP TABLE public.test_table")  # a planned table that is gone: blocks
    blocked = cli("inventory", dsn=legacy_db)
    assert blocked.returncode == 1
    assert "public.test_table" in blocked.stdout and "BLOCKED" in blocked.stdout


def test_unreachable_database_is_one_line(run_cli):
    out = run_cli("inventory", dsn="postgresql://someone:hunter2@127.0.0.1:1/nowhere")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "hunter2" not in lines[0] and "***" in lines[0]
