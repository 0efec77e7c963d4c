"""The plan's JSON Schema (draft 2020-12) and the one-line refusal it gives a plan that breaks it.

The schema says what every plan must be before anything reads it: types, enums, required
keys, booleans that are booleans (a quoted 'false' is text), counts >= 0, names PostgreSQL
can hold (1 to 63 bytes; no '.', since the plan writes `schema.table`). What a step may hold
besides the common keys is each action's (`plan_keys`, `required_keys` of the registered
actions, core.plan's registry): `build_schema(actions)` makes one `if action == X then ...`
part per action from them; this module only gives each key its shape (STEP_KEYS), and
tests/test_plan_schema.py fails when an action has a key without one (or the other way).

include/plans/plan.schema.json is this schema written out, so editors can validate plans
(`python -m consolidation plan --schema` prints it; a test keeps the file equal to it).

`problem(raw, actions)` is the loader's use of it: the first violation in file order as one
line naming the entry (`steps[3] (tracking.foo).columns.bar.cast`, steps counted from 0 as
editors do) and the fix. Which action accepts a key, and rules across steps, are core.plan's
(its messages name who accepts the key): unknown step keys are left to it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated
TOOL_TABLE_LONGEST = len("validation_history")  # core.plan.TOOL_TABLES' longest suffix

_NAME_PATTERN = r"^[^.\u0000]+$"
NAME = {"type": "string", "minLength": 1, "pattern": _NAME_PATTERN, "format": "postgresql-name",
        "description": "a PostgreSQL name: 1 to 63 bytes, any characters but '.'"}
QUALIFIED = {"type": "string", "pattern": r"^[^.\u0000]+\.[^.\u0000]+$", "format": "postgresql-qualified-name",
             "description": "schema.table, each a PostgreSQL name of 1 to 63 bytes without '.'"}
COUNT = {"type": "integer", "minimum": 0, "description": "a whole number >= 0"}
BOOLEAN = {"type": "boolean", "description": "true or false, unquoted"}
# A type is spliced into SQL after the server parsed it (core.columns.check.normalise_type);
# here: one piece of text that cannot end a statement or open a comment or literal.
TYPE = {"type": "string", "minLength": 1, "pattern": r"^(?!.*(--|/\*))[^;'$\u0000]+$",
        "description": "a PostgreSQL type, e.g. bigint, varchar(20), 'numeric(8,4)' (quoted when it has a comma)"}
SCALAR = {"type": ["string", "number", "boolean", "null"],
          "description": "one value: text, a number, true/false or null (not a list or mapping)"}
REASON = {"type": "string", "minLength": 1, "pattern": r"\S", "description": "the reason, as text"}


def _named(base: dict, description: str) -> dict:
    return dict(base, description=f"{base['description']} ({description})")


# The column mapping's keys (core.columns.mapping.KEYS, which reads them).
MAPPING_KEYS = {
    "from": _named(NAME, "the source column"),
    "cast": TYPE,
    "default": _named(SCALAR, "the value where the source has NULL"),
    "expr": {"type": "string", "minLength": 1, "pattern": r"\S",
             "description": "one SQL expression over the source row s, e.g. upper(s.code)"},
    "map": {"type": "object", "minProperties": 1, "additionalProperties": SCALAR,
            "description": "old value: new value, at least one"},
    "else": _named(SCALAR, "the value for values the map does not list"),
    "value": _named(SCALAR, "a constant"),
}
COLUMN = {"type": ["string", "object"], "minLength": 1, "pattern": _NAME_PATTERN, "format": "postgresql-name",
          "minProperties": 1, "properties": MAPPING_KEYS, "additionalProperties": False,
          "description": "a source column name, or a mapping {from, cast, default} / {expr} / "
                         "{from, map, else} / {value}"}

# An `objects:` entry (core.planfile.objects reads it): exactly one of recreate or drop.
OBJECT = {"type": "object", "required": ["name"], "additionalProperties": False,
          "properties": {"name": {"type": "string", "pattern": r"^[^.\u0000]+\.[^.\u0000]+(\.[^.\u0000]+)?$",
                                  "description": "schema.object in a legacy schema (schema.table.trigger for a trigger)"},
                         "recreate": _named(NAME, "the consolidated schema 4A creates a copy in"),
                         "drop": _named(REASON, "why it goes with its schema in 4D")},
          "oneOf": [{"required": ["recreate"]}, {"required": ["drop"]}],
          "description": "{name: schema.object, recreate: consolidated_schema} or {name: schema.object, drop: reason}"}

# The shape of every key an action may accept (which action accepts which: the actions say).
STEP_KEYS: dict[str, dict] = {
    "target": QUALIFIED,
    "columns": {"type": "object", "propertyNames": NAME, "additionalProperties": {"$ref": "#/$defs/column"},
                "description": "target column: a source column name or a mapping"},
    "add_columns": {"type": "object", "propertyNames": NAME, "additionalProperties": {
        "type": "object", "required": ["type"], "additionalProperties": False,
        "properties": {"type": TYPE, "unique": BOOLEAN},
        "description": "{type: T, unique: true/false}"}, "description": "new column: {type: T, unique: true/false}"},
    "ignore": {"type": "object", "propertyNames": NAME, "additionalProperties": REASON,
               "description": "source column: the reason it is not migrated"},
    "drop_foreign_keys": {"type": "object", "propertyNames": NAME, "additionalProperties": REASON,
                          "description": "legacy foreign key constraint of the source: the reason 4A does not "
                                         "carry it to the target"},
    "freshness": {"type": "object", "required": ["column", "max_age_hours"], "additionalProperties": False,
                  "properties": {"column": _named(NAME, "the timestamp column"),
                                 "max_age_hours": {"type": "number", "exclusiveMinimum": 0,
                                                   "description": "hours, a number > 0"}},
                  "description": "{column: ts_column, max_age_hours: N}"},
    "key": {"type": "object", "minProperties": 1, "propertyNames": NAME, "additionalProperties": NAME,
            "description": "the business key, {target_column: source_column}"},
    "enrich": {"type": "array", "items": NAME, "uniqueItems": True,
               "description": "a list of target columns the merge may set, e.g. [a, b]"},
    "target_key": _named(NAME, "the new key column"),
    "batch_rows": {"type": "integer", "minimum": 1,
                   "description": "a whole number >= 1 (source rows per 4B batch, each its own transaction)"},
    "provenance": {"type": "object", "required": ["table", "key"], "additionalProperties": False,
                   "properties": {"table": NAME, "key": NAME},
                   "description": "{table: column, key: column}"},
    "definition": {"type": "string", "minLength": 1, "pattern": r"\S",
                   "description": "one SELECT over the consolidated tables"},
}

OBJECT_KINDS = ("table", "view")
VIEW_MODES = ("snapshot", "recreate")


def common_step_keys(action_names: list[str]) -> dict[str, dict]:
    """The keys of every step (core.plan._COMMON_STEP_KEYS)."""
    return {
        "source": _named(QUALIFIED, "the legacy object"),
        "action": {"enum": list(action_names), "description": f"one of {', '.join(action_names)}"},
        "rows": _named(COUNT, "the row count the plan states"),
        "object": {"enum": list(OBJECT_KINDS), "description": "table or view"},
        "view_mode": {"enum": list(VIEW_MODES), "description": "snapshot or recreate"},
        "quarantine_threshold": _named(COUNT, "rows the step may quarantine"),
    }


def build_schema(actions: dict[str, tuple[list[str], list[str]]]) -> dict:
    """`actions`: {plan action: (the keys its steps may hold besides the common ones, the keys
    they must hold)}, in the order `action:` lists them (core.plan.schema_actions())."""
    per_action = []
    for name, (keys, required) in actions.items():
        # a key this module does not describe is one an action added: its parse() checks the value
        then: dict[str, Any] = {"properties": {
            k: {"$ref": f"#/$defs/step_keys/{k}"} if k in STEP_KEYS else {"description": f"checked by the {name} action"}
            for k in sorted(keys)}}
        if required:
            then["required"] = list(required)
        per_action.append({"if": {"properties": {"action": {"const": name}}, "required": ["action"]},
                           "then": then})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Schema consolidation plan",
        "description": "A plan file (include/plans/*.yaml): what moves where. README.md, 'The plan format'. "
                       "Generated by `python -m consolidation plan --schema`; do not edit by hand.",
        "type": "object",
        "required": ["consolidated_schemas", "legacy_schemas", "steps"],
        "additionalProperties": False,
        "properties": {
            "plan": {"type": "string", "minLength": 1, "description": "the plan's name, as text"},
            "description": {"type": "string", "description": "free text"},
            "consolidated_schemas": {
                "type": ["object", "array"], "minProperties": 1, "propertyNames": NAME,
                "additionalProperties": {"type": ["string", "null"], "description": "what the schema holds, as text"},
                "minItems": 1, "items": NAME, "uniqueItems": True,
                "description": "the target schemas: name: description (or a list of names)"},
            "legacy_schemas": {
                "type": ["object", "array"], "minProperties": 1, "propertyNames": NAME,
                "additionalProperties": {"$ref": "#/$defs/legacy_schema"},
                "minItems": 1, "items": NAME, "uniqueItems": True,
                "description": "the schemas folded away: name: {stated_tables, stated_rows, drop_schema}"},
            "tool": {"type": ["object", "null"], "additionalProperties": False, "properties": {
                "schema": _named(NAME, "a consolidated schema"),
                "prefix": {"type": "string", "maxLength": NAME_BYTES - TOOL_TABLE_LONGEST, "pattern": r"^[^.\u0000]*$",
                           "description": f"text of at most {NAME_BYTES - TOOL_TABLE_LONGEST} characters without '.' "
                                          "(prefix + validation_history must fit 63 bytes)"}},
                "description": "{schema: S, prefix: P}"},
            "defaults": {"type": ["object", "null"], "additionalProperties": False, "properties": {
                "quarantine_threshold": _named(COUNT, "rows a step may quarantine"),
                "view_mode": {"enum": list(VIEW_MODES), "description": "snapshot or recreate"},
                "batch_rows": {"type": "integer", "minimum": 1,
                               "description": "a whole number >= 1 (source rows per 4B batch of copy and union steps)"}},
                "description": "{quarantine_threshold: N, view_mode: snapshot|recreate, batch_rows: N}"},
            "smoke_dir": {"type": "string", "minLength": 1,
                          "description": "the folder of the 4C service smoke queries (*.sql), relative to the plan file"},
            "approvers": {"type": "array", "uniqueItems": True,
                          "items": {"type": "string", "minLength": 1, "pattern": r"\S"},
                          "description": "Airflow user names who may approve the 4D cleanup (Required Actions); "
                                         "the user who triggered the 4D run is never one of them"},
            "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"},
                      "description": "a list of steps, at least one"},
            "objects": {"type": "array", "items": {"$ref": "#/$defs/object"},
                        "description": "the legacy schemas' functions, procedures, types, triggers and leftover "
                                       "relations, each {name, recreate} or {name, drop}"},
        },
        "$defs": {
            "legacy_schema": {
                "type": ["object", "null"], "additionalProperties": False,
                "properties": {"stated_tables": _named(COUNT, "tables the plan states"),
                               "stated_rows": _named(COUNT, "rows the plan states"),
                               "drop_schema": _named(BOOLEAN, "whether 4D drops the schema; default true, false for public")},
                "description": "{stated_tables: N, stated_rows: N, drop_schema: true/false}"},
            "column": COLUMN,
            "object": OBJECT,
            "step_keys": STEP_KEYS,
            "step": {
                "type": "object", "required": ["source", "action"],
                "properties": common_step_keys(list(actions)),
                "allOf": per_action,
                "unevaluatedProperties": False,
                "description": "a mapping with at least `source` and `action`"},
        },
    }


def schema_text(actions: dict) -> str:
    """The schema as include/plans/plan.schema.json holds it."""
    return json.dumps(build_schema(actions), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------- validating a plan
_VALIDATORS: dict[tuple, Any] = {}


def _validator(actions: dict):
    key = tuple((name, tuple(sorted(keys)), tuple(required)) for name, (keys, required) in actions.items())
    if key not in _VALIDATORS:
        import jsonschema
        from jsonschema import Draft202012Validator, validators

        # YAML's 1.0 is not a whole number of rows; bool is never a number (jsonschema agrees)
        types = Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
        formats = jsonschema.FormatChecker(formats=())
        formats.checks("postgresql-name")(lambda v: not isinstance(v, str) or len(v.encode()) <= NAME_BYTES)
        formats.checks("postgresql-qualified-name")(
            lambda v: not isinstance(v, str) or all(len(p.encode()) <= NAME_BYTES for p in v.split(".")))
        cls = validators.extend(Draft202012Validator, type_checker=types)
        schema = build_schema(actions)
        # A step key its action does not take is the parser's to word (it names who takes it);
        # unevaluatedProperties re-evaluates every step's allOf, most of the validation's time.
        del schema["$defs"]["step"]["unevaluatedProperties"]
        _VALIDATORS[key] = cls(schema, format_checker=formats)
    return _VALIDATORS[key]


_CONFORMING: set[str] = set()  # digests of (plan, actions) that conformed, in this process


def problem(raw: Any, actions: dict) -> str | None:
    """The plan's first violation of the schema in file order, as one line (None: it conforms);
    `actions` as for build_schema. A plan that conformed is not validated again in this process
    (validating the demo plan takes ~30 ms, and DAG runs in one process read it once per task):
    the digest is of its JSON text in file order, types kept (1, 1.0, true and "1" differ)."""
    digest = hashlib.sha256(json.dumps([raw, sorted((n, sorted(k), list(r)) for n, (k, r) in actions.items())],
                                       default=repr).encode()).hexdigest()
    if digest in _CONFORMING:
        return None
    errors = list(_validator(actions).iter_errors(raw))
    if not errors:
        _CONFORMING.add(digest)
        return None
    first = min(errors, key=lambda e: (_position(raw, list(e.absolute_path)), -len(e.absolute_path),
                                       _RANK.get(e.validator, 9)))
    return _describe(raw, first)


_RANK = {"required": 0, "type": 1, "enum": 2, "const": 2}


def _position(raw: Any, path: list) -> tuple:
    """Where the entry at `path` is in the file: its index among its siblings, level by level."""
    out, node = [], raw
    for part in path:
        if isinstance(node, dict):
            keys = list(node)
            out.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        else:
            out.append(0)
            node = None
    return tuple(out)


def entry_name(raw: Any, path: list) -> str:
    """`steps[3] (tracking.foo).columns.bar.cast`: the path, steps with their source."""
    text, node = "", raw
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("source"), str) and text.startswith("steps["):
                text += f" ({node['source']})"
        else:
            text += ("." if text else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text or "the plan"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a YAML date"
    if isinstance(value, (list, tuple, set)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "empty (null)"
    return type(value).__name__


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (datetime.date, datetime.datetime)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(raw: Any, error) -> str:
    path = list(error.absolute_path)
    entry = entry_name(raw, path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("description") or ""
    v = error.validator
    if "propertyNames" in list(error.schema_path):  # the key itself (path: the mapping holding it)
        if not isinstance(value, str):
            return f"{entry}: the key {_show(value)} is {_kind(value)}; names are text: quote it ('{value}')"
        return f"{entry}: the key {_show(value)} is not a name this plan can use; write {NAME['description']}"
    if v == "type":
        hint = ""
        if "boolean" in _types(schema) and isinstance(value, str):
            word = {"false": "false", "no": "false", "off": "false", "true": "true", "yes": "true", "on": "true"}
            if value.strip().lower() in word:
                hint = f" - quoted, it is text (and any text would count as true): write {word[value.strip().lower()]}"
        elif isinstance(value, (datetime.date, datetime.datetime)) and "string" in _types(schema):
            hint = f" - YAML read it as a date; quote it: '{value}'"
        return f"{entry} is {_kind(value)} ({_show(value)}); write {expected or ' or '.join(_types(schema))}{hint}"
    if v in ("enum", "const"):
        allowed = schema.get("enum") or [schema.get("const")]
        return f"{entry} is {_show(value)}; use one of {', '.join(map(str, allowed))}"
    if v == "required":
        missing = [k for k in error.validator_value if not (isinstance(value, dict) and k in value)]
        props = {k: STEP_KEYS.get(k, p) if "$ref" in p else p for k, p in schema.get("properties", {}).items()}
        what = ", ".join(f"`{k}`" + (f" ({props[k]['description']})" if isinstance(props.get(k), dict)
                                     and props[k].get("description") else "") for k in missing)
        return f"{entry}: missing {what}; add it (README, 'The plan format')"
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(str(k) for k in value if k not in schema.get("properties", {}))
        return f"{entry}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(allowed) or 'none'}"
    if v in ("minimum", "exclusiveMinimum"):
        sign = ">=" if v == "minimum" else ">"
        return f"{entry} is {_show(value)}; it must be a number {sign} {error.validator_value}"
    if v in ("minItems", "minProperties", "minLength"):
        return f"{entry} is empty; write {expected}"
    if v == "oneOf":
        return f"{entry}: give exactly one of `recreate` or `drop`; write {expected}"
    if v == "uniqueItems":
        return f"{entry} lists a value twice; list each once"
    if v in ("pattern", "format", "maxLength"):
        return f"{entry} is {_show(value)}; write {expected}"
    return f"{entry}: {error.message}" + (f"; write {expected}" if expected else "")


def _types(schema: dict) -> list[str]:
    t = schema.get("type", [])
    return [t] if isinstance(t, str) else list(t)
