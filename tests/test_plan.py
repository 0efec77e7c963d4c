"""The plan loader: the seed plan loads; each broken plan is rejected naming the entry and the fix."""
from __future__ import annotations

import copy

import pytest
import yaml

from consolidation.core import config
from consolidation.core.plan import PlanError, load_plan, parse_plan


def seed() -> dict:
    with open(config.DEFAULT_PLAN, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_seed_plan_loads_completely():
    plan = load_plan()
    assert len(plan.steps) == 34
    assert list(plan.consolidated_schemas) == ["raw_data", "core_betting", "analytics", "operational"]
    counts = {s: len(plan.steps_for_schema(s)) for s in plan.legacy_schemas}
    assert counts == {"public": 11, "action": 4, "splits": 2, "tracking": 4, "validation": 1, "backtesting": 12}
    # the seed's stated totals disagree with its own lists; both are kept
    assert plan.legacy_schemas["public"].stated_rows == 22098 and plan.listed_rows("public") == 22016
    assert plan.legacy_schemas["backtesting"].stated_rows == 333 and plan.listed_rows("backtesting") == 175
    actions = {s.source: s.action for s in plan.steps}
    assert actions["action.dim_teams"] == actions["action.teams_formatted"] == "merge"
    assert actions["tracking.active_strategy_configs"] == actions["backtesting.strategy_configurations"] == "union"
    assert sum(1 for a in actions.values() if a == "delete") == 6
    assert {s.source for s in plan.steps if s.object == "view"} == {
        "action.teams_formatted", "action.games_with_teams", "backtesting.recent_config_changes"}
    games = plan.step_for_source("splits", "games")
    assert games.columns["external_game_id"].cast == "bigint"
    assert len(plan.sha256) == 64


def test_plan_selected_by_environment(tmp_path, monkeypatch):
    other = seed()
    other["plan"] = "another"
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    monkeypatch.setenv("CONSOLIDATION_PLAN", str(path))
    assert load_plan().name == "another"


def _reject(raw: dict, *fragments: str):
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    for f in fragments:
        assert f in str(err.value), str(err.value)
    return str(err.value)


def test_unknown_action():
    raw = seed()
    raw["steps"][0]["action"] = "move"
    _reject(raw, "steps[0] (public.sbr_raw_html).action is 'move'", "use one of copy, merge, union, delete")


def test_unknown_source_schema():
    raw = seed()
    raw["steps"][0]["source"] = "legacy_x.sbr_raw_html"
    _reject(raw, "step 1", "'legacy_x' is not a legacy schema", "legacy_schemas")


def test_target_outside_consolidated_schemas():
    raw = seed()
    raw["steps"][0]["target"] = "public.sbr_raw_html_v2"
    _reject(raw, "step 1 (public.sbr_raw_html)", "outside the consolidated schemas", "raw_data")


def test_two_sources_into_one_target_without_rule():
    raw = seed()
    step = next(s for s in raw["steps"] if s["source"] == "public.migration_log_phase2b")
    step["target"] = "operational.migration_log"
    _reject(raw, "two sources feed operational.migration_log", "public.migration_log, public.migration_log_phase2b",
            "union", "merge")


def test_union_sources_must_agree():
    raw = seed()
    step = next(s for s in raw["steps"] if s["source"] == "backtesting.strategy_configurations")
    step["provenance"] = {"table": "origin", "key": "origin_key"}
    _reject(raw, "union into operational.strategy_configurations", "disagree")


def test_table_listed_twice():
    raw = seed()
    raw["steps"].append(copy.deepcopy(raw["steps"][0]))
    raw["steps"][-1]["target"] = "raw_data.other"
    _reject(raw, "public.sbr_raw_html is already listed as step 1", "list each legacy table once")


def test_unknown_key_in_step():
    raw = seed()
    raw["steps"][0]["targte"] = "raw_data.x"
    _reject(raw, "step 1", "unknown key(s) targte")


def test_merge_without_key():
    raw = seed()
    step = next(s for s in raw["steps"] if s["source"] == "action.dim_teams")
    del step["key"]
    _reject(raw, "steps[11] (action.dim_teams): missing `key` (the business key, {target_column: source_column})")


def test_target_colliding_with_tool_table():
    raw = seed()
    raw["steps"][0]["target"] = "operational.consolidation_ledger"
    _reject(raw, "one of the tool's own tables")


def test_broken_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("steps: [\n  - source: x\n")
    with pytest.raises(PlanError, match="not valid YAML"):
        load_plan(path)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError, match="does not exist: set CONSOLIDATION_PLAN"):
        load_plan(tmp_path / "nope.yaml")


def test_mapping_to_missing_column_is_rejected_against_the_catalog(legacy_db):
    """Column existence needs the catalog: the inventory reports it as blocking."""
    from consolidation.checks.inventory import take_inventory

    raw = seed()
    step = next(s for s in raw["steps"] if s["source"] == "splits.games")
    step["columns"]["home_team"] = "home_tm"          # no such source column
    step["columns"]["visitor"] = "away"               # no such target column
    plan = parse_plan(raw)
    inv = take_inventory(plan=plan, dsn=legacy_db)
    messages = [f.message for f in inv.blocking if f.code == "column_drift"]
    assert any("'home_tm', which splits.games does not have" in m for m in messages), messages
    assert any("core_betting.supplementary_games.visitor, which does not exist" in m for m in messages), messages
    assert not inv.ok
