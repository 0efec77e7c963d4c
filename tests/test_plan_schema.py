"""The plan's JSON Schema: published as include/plans/plan.schema.json (what `plan --schema` prints),
a valid draft 2020-12 schema the seed plan conforms to (as an editor checks it), made from what the
step actions accept, and agreeing with the README's plan-format section key for key."""
from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from consolidation.core import config, plan as plan_module
from consolidation.core.columns import mapping
from consolidation.core.plan import json_schema_text, registered_actions, schema_actions
from consolidation.core.planfile import schema

pytestmark = pytest.mark.unit

SCHEMA_FILE = config.REPO_ROOT / "include" / "plans" / "plan.schema.json"
README = config.REPO_ROOT / "README.md"


def test_published_schema_is_the_generated_one(cli):
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json_schema_text(), (
        "include/plans/plan.schema.json is stale: python -m consolidation plan --schema > include/plans/plan.schema.json")
    out = cli("plan", "--schema")
    assert out.returncode == 0 and out.stdout == SCHEMA_FILE.read_text(encoding="utf-8")


def test_schema_is_valid_and_the_seed_plan_conforms_as_an_editor_sees_it():
    published = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(published)
    seed = yaml.safe_load(config.DEFAULT_PLAN.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(published).validate(seed)
    # and an editor flags what the loader refuses, e.g. a quoted boolean or a key of another action
    bad = json.loads(json.dumps(seed))
    bad["legacy_schemas"]["public"]["drop_schema"] = "false"
    assert not jsonschema.Draft202012Validator(published).is_valid(bad)
    bad = json.loads(json.dumps(seed))
    bad["steps"][0]["provenance"] = {"table": "a", "key": "b"}  # a copy step has no provenance
    assert not jsonschema.Draft202012Validator(published).is_valid(bad)


def test_step_keys_of_the_actions_and_the_schema_agree():
    """Every key an action accepts has a shape here, every shape belongs to some action, and the
    common keys and the column-mapping keys are the parser's."""
    action_keys = set().union(*(a.plan_keys for a in registered_actions()))
    assert action_keys == set(schema.STEP_KEYS), (action_keys ^ set(schema.STEP_KEYS))
    built = schema.build_schema(schema_actions())
    assert set(built["$defs"]["step"]["properties"]) == plan_module._COMMON_STEP_KEYS
    assert set(built["properties"]) == plan_module._TOP_KEYS
    assert set(schema.MAPPING_KEYS) == set(mapping.KEYS)
    per_action = {part["if"]["properties"]["action"]["const"]: part["then"] for part in built["$defs"]["step"]["allOf"]}
    assert list(per_action) == plan_module.plan_actions()
    for a in registered_actions():
        if a.in_plan:
            assert set(a.plan_keys) <= set(per_action[a.name]["properties"])
            assert per_action[a.name].get("required", []) == list(a.required_keys)
    assert "definition" in per_action["copy"]["properties"]  # a recreated view is a copy step
    assert per_action["delete"]["properties"] == {}


def _schema_keys(node, out: set) -> set:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                out |= set(value)
            _schema_keys(value, out)
    elif isinstance(node, list):
        for value in node:
            _schema_keys(value, out)
    return out


def _plan_format_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## The plan format")
    return text[start:text.index("\n## ", start + 1)]


def _documented_keys(section: str) -> set:
    """Keys the section documents: those of its YAML examples (not the schema names under
    consolidated_schemas / legacy_schemas, nor the target columns under columns), those in
    flow mappings `{a: .., b: ..}`, and the first column of its key tables."""
    keys = set()
    for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
        parent = None
        for line in block.splitlines():
            m = re.match(r"^(\s*)([A-Za-z_][\w]*):", line)
            if not m:
                continue
            if not m.group(1):
                parent = m.group(2)
            if not m.group(1) or parent in ("tool", "defaults"):
                keys.add(m.group(2))
            data = re.sub(r"map: \{[^}]*\}", "map: {}", line.split("#")[0])  # a map's keys are values
            keys |= set(re.findall(r"[{,]\s*([A-Za-z_]\w*):", data))
    for first, second in re.findall(r"^\| `(\w+)`(?:, `(\w+)`)? \|", section, re.M):
        keys |= {first} | ({second} if second else set())
    return keys


def test_the_readme_documents_exactly_the_schemas_keys():
    section = _plan_format_section()
    known = _schema_keys(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")), set()) | set(schema.STEP_KEYS)
    mentioned = {w for span in re.findall(r"`([^`]*)`", section) for w in re.findall(r"\w+", span)}
    mentioned |= _documented_keys(section)
    undocumented = sorted(known - mentioned)
    assert not undocumented, f"keys of plan.schema.json the README's 'The plan format' never names: {undocumented}"
    unknown = sorted(_documented_keys(section) - known)
    assert not unknown, f"keys the README documents that plan.schema.json does not know: {unknown}"


def test_a_plan_that_conformed_once_is_remembered_and_a_changed_one_is_validated_again():
    """problem() skips a plan it has seen conform in this process; any change - a value's
    type, a key's order around a wrong value - is validated again and refused."""
    raw = yaml.safe_load(config.DEFAULT_PLAN.read_text(encoding="utf-8"))
    actions = schema_actions()
    assert schema.problem(raw, actions) is None
    assert schema.problem(raw, actions) is None  # remembered
    changed = json.loads(json.dumps(raw))
    changed["steps"][0]["target"] = 5
    assert "target" in (schema.problem(changed, actions) or "")
    as_text = json.loads(json.dumps(raw))
    first = next(k for k, v in as_text["legacy_schemas"].items() if isinstance(v, dict) and "drop_schema" in v)
    as_text["legacy_schemas"][first]["drop_schema"] = str(as_text["legacy_schemas"][first]["drop_schema"]).lower()
    assert "drop_schema" in (schema.problem(as_text, actions) or "")
