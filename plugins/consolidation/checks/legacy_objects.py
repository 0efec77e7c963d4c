"""What a legacy schema holds besides the tables its steps move, and what the plan says about each.

`legacy_objects(conn, plan)` lists, per legacy schema, every function, procedure and aggregate,
every type (enum, domain, range, standalone composite; not the row types of relations), every
trigger, and every relation no step names (sequences owned by a table and extension members go
with their owner), each with the plan's decision:

- `recreate`: a function, procedure or type that 4A copies into a consolidated schema
  (phases.objects.routines); the legacy original goes with its schema in 4D;
- `drop`: it goes with its schema in 4D (after the backup); a trigger given `drop:` is not carried;
- `carried`: a trigger of a table a copy step moves: 4A recreates it on the target, with the same
  timing, events, level and arguments, calling the recreated function (or the same one when its
  function lives outside the legacy schemas);
- `with_table`: a trigger of a table that 4D drops anyway (a delete step, a `drop:` entry, or a
  table nobody planned, which is itself reported);
- `unplanned`: the plan does not say; a WARNING that blocks only the drop of that schema (4D).

`problem` is set when the plan asks for something that cannot be done (a `recreate` of a table,
an aggregate, a range type, or a function whose body or signature names a legacy schema, which 4D
would break; a carried trigger whose function the plan drops): a blocking finding.

`gate_checks` is the 4A gate's part: each recreated object exists in its schema, each carried
trigger is on its target calling the recreated function (phases.objects.recreate makes them).

Limits, stated: a function body is copied verbatim (only its header is re-pointed, from the
catalog); a body naming a legacy schema is refused, but an unqualified table name resolved
through the caller's search_path cannot be seen. A trigger function that reads columns by name
needs the target to keep those names (a warning when the copy renames or ignores columns).
Triggers with a WHEN clause, constraint triggers, and columns of a table typed with a legacy type
are not carried (refused, named).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from psycopg import sql

from consolidation.actions import action_for
from consolidation.checks.gx import Check
from consolidation.core.plan import Plan
from consolidation.core.planfile.objects import PlannedObject

RELATION_KINDS = ("table", "view", "materialized view", "sequence", "foreign table")
ROUTINE_KINDS = ("function", "procedure", "aggregate", "window function")
TYPE_KINDS = ("enum type", "domain", "composite type", "range type")
RECREATABLE = ("function", "procedure", "window function", "enum type", "domain", "composite type")

_LIST = """
SELECT x.kind, n.nspname, x.name, x.oid, x.detail, x.ref_oid, x.extra
  FROM pg_namespace AS n JOIN LATERAL (
    SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' WHEN 'w' THEN 'window function'
                          ELSE 'function' END AS kind,
           p.proname::text AS name, p.oid, pg_get_function_identity_arguments(p.oid) AS detail,
           NULL::oid AS ref_oid, p.prosrc AS extra
      FROM pg_proc AS p
     WHERE p.pronamespace = n.oid
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                          AND d.deptype = 'e')
    UNION ALL
    SELECT CASE t.typtype WHEN 'e' THEN 'enum type' WHEN 'd' THEN 'domain' WHEN 'r' THEN 'range type'
                          ELSE 'composite type' END, t.typname::text, t.oid, '', NULL, NULL
      FROM pg_type AS t
     WHERE t.typnamespace = n.oid
       AND (t.typtype IN ('e', 'd', 'r')
            OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c'))
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                          AND d.deptype = 'e')
    UNION ALL
    SELECT 'trigger', c.relname || '.' || tg.tgname, tg.oid, c.relname::text, tg.tgfoid,
           CASE WHEN tg.tgqual IS NOT NULL THEN 'a WHEN clause'
                WHEN tg.tgconstraint <> 0 THEN 'a constraint trigger' END
      FROM pg_trigger AS tg JOIN pg_class AS c ON c.oid = tg.tgrelid
     WHERE c.relnamespace = n.oid AND NOT tg.tgisinternal
    UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          WHEN 'f' THEN 'foreign table' ELSE 'table' END, c.relname::text, c.oid, '', NULL, NULL
      FROM pg_class AS c
     WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND (d.deptype = 'e' OR (d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass
                                                   AND d.refobjid <> c.oid)))
  ) AS x ON TRUE
 WHERE n.nspname = ANY(%(schemas)s)
 ORDER BY 2, 1, 3, 5
"""

# What a routine or type depends on in the legacy schemas: argument, result and base types,
# and (for SQL-standard bodies) the relations it reads.
_LEGACY_DEPS = """
SELECT d.objid, pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid)
  FROM pg_depend AS d
 WHERE d.classid = ANY(ARRAY['pg_proc'::regclass, 'pg_type'::regclass]) AND d.objid = ANY(%(oids)s)
   AND d.deptype = 'n'
   AND COALESCE((SELECT t.typnamespace FROM pg_type t WHERE d.refclassid = 'pg_type'::regclass AND t.oid = d.refobjid),
                (SELECT c.relnamespace FROM pg_class c WHERE d.refclassid = 'pg_class'::regclass AND c.oid = d.refobjid),
                (SELECT p.pronamespace FROM pg_proc p WHERE d.refclassid = 'pg_proc'::regclass AND p.oid = d.refobjid))
       IN (SELECT oid FROM pg_namespace WHERE nspname = ANY(%(schemas)s))
 ORDER BY 1, 2
"""


@dataclass
class LegacyObject:
    kind: str  # one of RELATION_KINDS, ROUTINE_KINDS, TYPE_KINDS or "trigger"
    schema: str
    name: str  # for a trigger: table.trigger
    oid: int
    detail: str = ""  # a routine's identity arguments; a trigger's table
    decision: str = "unplanned"  # recreate | drop | carried | with_table | unplanned
    target: str | None = None  # recreate: the schema; carried: the target table
    reason: str | None = None  # drop: the plan's reason
    problem: str | None = None  # the plan asks for something impossible: blocking
    warning: str | None = None  # carried, but worth checking
    function_oid: int | None = None  # a trigger's function

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def display(self) -> str:
        """How people write it: a routine with its arguments."""
        return f"{self.qualified}({self.detail})" if self.kind in ROUTINE_KINDS else self.qualified

    @property
    def plan_says(self) -> str:
        return {"recreate": f"recreate in {self.target}", "drop": f"drop: {self.reason}",
                "carried": f"carried to {self.target}", "with_table": "goes with its table",
                "unplanned": "not in the plan"}[self.decision]

    def unplanned_message(self) -> str:
        fix = f"add `objects: - {{name: {self.qualified}, drop: reason}}` or `recreate: schema`"
        if self.kind == "trigger":
            fix = (f"add `objects: - {{name: {self.qualified}, drop: reason}}` (a trigger is carried only with a "
                   "copy step of its table)") if not self.warning else self.warning
        return f"{self.qualified} ({self.kind}) is not in the plan: {fix}"


def legacy_objects(conn, plan: Plan, schemas: list[str] | None = None) -> list[LegacyObject]:
    """Every object of the legacy schemas that no step moves, with what the plan decides."""
    schemas = list(plan.legacy_schemas) if schemas is None else schemas
    rows = conn.execute(_LIST, {"schemas": schemas}).fetchall()
    planned = {s.source for s in plan.steps}
    objs, bodies, flags = [], {}, {}
    for kind, schema, name, oid, detail, ref_oid, extra in rows:
        if kind in RELATION_KINDS and f"{schema}.{name}" in planned:
            continue
        objs.append(LegacyObject(kind, schema, name, oid, detail or "", function_oid=ref_oid))
        if kind in ROUTINE_KINDS:
            bodies[oid] = extra or ""
        elif kind == "trigger" and extra:
            flags[oid] = extra
    deps: dict[int, list[str]] = {}
    oids = [o.oid for o in objs if o.kind in ROUTINE_KINDS + TYPE_KINDS]
    if oids:
        for objid, what in conn.execute(_LEGACY_DEPS, {"oids": oids, "schemas": list(plan.legacy_schemas)}):
            deps.setdefault(objid, []).append(what)
    by_oid = {o.oid: o for o in objs if o.kind in ROUTINE_KINDS}
    for o in objs:
        if o.kind != "trigger":
            _decide(plan, o, deps.get(o.oid, []), bodies.get(o.oid, ""))
    for o in objs:
        if o.kind == "trigger":
            _decide_trigger(plan, o, by_oid.get(o.function_oid), flags.get(o.oid))
    return objs


def _decide(plan: Plan, o: LegacyObject, deps: list[str], body: str) -> None:
    entry: PlannedObject | None = plan.planned_object(o.schema, o.name)
    if entry is None:
        return
    if entry.drop is not None:
        o.decision, o.reason = "drop", entry.drop
        return
    o.decision, o.target = "recreate", entry.recreate
    if o.kind in RELATION_KINDS:
        o.problem = (f"{entry.label}: {o.qualified} is a {o.kind}; `recreate` applies to functions, procedures "
                     "and types - a table moves by a step (copy), or give it `drop: reason`")
    elif o.kind not in RECREATABLE:
        o.problem = (f"{entry.label}: a {o.kind} is not recreated by the tool; create it in {entry.recreate} "
                     "yourself and give the legacy one `drop: reason`")
    elif deps:
        o.problem = (f"{entry.label}: {o.display} ({o.kind}) uses legacy {', '.join(deps)}, which 4D drops; "
                     f"create it over the consolidated objects in {entry.recreate} yourself and give the legacy "
                     "one `drop: reason`")
    elif o.kind in ROUTINE_KINDS and _names_legacy(body, plan):
        o.problem = (f"{entry.label}: the body of {o.display} names a legacy schema "
                     f"({', '.join(_names_legacy(body, plan))}), which 4D drops; the body is copied verbatim: "
                     f"rewrite it over the consolidated tables in {entry.recreate} yourself and give the legacy "
                     "one `drop: reason`")


def _names_legacy(body: str, plan: Plan) -> list[str]:
    """Legacy schemas a routine's body qualifies a name with (`scraper.x`, `"scraper".x`)."""
    return [s for s in plan.legacy_schemas
            if re.search(r'(?<![\w$"])(' + re.escape(s) + r'|"' + re.escape(s.replace('"', '""')) + r'")\s*\.',
                         body, flags=0 if s != s.lower() else re.IGNORECASE)]


def _decide_trigger(plan: Plan, o: LegacyObject, function: LegacyObject | None, refused: str | None) -> None:
    table = o.detail
    entry = plan.planned_object(o.schema, o.name)
    step = plan.step_for_source(o.schema, table)
    if entry is not None and entry.drop is not None:
        o.decision, o.reason = "drop", entry.drop
        return
    if entry is not None:
        o.problem = (f"{entry.label}: a trigger is carried with its table's copy step, not recreated on its own; "
                     "write no entry (it is carried) or `drop: reason`")
        return
    if step is None or step.target is None:
        o.decision = "with_table"  # its table goes in 4D (a table nobody planned is reported itself)
        return
    if not action_for(step).carries_triggers or step.object != "table":
        return  # unplanned: a merge or union target is the application's table; say drop explicitly
    if refused:
        o.problem = (f"{o.qualified} (trigger) of {step.label} has {refused}, which is not carried; recreate it "
                     f"on {step.target} yourself and add `objects: - {{name: {o.qualified}, drop: reason}}`")
        return
    if function is not None and function.decision != "recreate":
        if function.decision == "drop":
            o.problem = (f"{o.qualified} (trigger) is carried to {step.target} but the plan drops its function "
                         f"{function.display}: give the function `recreate: schema`, or the trigger `drop: reason`")
        else:
            o.warning = (f"it is not carried to {step.target} while its function {function.qualified} is not in "
                         f"the plan: add `objects: - {{name: {function.qualified}, recreate: schema}}`, or "
                         f"`{{name: {o.qualified}, drop: reason}}`")
        return
    o.decision, o.target = "carried", step.target
    renamed = [f"{m.source} -> {t}" for t, m in step.columns.items() if m.source and m.source != t]
    if renamed or step.ignore:
        o.warning = (f"{o.qualified} is carried to {step.target}; its function reads columns by name, and the copy "
                     f"renames or leaves out {', '.join(renamed + list(step.ignore))}: check the function")


def unplanned(objs: list[LegacyObject], schema: str | None = None) -> list[LegacyObject]:
    return [o for o in objs if o.decision == "unplanned" and (schema is None or o.schema == schema)]


def problems(objs: list[LegacyObject]) -> list[LegacyObject]:
    return [o for o in objs if o.problem]


# ------------------------------------------------------------------ 4A gate
def gate_checks(conn, plan: Plan) -> list:
    """One check per recreated object: it exists where the plan put it."""
    lit = sql.Literal
    checks = []
    objs = legacy_objects(conn, plan)
    recreated = {o.oid: o for o in objs if o.decision == "recreate"}
    for o in recreated.values():
        if o.kind in ROUTINE_KINDS:
            q = sql.SQL("SELECT {o} AS missing WHERE NOT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n "
                        "ON n.oid = p.pronamespace WHERE n.nspname = {s} AND p.proname = {n} "
                        "AND pg_get_function_identity_arguments(p.oid) = {a})").format(
                o=lit(f"{o.target}.{o.name}({o.detail})"), s=lit(o.target), n=lit(o.name), a=lit(o.detail))
        else:
            q = sql.SQL("SELECT {o} AS missing WHERE NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n "
                        "ON n.oid = t.typnamespace WHERE n.nspname = {s} AND t.typname = {n})").format(
                o=lit(f"{o.target}.{o.name}"), s=lit(o.target), n=lit(o.name))
        checks.append(Check(name="object_recreated", table=f"{o.target}.{o.name}", kind="rows",
                            description=f"{o.kind} {o.display} is recreated in {o.target}", query=q.as_string(conn)))
    for o in objs:
        if o.decision != "carried":
            continue
        fn = recreated.get(o.function_oid)
        tgname = o.name.split(".", 1)[1]
        fn_match = (sql.SQL("n.nspname = {} AND p.proname = {}").format(lit(fn.target), lit(fn.name)) if fn
                    else sql.SQL("p.oid = {}").format(lit(o.function_oid)))
        q = sql.SQL("SELECT {o} AS missing WHERE NOT EXISTS (SELECT 1 FROM pg_trigger tg JOIN pg_proc p "
                    "ON p.oid = tg.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace WHERE tg.tgrelid = "
                    "to_regclass({t}) AND tg.tgname = {g} AND {f})").format(
            o=lit(f"{o.target}.{tgname}"), t=lit(_regclass_text(conn, o.target)), g=lit(tgname), f=fn_match)
        checks.append(Check(name="trigger_carried", table=o.target, kind="rows",
                            description=f"trigger {tgname} of {o.schema}.{o.detail} is on {o.target}"
                                        + (f", calling {fn.target}.{fn.name}" if fn else ""), query=q.as_string(conn)))
    return checks


def _regclass_text(conn, qualified: str) -> str:
    schema, table = qualified.split(".", 1)
    return sql.Identifier(schema, table).as_string(conn)
