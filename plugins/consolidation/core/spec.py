"""Target specs: what each consolidated table must look like, derived from plan + catalog.

A spec is built from the live source tables and the plan's mapping, never from
`CREATE TABLE ... LIKE ... INCLUDING ALL` (which would keep nextval() defaults on the
legacy sequences). Keys get their own identity in the target schema; foreign keys are
re-pointed at the targets of the tables they referenced; nothing refers back to a
legacy object. What depends on a step's action (its flows, its target's key and columns,
how a foreign key to it is re-pointed) is asked of the action (core.plan.action_of).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from psycopg import sql

from consolidation.core.catalog import Catalog, QualifiedName
from consolidation.core.columns.check import expression_type, lexical_problem, normalise_type, volatile_functions
from consolidation.core.columns.mapping import ColumnMap
from consolidation.core.columns.render import value_sql
from consolidation.core.plan import Plan, PlanError, Step, action_of


@dataclass
class Flow:
    """One target column and where its value comes from in one step."""

    target: str
    type: str
    source: str | None = None  # source column
    cast: str | None = None
    default: object = None
    provenance: str | None = None  # 'table' | 'key' for union bookkeeping columns
    mapping: ColumnMap | None = None  # the plan's entry (casts normalised); None: an unmapped column

    @property
    def computed(self) -> bool:
        """Filled by an expression, a map, a constant or a default only (no source column as it is)."""
        return self.mapping is not None and self.source is None

    def expr(self, step: Step, alias: str = "s", source_pk: list[str] | None = None) -> sql.Composable:
        """SQL expression computing this column from a source row aliased `alias`."""
        if self.mapping is not None:
            return value_sql(self.mapping, self.type, alias)
        if self.provenance == "table":
            return sql.SQL("CAST({} AS text)").format(sql.Literal(step.source))
        if self.provenance == "key":
            cols = source_pk or []
            if len(cols) == 1:
                return sql.SQL("CAST({} AS text)").format(sql.Identifier(alias, cols[0]))
            return sql.SQL("CAST(json_build_array({}) AS text)").format(
                sql.SQL(", ").join(sql.Identifier(alias, c) for c in cols))
        if self.source is None:
            base: sql.Composable = sql.SQL("NULL")
        else:
            base = sql.Identifier(alias, self.source)
            if self.cast:
                base = sql.SQL("CAST({} AS {})").format(base, sql.SQL(self.cast))
        if self.default is not None:
            base = sql.SQL("COALESCE({}, CAST({} AS {}))").format(base, sql.Literal(self.default), sql.SQL(self.type))
        return sql.SQL("CAST({} AS {})").format(base, sql.SQL(self.type))


@dataclass
class ColumnSpec:
    name: str
    type: str
    not_null: bool = False
    default: str | None = None  # expression text rendered by the catalog
    identity: bool = False


@dataclass
class ForeignKey:
    columns: list[str]
    ref_schema: str
    ref_table: str
    ref_columns: list[str]
    source: str  # the legacy constraint it re-points
    not_valid: bool = False  # onto a target that held rows before the plan: added NOT VALID, validated by 4B
    step: str = ""  # the step whose source had it

    @property
    def name(self) -> str:
        return _short(f"{self.ref_table}_{'_'.join(self.columns)}_fkey")


@dataclass
class UncarriedKey:
    """A legacy foreign key that 4A does not carry: dropped by the plan (`drop_foreign_keys`,
    `reason` is the plan's) or impossible (`reason` says why: the 4A gate fails on it)."""

    step: str
    label: str
    constraint: str
    definition: str
    reason: str

    def line(self, source: str, target: str) -> str:
        return f"{self.label}: foreign key {self.constraint} ({self.definition}) of {source} not carried to {target}: {self.reason}"


@dataclass
class IndexSpec:
    name: str
    columns: list[str]
    unique: bool
    method: str


@dataclass
class TargetSpec(QualifiedName):
    schema: str
    table: str
    kind: str  # table | view
    steps: list[Step]
    exists: bool = False
    columns: list[ColumnSpec] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    uniques: list[list[str]] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    indexes: list[IndexSpec] = field(default_factory=list)
    view_definition: str | None = None
    notes: list[str] = field(default_factory=list)
    flows: dict[str, list[Flow]] = field(default_factory=dict)  # by step name
    source_pks: dict[str, list[str]] = field(default_factory=dict)  # by step name
    key: list[str] = field(default_factory=list)  # target columns identifying a source row
    created_by_plan: bool = False  # 4A created it (the ledger says so)
    added_types: dict[str, str] = field(default_factory=dict)  # add_columns' types as the server spells them
    dropped_foreign_keys: list[UncarriedKey] = field(default_factory=list)  # the plan's drop_foreign_keys
    foreign_key_problems: list[UncarriedKey] = field(default_factory=list)  # cannot be carried: the 4A gate fails

    @property
    def exists_before_plan(self) -> bool:
        return self.exists and not self.created_by_plan

    def column(self, name: str) -> ColumnSpec | None:
        return next((c for c in self.columns if c.name == name), None)


def source_ident(step: Step) -> sql.Identifier:
    return sql.Identifier(step.source_schema, step.source_table)


def _short(name: str) -> str:
    """`name` within PostgreSQL's 63 characters: cut, plus 8 hex digits of its sha256, so the
    same long name gives the same short one in every process (hash() differs per process)."""
    return name if len(name) <= 63 else name[:54] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]


def resolve_type(conn, type_text: str, label: str) -> str:
    """A plan-given type as the server spells it (format_type, modifiers kept: `varchar(20)` is
    `character varying(20)`), or a PlanError naming the step."""
    return normalise_type(conn, type_text, label)


# ---------------------------------------------------------------------------
def derive_specs(conn, plan: Plan, catalog: Catalog, created: set[str] | frozenset = frozenset()) -> dict[str, TargetSpec]:
    """Specs of every target the plan writes, in plan order.

    `created` names the targets an earlier 4A run created (from the ledger), so a
    re-run treats them as ours rather than as tables that existed before the plan.
    """
    specs: dict[str, TargetSpec] = {}
    for step in plan.migrating_steps():
        spec = specs.get(step.target)
        if spec is None:
            spec = specs[step.target] = TargetSpec(step.target_schema, step.target_table, "table", [])
            rel = catalog.relation(step.target_schema, step.target_table)
            if rel is not None and rel.kind != "table" and not step.is_recreated_view:
                raise PlanError(f"{step.label}: target {step.target} is a {rel.kind}, not a table: a {step.action} "
                                "writes rows into a table; name a table (or a new name, which 4A creates) as its target")
            spec.exists = rel is not None
            spec.created_by_plan = step.target in created
        spec.steps.append(step)
        for name, added in step.add_columns.items():
            spec.added_types[name] = resolve_type(conn, added.type, f"{step.label}: add_columns.{name}")
    for spec in specs.values():
        _fill(conn, plan, catalog, spec)
    _repoint_foreign_keys(conn, plan, catalog, specs)
    return specs


def source_relation(catalog: Catalog, step: Step):
    """The step's source relation in the catalog (a PlanError when it is gone)."""
    rel = catalog.relation(step.source_schema, step.source_table)
    if rel is None:
        raise PlanError(f"{step.label}: source {step.source} does not exist; run the inventory")
    return rel


def flows_for(conn, catalog: Catalog, step: Step, existing=None) -> list[Flow]:
    """Target columns of a step and how each is computed from the source row (its action says),
    proven complete (every mapping of the plan fills its column, no column is filled twice) and
    checked by the database (every computed column, typed against its target)."""
    if existing is not None and existing.kind != "table" and not step.is_recreated_view:
        existing = None  # a view as a target is refused in one line (catalog_problems, derive_specs)
    flows = action_of(step).flows(conn, catalog, step, existing)
    check_flows(conn, step, flows)
    return flows


def check_flows(conn, step: Step, flows: list[Flow]) -> None:
    """No mapping dropped, none doubled, every computed one a scalar expression of its type."""
    filled: dict[str, int] = {}
    for f in flows:
        filled[f.target] = filled.get(f.target, 0) + 1
    twice = sorted(t for t, n in filled.items() if n > 1)
    if twice:
        raise PlanError(f"{step.label}: target column(s) {', '.join(twice)} would be filled twice (a mapping, and a "
                        "source column of the same name kept as it is); list that source column under `ignore` "
                        "or map it to another column")
    dropped = [t for t in list(step.columns) + list(step.key) if t not in filled]
    if dropped:
        raise PlanError(f"{step.label}: the plan maps {', '.join(dropped)}, but the step would not fill "
                        f"{'it' if len(dropped) == 1 else 'them'}; this is a defect of the tool: report it")
    computed = [f for f in flows if f.mapping is not None and f.mapping.kind != "column"]
    for f in computed:  # the plan's own SQL text, before the server sees any of it
        problem = lexical_problem(f.mapping.expr) if f.mapping.expr is not None else None
        if problem:
            raise PlanError(f"{step.label}: columns.{f.target}: {problem}")
    if not computed:
        return
    src = source_ident(step)
    try:  # one round trip for the whole step; column by column only to name the refused one
        expression_type(conn, sql.SQL("ROW({})").format(sql.SQL(", ").join(f.expr(step) for f in computed)),
                        src, step.label)
    except PlanError:
        for f in computed:
            expression_type(conn, f.expr(step), src, f"{step.label}: columns.{f.target} ({f.mapping.describe()})")
        raise
    if volatile_functions(conn, [f.expr(step) for f in computed], src):  # one probe; per column only to name it
        for f in computed:
            called = volatile_functions(conn, [f.expr(step)], src)
            if called:
                raise PlanError(f"{step.label}: columns.{f.target} ({f.mapping.describe()}) calls the volatile "
                                f"function(s) {', '.join(called)}: its value changes at every call, so the 4B gate, "
                                "which computes each expression again on the source side, could never prove it; "
                                "compute it from the source row only, or fill it by the target's default")


def _fill(conn, plan: Plan, catalog: Catalog, spec: TargetSpec) -> None:
    """Columns, key and constraints of one target: its first step's action derives them."""
    existing = catalog.relation(spec.schema, spec.table)
    action_of(spec.steps[0]).fill_spec(conn, plan, catalog, spec, existing)


def carry_table_details(conn, catalog: Catalog, spec: TargetSpec, step: Step, rename: dict[str, str]) -> None:
    """The source table's unique and check constraints and plain indexes, on the renamed
    columns of a target created from it alone (what cannot be carried over is noted)."""
    constraints, indexes = catalog.table_details(conn, step.source_schema, step.source_table)
    for con in constraints:
        if con.type == "u" and all(c in rename for c in con.columns):
            spec.uniques.append([rename[c] for c in con.columns])
        elif con.type == "c":
            if all(rename.get(c) == c for c in con.columns):
                spec.checks.append((_short(f"{spec.table}_{con.name}"), con.definition))
            else:
                spec.notes.append(f"check {con.name} ({con.definition}) not carried over: it names renamed columns")
    for ix in indexes:
        if ix.columns and not ix.predicate and all(c in rename for c in ix.columns):
            cols = [rename[c] for c in ix.columns]
            spec.indexes.append(IndexSpec(_short(f"{spec.table}_{'_'.join(cols)}_idx"), cols, ix.unique, ix.method))
        else:
            spec.notes.append(f"index {ix.name} not carried over (expression or partial): {ix.definition}")


def portable_default(default: str, plan: Plan, spec: TargetSpec, step: Step) -> str | None:
    """A source default, unless it names a legacy object (then dropped, with a note)."""
    for legacy in plan.legacy_schemas:
        if re.search(rf'(^|[^\w"]){re.escape(legacy)}\.|"{re.escape(legacy)}"\.', default):
            spec.notes.append(f"default {default!r} of {step.source} refers to legacy schema {legacy}: not carried over")
            return None
    return default


def _repoint_foreign_keys(conn, plan: Plan, catalog: Catalog, specs: dict[str, TargetSpec]) -> None:
    """Each legacy FK of a step's source becomes an FK between the targets of both ends, onto
    targets that existed before the plan too (NOT VALID there: their own rows are validated by
    4B once the step has loaded). One the plan drops (`drop_foreign_keys`) is recorded with its
    reason; one that cannot be carried is a problem the 4A gate fails on, with the reason."""
    for spec in specs.values():
        if spec.kind != "table":
            continue
        for step in spec.steps:
            fks = [] if step.object == "view" else [
                c for c in catalog.table_details(conn, step.source_schema, step.source_table)[0] if c.type == "f"]
            names = sorted(c.name for c in fks)
            for name in step.drop_foreign_keys:
                if name not in names:
                    raise PlanError(f"{step.label}: drop_foreign_keys names {name!r}, which is no foreign key of "
                                    f"{step.source} ({'its foreign keys: ' + ', '.join(names) if names else 'it has none'}); "
                                    "fix the constraint name")
            for con in fks:
                reason = step.drop_foreign_keys.get(con.name)
                if reason is not None:
                    spec.dropped_foreign_keys.append(UncarriedKey(step.name, step.label, con.name, con.definition, reason))
                    continue
                fk, problem = _carried(conn, plan, specs, spec, step, con)
                if problem:
                    spec.foreign_key_problems.append(UncarriedKey(step.name, step.label, con.name, con.definition,
                                                                  problem + "; fix it, or list the constraint under "
                                                                  "the step's drop_foreign_keys with a reason"))
                elif not any((f.columns, f.ref_schema, f.ref_table, f.ref_columns) ==
                             (fk.columns, fk.ref_schema, fk.ref_table, fk.ref_columns) for f in spec.foreign_keys):
                    spec.foreign_keys.append(fk)


def _carried(conn, plan: Plan, specs: dict[str, TargetSpec], spec: TargetSpec, step: Step,
             con) -> tuple[ForeignKey | None, str | None]:
    """The target FK re-pointing legacy constraint `con` of `step`'s source, or why there is none."""
    if len(spec.steps) > 1:
        return None, (f"{spec.qualified} is fed by {len(spec.steps)} steps, and a foreign key of one source would "
                      "also constrain the other sources' rows")
    rename = {f.source: f.target for f in spec.flows[step.name] if f.source}
    rename.update({s: t for t, s in step.key.items()})
    lost = [c for c in con.columns if c not in rename]
    if lost:
        return None, f"its column(s) {', '.join(lost)} have no column of their own in {spec.qualified}"
    cols = [rename[c] for c in con.columns]
    not_valid = spec.exists_before_plan
    if con.ref_schema not in plan.legacy_schemas:  # it points outside the legacy schemas: it stays where it points
        return ForeignKey(cols, con.ref_schema, con.ref_table, con.ref_columns, con.name, not_valid, step.name), None
    referenced = f"{con.ref_schema}.{con.ref_table}"
    ref_step = plan.step_for_source(con.ref_schema, con.ref_table)
    if ref_step is None:
        return None, f"it references {referenced}, which the plan does not list"
    ref_spec = specs.get(ref_step.target) if ref_step.target else None
    ref_action = action_of(ref_step)
    ref_cols = ref_action.fk_columns(ref_step, ref_spec, con.ref_columns) if ref_spec is not None else None
    if ref_cols is None:
        how = f"{ref_step.action} into {ref_step.target}" if ref_step.target else ref_step.action
        return None, f"it references {referenced}, which is not migrated one-to-one ({how}): its rows keep no key to point at"
    if None in ref_cols:
        return None, (f"it references {referenced}({', '.join(con.ref_columns)}), whose column(s) "
                      f"{', '.join(c for c, t in zip(con.ref_columns, ref_cols) if t is None)} are not migrated")
    if not (_unique_in_spec(ref_spec, ref_step, ref_cols)
            or (ref_spec.exists and unique_in_catalog(conn, ref_spec.schema, ref_spec.table, ref_cols))):
        problem = ref_action.fk_problem(ref_step, ref_spec, ref_cols)
        return None, problem or (f"{ref_spec.qualified}({', '.join(ref_cols)}) has no primary key, unique constraint "
                                 "or unique index, which a foreign key must reference")
    for c, rc in zip(cols, ref_cols):
        mine, theirs = _column_type(spec, c), _column_type(ref_spec, rc)
        if mine and theirs and not types_fit(mine, theirs):
            return None, (f"{spec.qualified}.{c} is {mine} but {ref_spec.qualified}.{rc} is {theirs}; "
                          f"cast it in the plan (columns.{c}: {{from: ..., cast: {theirs}}}) or fix a target")
    return ForeignKey(cols, ref_spec.schema, ref_spec.table, ref_cols, con.name, not_valid, step.name), None


def _unique_in_spec(spec: TargetSpec, step: Step, columns: list[str]) -> bool:
    """Whether the spec (what 4A creates or adds) makes these columns a key."""
    wanted = sorted(columns)
    keys = [spec.primary_key, *spec.uniques, *(ix.columns for ix in spec.indexes if ix.unique)]
    keys += [[n] for s in spec.steps for n, a in s.add_columns.items() if a.unique]
    return any(k and sorted(k) == wanted for k in keys)


def _column_type(spec: TargetSpec, column: str) -> str | None:
    col = spec.column(column)
    return col.type if col is not None else spec.added_types.get(column)


_TYPE_FAMILIES = ({"smallint", "integer", "bigint"}, {"text", "character varying", "character"},
                  {"numeric"}, {"real", "double precision"})


def types_fit(a: str, b: str) -> bool:
    """Whether a foreign key column of type `a` may reference one of type `b` (the same type,
    modifiers aside, or two of one family PostgreSQL compares without a cast: integers, strings)."""
    base_a, base_b = re.sub(r"\(.*\)$", "", a).strip(), re.sub(r"\(.*\)$", "", b).strip()
    return base_a == base_b or any(base_a in f and base_b in f for f in _TYPE_FAMILIES)


def unique_in_catalog(conn, schema: str, table: str, columns: list[str]) -> bool:
    """Whether the live table has a unique index (a primary key or unique constraint has one) on
    exactly these columns, not partial and without expressions: what a foreign key may reference."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index AS i WHERE i.indrelid = to_regclass(%s) AND i.indisunique "
        "AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = cardinality(%s::text[]) "
        "AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute AS a "
        "     WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey[0:i.indnkeyatts - 1])) "
        "    = (SELECT array_agg(c ORDER BY c) FROM unnest(%s::text[]) AS c))",
        (sql.Identifier(schema, table).as_string(conn), columns, columns)).fetchone()[0]


# ---------------------------------------------------------------------------
def compare_existing(spec: TargetSpec, catalog: Catalog) -> list[str]:
    """Column-by-column diff between what the plan expects and an existing target."""
    rel = catalog.relation(spec.schema, spec.table)
    if rel is None:
        return []
    diff: list[str] = []
    if spec.kind == "view":
        if rel.kind != "view":
            diff.append(f"{spec.qualified} exists as a {rel.kind}; the plan recreates it as a view")
        return diff
    if rel.kind != "table":
        return [f"{spec.qualified} exists as a {rel.kind}; the plan needs a table"]
    filled: set[str] = set()
    for step in spec.steps:
        added = step.add_columns
        for f in spec.flows.get(step.name, []):
            filled.add(f.target)
            col = rel.columns.get(f.target)
            if col is None:
                if f.target in added:
                    continue
                diff.append(f"  {f.target}: missing in {spec.qualified} (the plan fills it from "
                            f"{step.source}.{f.source or '<default>'} as {f.type})")
            elif col.type != f.type and action_of(step).checks_flow_type(step, f.target):
                diff.append(f"  {f.target}: {spec.qualified} has {col.type}, the plan gives {f.type} "
                            f"(from {step.source}.{f.source}); add `cast: {col.type}` or fix the target")
        for name, a in added.items():
            col = rel.columns.get(name)
            wanted = spec.added_types.get(name, a.type)
            if col is not None and col.type != wanted:
                diff.append(f"  {name}: {spec.qualified} already has it as {col.type}, the plan adds it as {wanted}")
    # A merge only inserts source rows that match no target row; such a row missing a
    # required column is quarantined with its reason, so only copies must fill them all.
    if not any(action_of(step).requires_every_column for step in spec.steps):
        return diff
    for col in rel.columns.values():
        if col.name not in filled and col.not_null and col.default is None and not col.identity:
            diff.append(f"  {col.name}: NOT NULL without default in {spec.qualified}, and no step fills it")
    return diff
