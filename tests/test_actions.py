"""Step actions own their kind of step: the registry, the interface, the plan keys each accepts.

No database: the plan parser, the registry in core.plan, and the answers each action gives
(gate checks, which steps get no_unexpected_rows) on specs built by hand.
"""
from __future__ import annotations

import ast
import copy
import inspect
from pathlib import Path

import pytest
import yaml

from consolidation import actions
from consolidation.actions.base import TARGET_KEYS, Action
from consolidation.actions.copy import CopyAction
from consolidation.core import config
from consolidation.core import plan as plan_mod
from consolidation.core.plan import PlanError, action_of, parse_plan
from consolidation.core.spec import TargetSpec

pytestmark = pytest.mark.unit

PKG = Path(actions.__file__).resolve().parents[1]
COMMON = {"source", "action", "rows", "object", "view_mode", "quarantine_threshold"}

# The interface (actions/base.py's docstring), every member an action may be asked for.
INTERFACE = {
    "plan": ["name", "in_plan", "described_as", "plan_keys", "required_keys", "resolve", "refused_key",
             "missing_key", "parse", "shared_target_rule", "shared_target_problem", "catalog_problems"],
    "target": ["has_target", "flows", "fill_spec", "target_key", "new_target", "fk_columns", "fk_problem",
               "checks_flow_type", "requires_every_column"],
    "moves": ["moves_rows", "verify_path", "validate", "pre_statements", "statement", "upstream"],
    "proves": ["compared_columns", "target_filter", "projection", "compared_description", "owns_target_rows",
               "gate_checks"],
    "registers": ["registry_columns", "registry_filter", "inventory_notes"],
    "rollback": ["undo_note"],
}


def seed() -> dict:
    with open(config.DEFAULT_PLAN, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def entry(raw: dict, source: str) -> dict:
    return next(s for s in raw["steps"] if s["source"] == source)


# One seed step per plan action (and the recreated view, copy's variant).
EXAMPLES = {
    "copy": "public.sbr_raw_html",
    "merge": "action.dim_teams",
    "union": "backtesting.strategy_configurations",
    "delete": "public.test_table",
    "recreate_view": "backtesting.recent_config_changes",
}
SAMPLE_VALUES = {
    "target": "raw_data.somewhere", "columns": {"a": "b"}, "add_columns": {"a": {"type": "integer"}},
    "ignore": {"a": "not needed"}, "freshness": {"column": "a", "max_age_hours": 1}, "key": {"a": "b"},
    "enrich": ["a"], "target_key": "id", "provenance": {"table": "t", "key": "k"}, "definition": "SELECT 1",
}


# -- the registry ----------------------------------------------------------------
def test_every_action_is_registered_with_core_and_plan_actions_keep_their_order():
    assert plan_mod.registered_actions() == list(actions.ACTIONS.values())
    assert plan_mod.plan_actions() == ["copy", "merge", "union", "delete"]
    assert set(actions.ACTIONS) == set(EXAMPLES)
    for name, action in actions.ACTIONS.items():
        assert action.name == name and plan_mod.named_action(name) is action


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_action_implements_the_interface(name):
    action = actions.ACTIONS[name]
    assert isinstance(action, Action)
    for part, members in INTERFACE.items():
        for member in members:
            assert hasattr(action, member), f"{name} lacks {member} ({part})"
    for member in [m for ms in INTERFACE.values() for m in ms]:
        value = getattr(Action, member)
        if inspect.isfunction(value):
            assert callable(getattr(action, member)), member
    assert action.described_as != "?" and action.name != "?"
    assert set(action.required_keys) <= set(action.plan_keys), "a required key must be accepted"
    assert not set(action.plan_keys) & COMMON
    overridden = {k for c in type(action).__mro__ if c not in (Action, object) for k in vars(c)}
    if action.has_target:
        # it says how its target is made: new_target (or all of fill_spec) ...
        assert {"new_target", "fill_spec"} & overridden, f"{name}: how is its target built?"
        # ... and moves its rows, or says that 4B only verifies it
        if action.moves_rows:
            assert "statement" in overridden, f"{name}: no statement"
        else:
            assert action.verify_path, f"{name}: moves nothing, but no StepResult path says so"
    else:
        assert not action.moves_rows and action.plan_keys.isdisjoint({"target"})


def test_the_interface_is_written_down_in_base():
    doc = inspect.getmodule(Action).__doc__
    for members in INTERFACE.values():
        for member in members:
            assert member in doc, f"actions/base.py's docstring does not mention {member}"


def test_every_step_of_the_seed_plan_resolves_to_an_action():
    plan = plan_mod.load_plan()
    found = {s.source: action_of(s).name for s in plan.steps}
    for name, source in EXAMPLES.items():
        assert found[source] == name
    # the plan still says copy for the recreated view; its step name (and ledger rows) are copy's
    view = plan.step_for_source("backtesting", "recent_config_changes")
    assert view.action == "copy" and view.name == "copy__backtesting__recent_config_changes"
    assert [s.name for s in plan.steps if s.target and not s.migrates_rows] == [view.name]


# -- plan keys ---------------------------------------------------------------------
def _cases():
    all_keys = set(SAMPLE_VALUES)
    for name, source in EXAMPLES.items():
        for key in sorted(all_keys - set(actions.ACTIONS[name].plan_keys)):
            yield name, source, key


@pytest.mark.parametrize("name,source,key", list(_cases()))
def test_the_parser_refuses_a_key_the_action_does_not_accept_naming_step_and_key(name, source, key):
    raw = seed()
    e = entry(raw, source)
    e[key] = copy.deepcopy(SAMPLE_VALUES[key])
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    index = raw["steps"].index(e) + 1
    assert f"step {index} ({source})" in str(err.value), str(err.value)
    assert f"`{key}`" in str(err.value), str(err.value)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_parser_refuses_a_step_without_a_required_key(name):
    for key in actions.ACTIONS[name].required_keys:
        raw = seed()
        e = entry(raw, EXAMPLES[name])
        del e[key]
        with pytest.raises(PlanError) as err:
            parse_plan(raw)
        assert EXAMPLES[name] in str(err.value) and f"`{key}" in str(err.value), str(err.value)


def test_refusals_say_which_steps_accept_the_key():
    raw = seed()
    entry(raw, "public.sbr_raw_html")["enrich"] = ["x"]
    with pytest.raises(PlanError, match=r"step 1 \(public.sbr_raw_html\): `enrich` applies to merge steps only"):
        parse_plan(raw)
    raw = seed()
    entry(raw, "public.test_table")["freshness"] = {"column": "a", "max_age_hours": 1}
    with pytest.raises(PlanError, match="a delete step has no `freshness`; remove it or change the action"):
        parse_plan(raw)
    raw = seed()
    entry(raw, "public.sbr_raw_html")["definition"] = "SELECT 1"
    with pytest.raises(PlanError, match="`definition` applies to views with view_mode: recreate only"):
        parse_plan(raw)


def test_only_copy_recreates_a_view_and_a_deleted_view_may_have_view_mode_recreate():
    raw = seed()
    entry(raw, "backtesting.strategy_configurations").update(object="view", view_mode="recreate",
                                                             definition="SELECT 1")
    with pytest.raises(PlanError, match="a recreated view must use action copy"):
        parse_plan(raw)
    raw = seed()
    entry(raw, "public.test_table").update(object="view", view_mode="recreate")
    step = parse_plan(raw).step_for_source("public", "test_table")
    assert action_of(step).name == "delete" and not step.migrates_rows


def test_a_new_action_is_one_class_and_one_registration(monkeypatch):
    """What adding an action takes: a module with its class, a line registering it."""

    class ArchiveAction(CopyAction):
        name = "archive"
        described_as = "archive steps"
        plan_keys = TARGET_KEYS | {"retention_days"}

        def parse(self, step, e, label):
            if not isinstance(e.get("retention_days", 30), int):
                raise PlanError(f"{label}: retention_days must be a whole number")

    monkeypatch.setitem(plan_mod._ACTIONS, "archive", ArchiveAction())
    raw = seed()
    e = entry(raw, "public.sbr_raw_html")
    e.update(action="archive", retention_days=7)
    plan = parse_plan(raw)
    step = plan.step_for_source("public", "sbr_raw_html")
    assert step.name == "archive__public__sbr_raw_html" and action_of(step).name == "archive"
    assert step in plan.migrating_steps() and step.migrates_rows
    assert "archive" in plan_mod.plan_actions()
    e["retention_days"] = "a week"
    with pytest.raises(PlanError, match=r"step 1 \(public.sbr_raw_html\): retention_days must be a whole number"):
        parse_plan(raw)
    # its key is not accepted by the others
    raw = seed()
    entry(raw, "public.game_outcomes")["retention_days"] = 7
    with pytest.raises(PlanError, match="`retention_days` applies to archive steps only"):
        parse_plan(raw)


def test_shared_targets_follow_the_rule_of_their_action():
    raw = seed()
    entry(raw, "public.migration_log_phase2b")["target"] = "operational.migration_log"
    with pytest.raises(PlanError, match="two sources feed operational.migration_log .* without a rule") as err:
        parse_plan(raw)
    for name in ("union", "merge"):
        assert actions.ACTIONS[name].shared_target_rule in str(err.value)
    plan = plan_mod.load_plan()
    assert len(plan.steps_into("operational.strategy_configurations")) == 2  # a union
    assert len(plan.steps_into("core_betting.teams")) == 2  # a merge


# -- what the actions answer, on specs built by hand ------------------------------------
def _spec(steps, exists=False):
    first = steps[0]
    return TargetSpec(first.target_schema, first.target_table, "table", list(steps), exists=exists, key=["id"])


def test_gate_checks_and_no_unexpected_rows_per_action():
    plan = plan_mod.load_plan()
    by = {name: plan.step_for_source(*src.split(".")) for name, src in EXAMPLES.items()}
    names = {}
    owns = {}
    for name in ("copy", "merge", "union", "recreate_view"):
        step = by[name]
        steps = plan.steps_into(step.target)
        spec = _spec(steps, exists=name == "merge")
        action = action_of(step)
        names[name] = [c[0] for c in action.gate_checks(plan, step, spec, _source_side())]
        owns[name] = action.owns_target_rows(step, spec)
    assert names == {"copy": ["quarantine_within_threshold"],
                     "merge": ["quarantine_within_threshold", "source_keys_present"],
                     "union": ["quarantine_within_threshold"],
                     "recreate_view": []}
    # a union proves its own rows although its target is shared; a merge target held rows before
    assert owns == {"copy": True, "merge": False, "union": True, "recreate_view": True}
    assert action_of(by["merge"]).compared_description == "key and enriched columns"
    assert action_of(by["copy"]).compared_description == "all mapped columns"


def _source_side():
    from psycopg import sql

    return sql.SQL("SELECT 1")


def test_order_upstream_per_action():
    plan = plan_mod.load_plan()
    teams = plan.steps_into("core_betting.teams")
    assert [s.name for s in action_of(teams[1]).upstream(plan, teams[1])] == [teams[0].name]
    assert action_of(teams[0]).upstream(plan, teams[0]) == []
    view = plan.step_for_source("backtesting", "recent_config_changes")
    up = action_of(view).upstream(plan, view)
    assert up and all(s.target_schema == view.target_schema and s.migrates_rows for s in up)


# -- nothing else branches on the action name ---------------------------------------------
# The ledger digest (checks/reconcile.py) still tells delete steps by name: that function
# belongs to the checksum de-duplication; `step.target is None` says the same.
ALLOWED = {("checks/reconcile.py", "digest")}


def _action_comparisons(tree: ast.AST):
    """(line, enclosing function) of every comparison involving an `.action` attribute."""
    out = []

    def visit(node, func):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Compare) and any(
                isinstance(x, ast.Attribute) and x.attr == "action" for x in [node.left, *node.comparators]):
            out.append((node.lineno, func))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "<module>")
    return out


def test_no_module_outside_actions_compares_a_step_action_by_name():
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("actions/"):
            continue
        for line, func in _action_comparisons(ast.parse(path.read_text())):
            if (rel, func) not in ALLOWED:
                found.append(f"{rel}:{line} ({func})")
    assert not found, "compares step.action outside actions/ (ask the action instead):\n" + "\n".join(found)
