"""Inventory: the plan checked against the live database.

Every phase calls `take_inventory` first. Blocking findings are things that would
lose data or make a step fail (a planned table that is missing, a view where the plan
expects a table, a mapping to a column that does not exist, an `objects:` entry that
cannot be honoured); warnings are worth reading but safe. An object of a legacy schema
the plan does not name (a table no step moves, a function, a type, a trigger that is not
carried; checks.legacy_objects) is a warning that blocks only the drop of its schema (4D).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from consolidation.core.errors import Refusal
from consolidation.actions import action_for
from consolidation.checks.legacy_objects import LegacyObject, legacy_objects
from consolidation.core import db
from consolidation.core.catalog import Catalog, introspect
from consolidation.core.plan import Plan, PlanError, check_against_catalog, load_plan
from consolidation.core.spec import flows_for

BLOCKING, WARNING, INFO = "blocking", "warning", "info"


@dataclass
class Finding:
    severity: str
    code: str
    object: str
    message: str
    fix: str = ""


@dataclass
class ObjectRow:
    schema: str
    name: str
    kind: str
    rows: int | None
    stated_rows: int | None
    action: str
    target: str | None
    columns: int
    grants: list[str] = field(default_factory=list)


@dataclass
class Inventory:
    plan_name: str
    plan_sha256: str
    objects: list[ObjectRow]
    findings: list[Finding]
    dependencies: list[dict]
    schema_totals: dict[str, dict]
    catalog: Catalog | None = None
    legacy_objects: list[dict] = field(default_factory=list)  # functions, types, triggers, leftovers

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == BLOCKING]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def to_dict(self) -> dict:
        return {
            "plan": self.plan_name,
            "plan_sha256": self.plan_sha256,
            "ok": self.ok,
            "objects": [asdict(o) for o in self.objects],
            "findings": [asdict(f) for f in self.findings],
            "dependencies": self.dependencies,
            "schema_totals": self.schema_totals,
            "legacy_objects": self.legacy_objects,
        }


class InventoryBlocked(Refusal):
    """Raised by phases when the inventory has blocking findings."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        lines = [f"{f.object}: {f.message}" + (f" (fix: {f.fix})" if f.fix else "") for f in inventory.blocking]
        super().__init__(f"inventory found {len(lines)} blocking finding(s):\n  " + "\n  ".join(lines))


def take_inventory(conn=None, plan: Plan | None = None, *, dsn: str | None = None) -> Inventory:
    plan = plan or load_plan()
    if conn is None:
        with db.connect(dsn) as own:
            return take_inventory(own, plan)
    schemas = list(plan.legacy_schemas) + list(plan.consolidated_schemas)
    cat = introspect(conn, schemas)
    inv = compare(plan, cat)
    objs = legacy_objects(conn, plan)
    found = {(o.schema, o.name) for o in objs}
    for entry in plan.objects:
        if (entry.schema, entry.name) not in found and entry.schema in cat.existing_schemas:
            inv.findings.append(Finding(WARNING, "object_missing", entry.qualified,
                                        f"{entry.label} names {entry.qualified}, which {entry.schema} does not hold",
                                        "fix the name (a trigger is schema.table.trigger), or remove the entry"))
    objects_of_legacy(inv, objs)
    for problem in mapping_problems(conn, plan, cat):
        obj, _, message = problem.partition(": ")
        inv.findings.insert(0, Finding(BLOCKING, "column_mapping", obj, message,
                                       "fix the step's `columns` entry (its expression, map, value or cast)"))
    return inv


def objects_of_legacy(inv: Inventory, objs: list[LegacyObject]) -> None:
    """The legacy schemas' functions, procedures, types, triggers and unplanned relations, each with
    what the plan says (checks.legacy_objects): an unplanned one is a WARNING that blocks only the
    drop of its schema (4D); a plan entry that cannot be honoured blocks."""
    order = {BLOCKING: 0, WARNING: 1, INFO: 2}
    for o in objs:
        inv.legacy_objects.append({"object": o.display, "kind": o.kind, "plan": o.plan_says,
                                   "decision": o.decision, "target": o.target})
        if o.problem:
            inv.findings.append(Finding(BLOCKING, "object_refused", o.qualified, o.problem,
                                        "change the object's `objects:` entry"))
        elif o.decision == "unplanned":
            inv.findings.append(Finding(WARNING, "unplanned_object", o.qualified, o.unplanned_message(),
                                        f"until then 4D does not drop {o.schema}; 4A to 4C are not affected"))
        elif o.warning:
            inv.findings.append(Finding(WARNING, "trigger_columns", o.qualified, o.warning))
    inv.findings.sort(key=lambda f: (order[f.severity], f.code, f.object))


def mapping_problems(conn, plan: Plan, cat: Catalog) -> list[str]:
    """Every step's computed columns (expressions, maps, constants, casts) checked by the database,
    typed against their targets: one message per refused step, naming the step, the column and
    what the database said (the same check 4A runs when it derives the targets)."""
    problems = []
    for step in plan.migrating_steps():
        if not step.columns or cat.relation(step.source_schema, step.source_table) is None \
                or not action_for(step).moves_rows:
            continue
        try:
            flows_for(conn, cat, step, cat.relation(step.target_schema, step.target_table))
        except PlanError as exc:
            problems.append(str(exc))
    return problems


def compare(plan: Plan, cat: Catalog) -> Inventory:
    findings: list[Finding] = []
    objects: list[ObjectRow] = []

    for name, legacy in plan.legacy_schemas.items():
        if name not in cat.existing_schemas:
            findings.append(Finding(WARNING, "schema_missing", name, "legacy schema does not exist",
                                    "nothing to migrate from it; remove it from the plan if that is expected"))

    # Planned objects: present, right kind, row counts.
    for step in plan.steps:
        rel = cat.relation(step.source_schema, step.source_table)
        if rel is None:
            findings.append(Finding(
                BLOCKING, "missing_object", step.source,
                f"{step.label} plans to {step.action} {step.source}, which does not exist",
                "fix the name in the plan, or remove the step if the table is gone"))
            continue
        objects.append(ObjectRow(
            step.source_schema, step.source_table, rel.kind, rel.rows, step.stated_rows,
            step.action, step.target, len(rel.columns), cat.grants.get(rel.qualified, [])))
        if rel.kind != step.object and not (rel.kind == "matview" and step.object == "view"):
            findings.append(Finding(
                BLOCKING, "kind_mismatch", step.source,
                f"the plan treats {step.source} as a {step.object}, but it is a {rel.kind}",
                f"add `object: {rel.kind}` (and a view_mode: snapshot or recreate) to {step.label}"
                if rel.kind == "view" else f"set `object: {rel.kind}` on {step.label}"))
        if step.stated_rows is not None and rel.rows is not None and rel.rows != step.stated_rows:
            findings.append(Finding(
                WARNING, "row_count_drift", step.source,
                f"the plan states {step.stated_rows:,} rows, the database holds {rel.rows:,}",
                "expected if the data changed since the plan was written; the gates compare with the data, not the plan"))

    # Column drift: the plan's mappings against the actual columns.
    for problem in check_against_catalog(plan, cat):
        obj = problem.split(":", 1)[0]
        findings.append(Finding(BLOCKING, "column_drift", obj, problem.split(": ", 1)[1] if ": " in problem else problem))

    # Existing targets (merge targets, pre-created tables) are noted by their actions; 4A compares them in detail.
    for step in plan.migrating_steps():
        rel = cat.relation(step.target_schema, step.target_table)
        for code, message in action_for(step).inventory_notes(step, rel):
            findings.append(Finding(INFO, code, step.target, message))
    for s in plan.consolidated_schemas:
        if s not in cat.existing_schemas:
            findings.append(Finding(INFO, "schema_created", s, "consolidated schema does not exist yet; 4A creates it"))

    # Dependencies that cross schema boundaries, and objects outside the legacy
    # schemas that depend on legacy objects (they break when the legacy schema goes).
    legacy = set(plan.legacy_schemas)
    deps = []
    for d in cat.dependencies:
        dep_schema, ref_schema = d.dependent.split(".")[0], d.referenced.split(".")[0]
        if d.crosses_schemas:
            deps.append(asdict(d) | {"crosses_schemas": True})
            if ref_schema in legacy and dep_schema not in legacy:
                findings.append(Finding(
                    WARNING, "depends_on_legacy", d.dependent,
                    f"{d.kind.replace('_', ' ')} on legacy {d.referenced} ({d.detail}); it breaks when {ref_schema} is dropped",
                    "re-point it at the consolidated table before 4D"))
        elif dep_schema in legacy:
            deps.append(asdict(d) | {"crosses_schemas": False})

    # The plan's own arithmetic.
    totals = {}
    for name, legacy_schema in plan.legacy_schemas.items():
        listed = plan.listed_rows(name)
        steps = plan.steps_for_schema(name)
        actual = sum((cat.relation(s.source_schema, s.source_table).rows or 0)
                     for s in steps if cat.relation(s.source_schema, s.source_table) is not None)
        totals[name] = {"stated_tables": legacy_schema.stated_tables, "listed_tables": len(steps),
                        "stated_rows": legacy_schema.stated_rows, "listed_rows": listed, "actual_rows": actual}
        if legacy_schema.stated_rows is not None and legacy_schema.stated_rows != listed:
            findings.append(Finding(
                WARNING, "plan_inconsistent", name,
                f"the plan states {legacy_schema.stated_rows:,} rows for {name}, but its own table list adds up to {listed:,}",
                "correct the stated total; the migration follows the table list and the data"))
        if legacy_schema.stated_tables is not None and legacy_schema.stated_tables != len(steps):
            findings.append(Finding(
                WARNING, "plan_inconsistent", name,
                f"the plan states {legacy_schema.stated_tables} tables for {name}, but lists {len(steps)}",
                "correct the stated count or add the missing steps"))

    order = {BLOCKING: 0, WARNING: 1, INFO: 2}
    findings.sort(key=lambda f: (order[f.severity], f.code, f.object))
    return Inventory(plan.name, plan.sha256, objects, findings, deps, totals, cat)


# ---------------------------------------------------------------------------
def render(inv: Inventory) -> str:
    out = [f"Inventory of plan {inv.plan_name!r} (sha256 {inv.plan_sha256[:12]})", ""]
    header = ("object", "kind", "rows", "plan", "action", "target")
    rows = [(f"{o.schema}.{o.name}", o.kind, _n(o.rows), _n(o.stated_rows), o.action, o.target or "-")
            for o in inv.objects]
    out += _table(header, rows)
    out.append("")
    out.append("Schema totals (stated by the plan / its table list / in the database):")
    out += _table(("schema", "tables stated", "tables listed", "rows stated", "rows listed", "rows actual"),
                  [(s, _n(t["stated_tables"]), _n(t["listed_tables"]), _n(t["stated_rows"]),
                    _n(t["listed_rows"]), _n(t["actual_rows"])) for s, t in inv.schema_totals.items()])
    if inv.legacy_objects:
        out.append("")
        out.append("Other objects of the legacy schemas (functions, types, triggers, relations no step moves):")
        out += _table(("object", "kind", "plan"), [(o["object"], o["kind"], o["plan"]) for o in inv.legacy_objects])
    crossing = [d for d in inv.dependencies if d["crosses_schemas"]]
    if crossing:
        out.append("")
        out.append("Cross-schema dependencies:")
        out += _table(("kind", "dependent", "needs"), [(d["kind"], d["dependent"], d["referenced"]) for d in crossing])
    out.append("")
    if inv.findings:
        out.append("Findings:")
        for f in inv.findings:
            out.append(f"  [{f.severity.upper():8}] {f.code:18} {f.object}: {f.message}")
            if f.fix and f.severity != INFO:
                out.append(f"  {'':10} {'':18} fix: {f.fix}")
    n_block = len(inv.blocking)
    out.append("")
    out.append("Result: " + ("OK, nothing blocks the migration" if not n_block
                             else f"BLOCKED by {n_block} finding(s)"))
    return "\n".join(out)


def _n(v) -> str:
    return "-" if v is None else f"{v:,}"


def _table(header, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*map(str, r)) for r in rows]
