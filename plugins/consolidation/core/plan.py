"""The plan: what moves where, loaded from YAML and validated before anything runs.

The plan file is the product's interface; nothing about a particular database lives
in the engine. Errors name the entry (step number and source) and say how to fix it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable


from consolidation.core import config, strict_yaml
from consolidation.core.columns.mapping import ColumnMap, parse_columns, yaml_trap
from consolidation.core.errors import PlanError
from consolidation.core.planfile import schema as plan_schema
from consolidation.core.planfile.objects import PlannedObject, parse_objects

OBJECT_KINDS = ("table", "view")
VIEW_MODES = ("snapshot", "recreate")

_TOP_KEYS = {"plan", "description", "consolidated_schemas", "legacy_schemas", "tool", "defaults", "steps", "smoke_dir", "approvers", "objects"}
_LEGACY_KEYS = {"stated_tables", "stated_rows", "drop_schema"}
# Keys of every step; each action names the others it accepts (plan_keys).
_COMMON_STEP_KEYS = {"source", "action", "rows", "object", "view_mode", "quarantine_threshold"}


# PlanError lives in core.errors so core.columns can raise it without importing the plan.


# -- the registry of step actions ---------------------------------------------
# What an action means (the keys it accepts, its target, its SQL, its proofs) lives in
# consolidation.actions, one module per action (the contract: consolidation.actions.base).
# Core cannot import that layer: the actions register here when it is imported, which the
# engine's package __init__ does, and core asks them through action_of(step).
_ACTIONS: dict[str, Any] = {}


def register_action(action) -> None:
    """Make a step action known under its name (consolidation.actions does, once per action)."""
    _ACTIONS[action.name] = action


def registered_actions() -> list:
    return list(_ACTIONS.values())


def plan_actions() -> list[str]:
    """The values a step's `action:` may take, in registration order."""
    return [a.name for a in _ACTIONS.values() if a.in_plan]


def named_action(name: str):
    try:
        return _ACTIONS[name]
    except KeyError:
        raise LookupError(f"no step action {name!r} is registered (registered: {', '.join(_ACTIONS) or 'none'}); "
                          "import consolidation.actions") from None


def action_of(step: "Step"):
    """The action handling a step: its plan action, or the variant that resolves to (recreate_view)."""
    return named_action(step.action).resolve(step)


def _step_keys() -> set[str]:
    return _COMMON_STEP_KEYS.union(*(a.plan_keys for a in _ACTIONS.values()))


def schema_actions() -> dict[str, tuple[list[str], list[str]]]:
    """Each plan action's step keys for the plan's JSON Schema (core.planfile.schema): its own
    plus those of the variant a view with view_mode: recreate resolves to; and its required keys."""
    out = {}
    for a in _ACTIONS.values():
        if not a.in_plan:
            continue
        probe = Step(index=0, source_schema="s", source_table="t", action=a.name, object="view", view_mode="recreate")
        try:
            variant = a.resolve(probe)
        except PlanError:  # such a step is refused for this action: no variant
            variant = a
        out[a.name] = (sorted(set(a.plan_keys) | set(variant.plan_keys)), list(a.required_keys))
    return out


def json_schema_text() -> str:
    """include/plans/plan.schema.json as the registered actions make it."""
    return plan_schema.schema_text(schema_actions())


# ColumnMap (how one target column is filled) lives in core.columns.mapping.


@dataclass(frozen=True)
class AddedColumn:
    name: str
    type: str
    unique: bool = False


@dataclass(frozen=True)
class Freshness:
    column: str
    max_age_hours: float


@dataclass
class Step:
    """One legacy object and what happens to it."""

    index: int
    source_schema: str
    source_table: str
    action: str
    target_schema: str | None = None
    target_table: str | None = None
    stated_rows: int | None = None
    object: str = "table"
    view_mode: str | None = None
    definition: str | None = None
    columns: dict[str, ColumnMap] = field(default_factory=dict)  # by target column
    key: dict[str, str] = field(default_factory=dict)  # merge: target column -> source column
    enrich: list[str] = field(default_factory=list)
    add_columns: dict[str, AddedColumn] = field(default_factory=dict)
    target_key: str | None = None
    provenance_table: str | None = None
    provenance_key: str | None = None
    quarantine_threshold: int = 0
    batch_rows: int | None = None  # copy/union: above this many source rows, 4B moves key-range batches
    freshness: Freshness | None = None
    ignore: dict[str, str] = field(default_factory=dict)  # source column -> reason
    drop_foreign_keys: dict[str, str] = field(default_factory=dict)  # legacy FK constraint -> why not carried

    @property
    def source(self) -> str:
        return f"{self.source_schema}.{self.source_table}"

    @property
    def target(self) -> str | None:
        return f"{self.target_schema}.{self.target_table}" if self.target_table else None

    @property
    def name(self) -> str:
        """Stable step id, usable as an Airflow task id."""
        return f"{self.action}__{self.source_schema}__{self.source_table}"

    @property
    def label(self) -> str:
        return f"step {self.index} ({self.source})"

    @property
    def migrates_rows(self) -> bool:
        """4B moves rows for it (not for a delete, nor for a recreated view, which it only verifies)."""
        return action_of(self).moves_rows

    @property
    def is_recreated_view(self) -> bool:
        return self.object == "view" and self.view_mode == "recreate"

    def mapped_source_columns(self) -> set[str]:
        """Source columns some mapping reads (a `from`, or an s.<col> of an `expr`)."""
        return set().union(*(m.referenced_columns() for m in self.columns.values()))


@dataclass
class LegacySchema:
    name: str
    stated_tables: int | None = None
    stated_rows: int | None = None
    drop_schema: bool = True


@dataclass
class Plan:
    name: str
    description: str
    consolidated_schemas: dict[str, str]
    legacy_schemas: dict[str, LegacySchema]
    tool_schema: str
    tool_prefix: str
    steps: list[Step]
    path: Path | None = None
    sha256: str = ""
    smoke_dir: str | None = None  # the 4C service smoke queries' folder, relative to the plan file
    approvers: list[str] = field(default_factory=list)  # Airflow users who may approve 4D (four eyes)
    objects: list[PlannedObject] = field(default_factory=list)  # legacy functions, types, triggers, leftovers

    def planned_object(self, schema: str, name: str) -> PlannedObject | None:
        """The `objects:` entry for schema.name (name: `table.trigger` for a trigger), or None."""
        return next((o for o in self.objects if o.schema == schema and o.name == name), None)

    def smoke_folder(self) -> Path | None:
        """The plan's smoke-query folder (absolute), or None when the plan names none."""
        if not self.smoke_dir:
            return None
        # a plan parsed from memory (no file) resolves it where the bundled plans live
        base = self.path.parent if self.path is not None else config.DEFAULT_PLAN.parent
        return (base / self.smoke_dir).resolve()

    # -- lookups ---------------------------------------------------------
    def steps_for_schema(self, schema: str) -> list[Step]:
        return [s for s in self.steps if s.source_schema == schema]

    def step_for_source(self, schema: str, table: str) -> Step | None:
        for s in self.steps:
            if s.source_schema == schema and s.source_table == table:
                return s
        return None

    def steps_into(self, target: str) -> list[Step]:
        return [s for s in self.steps if s.target == target]

    def migrating_steps(self) -> list[Step]:
        """Steps with a target (every action but delete): 4A, 4B and 4C act on them."""
        return [s for s in self.steps if s.target is not None]

    def tool_table(self, name: str) -> tuple[str, str]:
        """(schema, table) of one of the tool's own tables, e.g. tool_table('ledger')."""
        return self.tool_schema, f"{self.tool_prefix}{name}"

    def listed_rows(self, schema: str) -> int:
        return sum(s.stated_rows or 0 for s in self.steps_for_schema(schema))


TOOL_TABLES = ("ledger", "quarantine", "conflicts", "undo", "approvals", "registry", "validation_history")


# ---------------------------------------------------------------------------
def load_plan(path: str | Path | None = None) -> Plan:
    """Read and validate a plan file (CONSOLIDATION_PLAN, or the bundled phase4.yaml)."""
    path = Path(path) if path else config.plan_path()
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist: set CONSOLIDATION_PLAN to a plan file") from None
    try:
        raw = strict_yaml.load(raw_bytes)
    except strict_yaml.YamlRefused as exc:
        raise PlanError(f"plan file {path} is not valid YAML for a plan: {exc}") from None
    try:
        plan = parse_plan(raw, where=str(path))
    except PlanError as exc:  # every refusal names the file
        text = str(exc)
        raise PlanError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    plan.path = path
    plan.sha256 = hashlib.sha256(raw_bytes).hexdigest()
    return plan


def parse_plan(raw: Any, where: str = "plan") -> Plan:
    _yaml_traps(raw, where)  # before the structure: its "unknown key 4)" would hide the cause
    # The structure first (types, enums, required keys), in one line naming the entry and the fix.
    problem = plan_schema.problem(raw, schema_actions())
    if problem:
        raise PlanError(f"{where}: {problem}")
    if not isinstance(raw, dict):
        raise PlanError(f"{where}: the plan must be a mapping with keys {sorted(_TOP_KEYS)}")
    _no_unknown(raw, _TOP_KEYS, where)
    for required in ("consolidated_schemas", "legacy_schemas", "steps"):
        if required not in raw:
            raise PlanError(f"{where}: missing `{required}`; see the README's 'Plan format'")

    consolidated = raw["consolidated_schemas"]
    if isinstance(consolidated, list):
        consolidated = {name: "" for name in consolidated}
    if not isinstance(consolidated, dict) or not consolidated:
        raise PlanError(f"{where}: `consolidated_schemas` must map schema names to descriptions")

    legacy: dict[str, LegacySchema] = {}
    raw_legacy = raw["legacy_schemas"]
    if isinstance(raw_legacy, list):
        raw_legacy = {name: {} for name in raw_legacy}
    if not isinstance(raw_legacy, dict) or not raw_legacy:
        raise PlanError(f"{where}: `legacy_schemas` must map schema names to settings")
    for name, settings in raw_legacy.items():
        settings = settings or {}
        _no_unknown(settings, _LEGACY_KEYS, f"{where}: legacy schema {name}")
        if name in consolidated:
            raise PlanError(f"{where}: schema {name} is both legacy and consolidated; list it once")
        legacy[name] = LegacySchema(
            name=name,
            stated_tables=_opt_int(settings.get("stated_tables"), f"legacy schema {name}: stated_tables"),
            stated_rows=_opt_int(settings.get("stated_rows"), f"legacy schema {name}: stated_rows"),
            # PostgreSQL's default schema is kept (emptied) unless the plan says otherwise.
            drop_schema=bool(settings.get("drop_schema", name != "public")),
        )

    tool = raw.get("tool") or {}
    _no_unknown(tool, {"schema", "prefix"}, f"{where}: tool")
    tool_schema = tool.get("schema", "operational")
    tool_prefix = tool.get("prefix", "consolidation_")
    if tool_schema not in consolidated:
        raise PlanError(
            f"{where}: tool.schema {tool_schema!r} is not a consolidated schema; "
            f"use one of {sorted(consolidated)}"
        )

    defaults = raw.get("defaults") or {}
    _no_unknown(defaults, {"quarantine_threshold", "view_mode", "batch_rows"}, f"{where}: defaults")
    default_threshold = _opt_int(defaults.get("quarantine_threshold", 0), "defaults.quarantine_threshold")
    default_view_mode = defaults.get("view_mode", "snapshot")
    if default_view_mode not in VIEW_MODES:
        raise PlanError(f"{where}: defaults.view_mode {default_view_mode!r} must be one of {VIEW_MODES}")

    if not isinstance(raw["steps"], list) or not raw["steps"]:
        raise PlanError(f"{where}: `steps` must be a non-empty list")
    steps = [
        _parse_step(i, entry, consolidated, legacy, default_threshold, default_view_mode,
                    _batch_rows(defaults.get("batch_rows"), "defaults.batch_rows"))
        for i, entry in enumerate(raw["steps"], start=1)
    ]

    plan = Plan(
        name=str(raw.get("plan", "plan")),
        description=str(raw.get("description", "")),
        consolidated_schemas={k: str(v or "") for k, v in consolidated.items()},
        legacy_schemas=legacy,
        tool_schema=tool_schema,
        tool_prefix=tool_prefix,
        steps=steps,
        smoke_dir=str(raw["smoke_dir"]) if raw.get("smoke_dir") else None,
        approvers=list(dict.fromkeys(str(a) for a in raw.get("approvers") or [])),
        objects=_parse_objects(raw.get("objects"), consolidated, legacy, steps, where),
    )
    _check_plan(plan)
    return plan


def _parse_objects(raw, consolidated, legacy, steps: list[Step], where: str) -> list[PlannedObject]:
    try:
        return parse_objects(raw, consolidated, legacy, {s.source: s.index for s in steps})
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None


def _batch_rows(value, what: str) -> int | None:
    n = _opt_int(value, what)
    if n == 0:
        raise PlanError(f"{what}: 0 must be a row count >= 1; leave the key out to move the step in one transaction")
    return n


def _parse_step(i, entry, consolidated, legacy, default_threshold, default_view_mode,
                default_batch_rows=None) -> Step:
    if not isinstance(entry, dict):
        raise PlanError(f"step {i}: must be a mapping with at least `source` and `action`")
    src = entry.get("source")
    label = f"step {i} ({src})" if src else f"step {i}"
    _no_unknown(entry, _step_keys(), label)
    if not src or not isinstance(src, str):
        raise PlanError(f"{label}: missing `source` (schema.table)")
    s_schema, s_table = _split(src, label, "source")
    if s_schema not in legacy:
        raise PlanError(
            f"{label}: source schema {s_schema!r} is not a legacy schema; "
            f"add it under `legacy_schemas` or use one of {sorted(legacy)}"
        )
    action = entry.get("action")
    if action not in plan_actions():
        raise PlanError(f"{label}: unknown action {action!r}; use one of {', '.join(plan_actions())}")

    step = Step(index=i, source_schema=s_schema, source_table=s_table, action=action)
    step.stated_rows = _opt_int(entry.get("rows"), f"{label}: rows")
    step.quarantine_threshold = _opt_int(entry.get("quarantine_threshold", default_threshold), f"{label}: quarantine_threshold")
    if "batch_rows" in entry or (default_batch_rows and "batch_rows" in _ACTIONS[action].plan_keys):
        step.batch_rows = _batch_rows(entry.get("batch_rows", default_batch_rows), f"{label}: batch_rows")

    obj = entry.get("object", "table")
    if obj not in OBJECT_KINDS:
        raise PlanError(f"{label}: object {obj!r} must be one of {OBJECT_KINDS}")
    step.object = obj
    if obj == "view":
        step.view_mode = entry.get("view_mode", default_view_mode)
        if step.view_mode not in VIEW_MODES:
            raise PlanError(f"{label}: view_mode {step.view_mode!r} must be one of {VIEW_MODES}")
    elif "view_mode" in entry:
        raise PlanError(f"{label}: view_mode applies to views only; add `object: view` or remove it")

    # The action says which keys the step may and must have, and reads its own.
    op = named_action(action).resolve(step)
    for k in entry:
        if k not in _COMMON_STEP_KEYS and k not in op.plan_keys:
            owners = [a.described_as for a in _ACTIONS.values() if k in a.plan_keys]
            raise PlanError(op.refused_key(label, k) or f"{label}: `{k}` applies to {' and '.join(owners)} only")
    if "target" in op.plan_keys and entry.get("target"):
        tgt = entry["target"]
        t_schema, t_table = _split(tgt, label, "target")
        if t_schema not in consolidated:
            raise PlanError(
                f"{label}: target {tgt} is outside the consolidated schemas; "
                f"use one of {sorted(consolidated)}"
            )
        step.target_schema, step.target_table = t_schema, t_table
    for k in op.required_keys:
        if not entry.get(k):
            raise PlanError(op.missing_key(step, label, k))

    step.columns = _parse_columns(entry.get("columns") or {}, label)
    step.add_columns = _parse_added(entry.get("add_columns") or {}, label)
    ignore = entry.get("ignore") or {}
    if not isinstance(ignore, dict) or any(not str(v or "").strip() for v in ignore.values()):
        raise PlanError(f"{label}: `ignore` maps a source column to the reason it is not migrated")
    step.ignore = {str(k): str(v) for k, v in ignore.items()}
    dropped = entry.get("drop_foreign_keys") or {}
    if not isinstance(dropped, dict) or any(not str(v or "").strip() for v in dropped.values()):
        raise PlanError(f"{label}: `drop_foreign_keys` maps a foreign key constraint of {step.source} to the reason "
                        "it is not carried to the target")
    step.drop_foreign_keys = {str(k): str(v) for k, v in dropped.items()}
    op.parse(step, entry, label)

    fresh = entry.get("freshness")
    if fresh is not None:
        if not isinstance(fresh, dict) or "column" not in fresh or "max_age_hours" not in fresh:
            raise PlanError(f"{label}: freshness needs `column` and `max_age_hours`")
        step.freshness = Freshness(str(fresh["column"]), float(fresh["max_age_hours"]))
    return step


def _yaml_traps(raw: Any, where: str) -> None:
    """An unquoted `numeric(8,4)` inside {...}: say to quote it (core.columns.mapping.yaml_trap)."""
    steps = raw.get("steps") if isinstance(raw, dict) else None
    for i, entry in enumerate(steps if isinstance(steps, list) else [], start=1):
        if not isinstance(entry, dict):
            continue
        label = f"{where}: step {i} ({entry.get('source')})"
        for key, what in (("columns", "column"), ("add_columns", "add_columns.")):
            specs = entry.get(key)
            for name, spec in (specs.items() if isinstance(specs, dict) else []):
                if isinstance(spec, dict):
                    yaml_trap(spec, f"{label}: {what} {name}" if what == "column" else f"{label}: {what}{name}")


def _parse_columns(raw: Any, label: str) -> dict[str, ColumnMap]:
    return parse_columns(raw, label)


def _parse_added(raw: Any, label: str) -> dict[str, AddedColumn]:
    if not isinstance(raw, dict):
        raise PlanError(f"{label}: `add_columns` maps new column names to {{type, unique}}")
    out = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict) or not spec.get("type"):
            raise PlanError(f"{label}: add_columns.{name} needs a `type`")
        yaml_trap(spec, f"{label}: add_columns.{name}")
        _no_unknown(spec, {"type", "unique"}, f"{label}: add_columns.{name}")
        out[name] = AddedColumn(name, str(spec["type"]), bool(spec.get("unique", False)))
    return out


def _check_plan(plan: Plan) -> None:
    """Rules that span steps: duplicates, shared targets, collisions with tool tables."""
    seen: dict[str, Step] = {}
    for s in plan.steps:
        if s.source in seen:
            raise PlanError(
                f"{s.label}: {s.source} is already listed as step {seen[s.source].index}; "
                "list each legacy table once"
            )
        seen[s.source] = s

    tool_names = {plan.tool_table(t) for t in TOOL_TABLES}
    by_target: dict[str, list[Step]] = {}
    for s in plan.migrating_steps():
        if (s.target_schema, s.target_table) in tool_names:
            raise PlanError(
                f"{s.label}: target {s.target} is one of the tool's own tables; "
                "rename the target or change `tool.prefix`"
            )
        by_target.setdefault(s.target, []).append(s)

    for target, steps in by_target.items():
        if len(steps) < 2:
            continue
        op = action_of(steps[0])
        if op.shared_target_rule and all(action_of(s) is op for s in steps):
            problem = op.shared_target_problem(target, steps)
            if problem:
                raise PlanError(problem)
            continue
        rules = " or ".join(a.shared_target_rule for a in _ACTIONS.values() if a.shared_target_rule)
        raise PlanError(
            f"two sources feed {target} ({', '.join(s.source for s in steps)}) without a rule: make them {rules}"
        )


# ---------------------------------------------------------------------------
def check_against_catalog(plan: Plan, catalog) -> list[str]:
    """Column-level checks that need the live catalog; returns problems (empty when fine).

    `catalog.columns(schema, table)` returns {name: type} or None when the relation
    is missing. Targets that 4A will create take the source's columns (renamed by the
    mapping); existing targets are read from the catalog plus the plan's add_columns.
    """
    problems: list[str] = []
    for s in plan.migrating_steps():
        src_cols = catalog.columns(s.source_schema, s.source_table)
        if src_cols is None:
            continue  # reported by the inventory as a missing object
        for m in s.columns.values():
            if m.source and m.source not in src_cols:
                problems.append(
                    f"{s.label}: columns.{m.target} maps from {m.source!r}, which {s.source} does not have "
                    f"(it has {', '.join(sorted(src_cols))}); fix the column name"
                )
        for tcol, scol in s.key.items():
            if scol not in src_cols:
                problems.append(f"{s.label}: key {tcol}: {scol!r} is not a column of {s.source}; fix the key")
        for col in s.ignore:
            if col not in src_cols:
                problems.append(f"{s.label}: ignore lists {col!r}, which {s.source} does not have")
        if s.drop_foreign_keys:  # a name that is no foreign key of the source would hide a typo
            fks = sorted(d.detail.split(":", 1)[0] for d in catalog.dependencies
                         if d.kind == "foreign_key" and d.dependent == s.source)
            for name in s.drop_foreign_keys:
                if name not in fks:
                    problems.append(f"{s.label}: drop_foreign_keys names {name!r}, which is no foreign key of "
                                    f"{s.source} ({'its foreign keys: ' + ', '.join(fks) if fks else 'it has none'}); "
                                    "fix the constraint name")
        tgt_cols = catalog.columns(s.target_schema, s.target_table)
        if tgt_cols is None:
            continue  # created by 4A from the source
        problems += action_of(s).catalog_problems(s, src_cols, tgt_cols, catalog)
    return problems


# ---------------------------------------------------------------------------
def _split(name: str, label: str, what: str) -> tuple[str, str]:
    parts = str(name).split(".")
    if len(parts) != 2 or not all(parts):
        raise PlanError(f"{label}: {what} {name!r} must be written schema.table")
    return parts[0], parts[1]


def _opt_int(value, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PlanError(f"{what}: {value!r} must be a whole number >= 0")
    return value


def _no_unknown(mapping: dict, allowed: Iterable[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise PlanError(f"{where}: expected a mapping")
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise PlanError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
