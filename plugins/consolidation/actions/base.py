"""The interface every step action implements, and the SQL pieces they share.

An action is everything the engine knows about one kind of step (pgroll's one file per
operation): adding an action is one module here plus one line in actions/__init__.py.
Core code (the plan parser, the spec derivation) reaches an action through the registry
in core.plan (`action_of(step)`), filled by consolidation.actions; upper layers use
`consolidation.actions.action_for(step)`. Nothing outside actions/ branches on a step's
action name. The contract, by phase (defaults here are copy's behaviour):

plan (validate the step, core.plan)
    name, in_plan          registry name; in_plan: usable as `action:` (False for a variant)
    described_as           its steps in messages ("`key` applies to merge steps only")
    plan_keys              step keys it accepts besides the common ones (source, action, rows,
                           object, view_mode, quarantine_threshold); any other is refused,
                           naming the step and the key (`refused_key`, or who accepts it)
    required_keys          keys it needs, refused with `missing_key(...)` when absent or empty
    resolve(step)          the action that handles this step (copy of a view with view_mode:
                           recreate -> recreate_view); raises PlanError when none can
    parse(step, entry, label)   its own keys into the Step (PlanError naming the step)
    shared_target_rule,    how several steps may feed one target (None: they may not)
    shared_target_problem(target, steps)
    catalog_problems(step, source_columns, target_columns, catalog)   against an existing target
target (spec, core.spec, 4A)
    has_target             False: no target, no 4A/4B/4C part (delete)
    flows(conn, catalog, step, existing)   the target columns and how each is computed
    fill_spec(...)         a target's columns, key and constraints (first step's action);
                           target_key(spec, existing) and new_target(...) are its parts
    fk_columns / fk_problem    how a foreign key to its source is re-pointed at its target
    checks_flow_type(step, column), requires_every_column   compare_existing's tolerances
moves (4B, phases.migrate: start / complete)
    moves_rows, verify_path    False: 4B only verifies it (StepResult.path = verify_path)
    validate(step, spec)   problems that make the step impossible against the specs
    pre_statements / statement   the SQL moving its rows (one statement, set-based or per row)
    load_statement         the same rows as a plain INSERT ... SELECT into an empty target 4A made
    upstream(plan, step)   steps that must run first besides foreign-key parents
proves (checks.reconcile, checks.gate_4b)
    compared_columns, target_filter, projection(plan, step, spec)   what reconcile compares
    compared_description   the rows_present check's "hashed over ..." words
    owns_target_rows(step, spec)   True: the step gets no_unexpected_rows
    gate_checks(plan, step, spec, source_side)   its own row checks: (name, description, query)
registers (phases.registry, 4C) and is inventoried (checks.inventory)
    registry_columns(step, spec, source), registry_filter(conn, step, spec, source)
    inventory_notes(step, target_relation)   informational findings: (code, message)
rollback
    undo_note(step, spec)  how to undo it, in words
"""
from __future__ import annotations

from dataclasses import replace

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core.catalog import row_hash_of
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, PlanError, Step, action_of
from consolidation.core.columns.check import expression_type
from consolidation.core.columns.mapping import ColumnMap
from consolidation.core.spec import (ColumnSpec, Flow, TargetSpec, flows_for, resolve_type, source_ident,
                                     source_relation)

TARGET_KEYS = frozenset({"target", "columns", "add_columns", "ignore", "freshness", "drop_foreign_keys"})


class ActionError(Refusal):
    """An action cannot answer for a step (e.g. no column tells a merge source's rows apart)."""


class Action:
    name = "?"
    in_plan = True
    described_as = "?"  # in "`key` applies to merge steps only"

    # -- plan -----------------------------------------------------------------
    plan_keys: frozenset[str] = TARGET_KEYS
    required_keys: tuple[str, ...] = ("target",)
    shared_target_rule: str | None = None  # e.g. "all `union` (...)": several steps may feed one target
    # the source table's triggers go with it to its target (a copy: the table moves whole); a merge
    # or union target is the application's own table, whose triggers the plan must decide
    carries_triggers: bool = False

    def resolve(self, step: Step) -> "Action":
        """The action handling `step`; a recreated view is copy's (its variant recreate_view)."""
        if step.is_recreated_view:
            raise PlanError(f"{step.label}: a recreated view must use action copy")
        return self

    def refused_key(self, label: str, key: str) -> str | None:
        """Message refusing a key this action does not accept (None: the parser says who accepts it)."""
        return None

    def missing_key(self, step: Step, label: str, key: str) -> str:
        if key == "target":
            return f"{label}: action {step.action} needs a `target` (schema.table)"
        return f"{label}: action {step.action} needs `{key}`"

    def parse(self, step: Step, entry: dict, label: str) -> None:
        """Read this action's own keys from the plan entry into `step`."""

    def shared_target_problem(self, target: str, steps: list[Step]) -> str | None:
        """When every step feeding `target` is this action: what is wrong (None: fine)."""
        return None

    def catalog_problems(self, step: Step, src_cols: dict, tgt_cols: dict, catalog) -> list[str]:
        """The step against a target that exists: every mapped column has a place, every source column a home."""
        target = catalog.relation(step.target_schema, step.target_table) if catalog is not None else None
        if target is not None and target.kind != "table":
            return [f"{step.label}: target {step.target} is a {target.kind}, not a table: a {step.action} writes rows "
                    f"into a table; name a table (or a new name, which 4A creates) as its target"]
        problems = []
        known = set(tgt_cols) | set(step.add_columns)
        for col in list(step.columns) + list(step.key):
            if col not in known:
                problems.append(
                    f"{step.label}: maps to {step.target}.{col}, which does not exist; "
                    f"fix the name or declare it under add_columns (existing: {', '.join(sorted(tgt_cols))})")
        mapped = step.mapped_source_columns() | set(step.key.values()) | self.kept_source_columns(step, catalog)
        for col in src_cols:
            if col in mapped or col in step.ignore or col in known:
                continue
            problems.append(
                f"{step.label}: source column {step.source}.{col} has no column in {step.target}; "
                "map it under `columns`, add it with add_columns, or list it under `ignore` with a reason")
        return problems

    def kept_source_columns(self, step: Step, catalog) -> set[str]:
        """Source columns that live on in the target without a column of their own name."""
        return set()

    # -- target (spec) ------------------------------------------------------------
    has_target = True
    requires_every_column = True  # an existing target's NOT NULL columns must all be filled

    def flows(self, conn, catalog, step: Step, existing=None) -> list[Flow]:
        """Target columns of the step and how each is computed from the source row."""
        return column_flows(conn, step, source_relation(catalog, step), existing)

    def fill_spec(self, conn, plan: Plan, catalog, spec: TargetSpec, existing) -> None:
        """Columns, key and constraints of `spec` (called on its first step's action)."""
        for step in spec.steps:
            spec.flows[step.name] = flows_for(conn, catalog, step, existing)
            spec.source_pks[step.name] = source_relation(catalog, step).primary_key
        # The key identifies, in target terms, which source row a target row came from.
        spec.key = self.target_key(spec, existing)
        if spec.exists:
            spec.columns = [ColumnSpec(c.name, c.type, c.not_null, c.default, bool(c.identity))
                            for c in existing.columns.values()]
            spec.primary_key = list(existing.primary_key)
            return
        self.new_target(conn, plan, catalog, spec)

    def target_key(self, spec: TargetSpec, existing) -> list[str]:
        """The source's primary key, renamed; else the existing target's primary key."""
        first = spec.steps[0]
        rename = {f.source: f.target for f in spec.flows[first.name] if f.source}
        pk = spec.source_pks[first.name]
        if pk and all(c in rename for c in pk):
            return [rename[c] for c in pk]
        if existing is not None:
            return list(existing.primary_key)
        return []

    def new_target(self, conn, plan: Plan, catalog, spec: TargetSpec) -> None:
        """Columns and constraints of a target 4A creates."""
        raise NotImplementedError(f"{self.name} creates no target")

    def fk_columns(self, step: Step, spec: TargetSpec | None, columns: list[str]) -> list[str | None] | None:
        """Target columns holding the source's `columns` (None inside: not migrated), for a
        foreign key that referenced this step's source; None: not migrated one-to-one."""
        rename = {f.source: f.target for f in spec.flows.get(step.name, []) if f.source}
        return [rename.get(c) for c in columns]

    def fk_problem(self, step: Step, spec: TargetSpec, columns: list[str]) -> str | None:
        """Why a foreign key may not point at these target columns (None: it may)."""
        return None

    def checks_flow_type(self, step: Step, column: str) -> bool:
        """Whether an existing target's type of `column` must equal the flow's type."""
        return True

    # -- moves (4B) ---------------------------------------------------------------
    moves_rows = True
    batches = False  # True: with `batch_rows`, `statement` may run over key ranges of the source (phases.load.batches)
    verify_path = ""  # StepResult.path of a step that moves nothing

    def validate(self, step: Step, spec: TargetSpec | None) -> list[str]:
        """Problems that make the step impossible against the virtual schema."""
        return []

    def pre_statements(self, plan: Plan, step: Step, spec: TargetSpec) -> list[sql.Composable]:
        """Statements run once before the rows move (same transaction)."""
        return []

    def statement(self, plan: Plan, step: Step, spec: TargetSpec, source: sql.Composable,
                  run_id: str) -> sql.Composable:
        """One statement moving the rows of `source` (the source relation, aliased s).

        It returns one row: (inserted, merged). The same statement serves the
        set-based path (source = the legacy table) and the per-row path
        (source = jsonb_populate_record(NULL::legacy, $1)).
        """
        raise NotImplementedError

    def load_statement(self, plan: Plan, step: Step, spec: TargetSpec, source: sql.Composable) -> sql.Composable | None:
        """A plain `INSERT ... SELECT` of every row of `source` into an empty target 4A created
        (no anti-join, no RETURNING: the row count is the statement's); None: the action has
        none and always runs `statement` (phases.load.bulk decides when this applies)."""
        return None

    def upstream(self, plan: Plan, step: Step) -> list[Step]:
        """Steps that must have run before this one (besides those filling its foreign keys' tables)."""
        return []

    # -- proves (reconcile, 4B gate) ------------------------------------------------
    compared_description = "all mapped columns"

    def compared_columns(self, step: Step, spec: TargetSpec) -> list[Flow]:
        """The target columns whose values must equal the source's."""
        return spec.flows[step.name]

    def target_filter(self, step: Step, spec: TargetSpec, source_rows: sql.Composable) -> sql.Composable:
        """WHERE clause restricting the target to the rows this step is responsible for."""
        if spec.exists_before_plan or len(spec.steps) > 1:
            return key_in(spec, source_rows)
        return sql.SQL("TRUE")

    def projection(self, plan: Plan, step: Step, spec: TargetSpec, *,
                   quarantined: bool = True) -> tuple[sql.Composed, sql.Composed, list[str]]:
        """(source side, target side, key) that reconciliation compares row by row.

        Each side is `SELECT <key...>, h`: the key columns plus a 64-bit hash of the compared columns,
        both cast to the target's types; the source without its quarantined rows (one row per
        remaining source row: reconcile.checksums takes its count as the read count), the target
        restricted to the rows of this step. quarantined=False: the caller saw no quarantined row
        of this step, so the source side carries no quarantine filter (whose per-row subplan also
        keeps PostgreSQL from scanning in parallel: 2x slower, benchmarks/bench_floor.py).
        """
        types = {f.target: f.type for f in spec.flows[step.name]}
        cmp_cols = [f.target for f in self.compared_columns(step, spec)]
        key = list(spec.key)
        rows = projected_source(step, spec, source_ident(step), not_quarantined(plan, step) if quarantined else None)
        key_sel = sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier("r", k)) for k in key)
        src = sql.SQL("SELECT {}{} AS h FROM ({}) AS r").format(key_sel, row_hash(cmp_cols, "r", types), rows)
        tkey_sel = sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier("t", k)) for k in key)
        tgt = sql.SQL("SELECT {}{} AS h FROM {} AS t WHERE {}").format(
            tkey_sel, row_hash(cmp_cols, "t", types), spec.ident, self.target_filter(step, spec, rows))
        return src, tgt, key

    def value_checks(self, plan: Plan, step: Step, spec: TargetSpec) -> list[tuple[str, str, list[Flow],
                                                                              sql.Composable | None]]:
        """The 4B gate's column-by-column comparisons: (name, which rows, the flows compared,
        a condition on the source rows r or None). Together they cover every column the step fills."""
        return [("values_equal", "", self.compared_columns(step, spec), None)]

    def owns_target_rows(self, step: Step, spec: TargetSpec) -> bool:
        """True when every row of the target (of this step) must come from its source: the 4B
        gate then also proves no_unexpected_rows (no duplicates, no altered rows)."""
        return not spec.exists_before_plan and len(spec.steps) == 1

    def gate_checks(self, plan: Plan, step: Step, spec: TargetSpec,
                    source_side: sql.Composable) -> list[tuple[str, str, sql.Composable]]:
        """This action's own 4B row checks, as (name, description, query returning the offending rows)."""
        threshold = step.quarantine_threshold
        return [("quarantine_within_threshold", f"quarantined rows of {step.source} <= {threshold}", sql.SQL(
            "SELECT step, count(*) AS quarantined, min(reason) AS first_reason FROM {q} WHERE step = {n} "
            "GROUP BY step HAVING count(*) > {t}").format(
            q=tool_ident(plan, "quarantine"), n=sql.Literal(step.name), t=sql.Literal(threshold)))] + [
            ("foreign_key_validated", f"{spec.qualified}'s foreign key {fk.name} (legacy {fk.source}), added NOT VALID "
             "onto a table with rows of its own, was validated after the step loaded: every row of the table "
             "resolves (offending rows: constraint, the row's key, what it refers to)", validated_check(spec, fk))
            for fk in spec.foreign_keys if fk.not_valid and fk.step == step.name]

    # -- registers (4C), inventory ----------------------------------------------------
    def registry_columns(self, step: Step, spec: TargetSpec, source) -> dict[str, tuple[str, object]]:
        """Legacy column -> (target column, default) the registry offers under the legacy name:
        the columns 4B proves equal to the source."""
        by_legacy: dict[str, tuple[str, object]] = {}
        for f in self.compared_columns(step, spec):
            if f.source and f.provenance is None:
                by_legacy.setdefault(f.source, (f.target, f.default))
        return by_legacy

    def registry_filter(self, conn, step: Step, spec: TargetSpec, source) -> tuple[str, str, str | None] | None:
        """(column, op, value) selecting the step's rows in a shared target (None: all rows)."""
        return None

    def inventory_notes(self, step: Step, target) -> list[tuple[str, str]]:
        """Informational findings (code, message) about the step's target as the catalog has it."""
        return []

    # -- rollback ------------------------------------------------------------------------
    def undo_note(self, step: Step, spec: TargetSpec) -> str:
        return ""


# ---------------------------------------------------------------------------
def validate_foreign_keys(conn, spec: TargetSpec) -> list[str]:
    """VALIDATE each foreign key 4A added NOT VALID onto this target (one that held rows before
    the plan), once its step has loaded: each in a savepoint; one the table's rows violate stays
    NOT VALID (the 4B gate's foreign_key_validated names it and the rows). Returns those lines."""
    left = []
    for fk in spec.foreign_keys:
        if not fk.not_valid:
            continue
        row = conn.execute("SELECT convalidated FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                           (spec.ident.as_string(conn), fk.name)).fetchone()
        if row is None or row[0]:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(spec.ident, sql.Identifier(fk.name)))
        except psycopg.errors.ForeignKeyViolation as exc:
            left.append(f"foreign key {fk.name} of {spec.qualified} stays NOT VALID: {exc.diag.message_detail or exc}")
    return left


def validated_check(spec: TargetSpec, fk) -> sql.Composed:
    """Rows of the target its NOT VALID foreign key `fk` does not resolve, by the row's key, and a
    row naming the constraint when it is still not validated (4B has not validated it)."""
    key = spec.primary_key or fk.columns
    cols = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier("c", c)) for c in fk.columns)
    return sql.SQL(
        "SELECT {n}::text AS constraint_name, jsonb_build_object({k})::text AS row_key, "
        "'refers to nothing: ' || jsonb_build_object({cols})::text AS problem FROM {t} AS c "
        "WHERE {notnull} AND NOT EXISTS (SELECT 1 FROM {p} AS p WHERE {match}) "
        "UNION ALL SELECT {n}::text, NULL, 'still NOT VALID: re-run the step (4B validates it after loading)' "
        "WHERE EXISTS (SELECT 1 FROM pg_constraint AS k JOIN pg_class AS kc ON kc.oid = k.conrelid "
        "JOIN pg_namespace AS kn ON kn.oid = kc.relnamespace WHERE kn.nspname = {ts} AND kc.relname = {tt} "
        "AND k.conname = {n} AND NOT k.convalidated)").format(
        n=sql.Literal(fk.name), t=spec.ident, p=sql.Identifier(fk.ref_schema, fk.ref_table),
        k=sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier("c", c)) for c in key),
        cols=cols, ts=sql.Literal(spec.schema), tt=sql.Literal(spec.table),
        notnull=sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier("c", c)) for c in fk.columns),
        match=sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("p", r), sql.Identifier("c", c))
                                    for c, r in zip(fk.columns, fk.ref_columns)))


def column_flows(conn, step: Step, rel, existing, skip: set[str] = frozenset()) -> list[Flow]:
    """One flow per source column (renamed or cast by the plan's `columns`, minus `ignore`d and
    `skip`ped ones, and minus those only an expression or map reads), then every other mapping
    of the plan: a second target column fed by the same source column, expressions, maps,
    constants and defaults. Each mapping of the plan yields exactly one flow."""
    flows: list[Flow] = []
    plain: dict[str, ColumnMap] = {}  # the first plain mapping of each source column carries its identity
    for m in step.columns.values():
        if m.source is not None and m.source not in rel.columns:
            raise PlanError(f"{step.label}: columns.{m.target} maps from {m.source!r}, which {step.source} does not have "
                            f"(it has {', '.join(rel.columns)}); fix the column name")
        if m.plain and m.source not in plain:
            plain[m.source] = m
    read_by_computed = set().union(*(m.referenced_columns() for m in step.columns.values() if not m.plain))
    for col in rel.columns.values():
        if col.name in step.ignore:
            continue
        m = plain.get(col.name)
        if m is None:
            if col.name in skip or col.name in read_by_computed:
                continue  # it lives on through the mappings that read it
            flows.append(Flow(col.name, col.type, col.name))
            continue
        flows.append(mapped_flow(conn, step, m, existing, col.type, carries_source=True))
    for m in step.columns.values():
        if m.plain and plain.get(m.source) is m:
            continue
        source_type = rel.columns[m.source].type if m.source is not None else None
        flows.append(mapped_flow(conn, step, m, existing, source_type, carries_source=False))
    return flows


def mapped_flow(conn, step: Step, m: ColumnMap, existing, source_type: str | None, *, carries_source: bool,
                typ: str | None = None) -> Flow:
    """The flow of one plan mapping. Its type: `typ` if given, else the existing target column's,
    else the cast's, else the source column's (plain), the expression's, or a constant's."""
    cast = resolve_type(conn, m.cast, f"{step.label}: columns.{m.target}") if m.cast else None
    if cast and cast != m.cast:
        m = replace(m, cast=cast)  # the server's spelling, spliced into SQL
    if typ is None and existing is not None and m.target in existing.columns:
        typ = existing.columns[m.target].type
    if typ is None:
        typ = cast or _own_type(conn, step, m, source_type)
    return Flow(m.target, typ, m.source if carries_source else None, cast, m.default, mapping=m)


def _own_type(conn, step: Step, m: ColumnMap, source_type: str | None) -> str:
    """The type a mapping gives a column of a target 4A creates (no cast, no existing column)."""
    if m.kind in ("column", "cast"):
        return source_type or "text"
    if m.kind == "expr":
        return expression_type(conn, sql.SQL("({})").format(sql.SQL(m.expr)), source_ident(step),
                               f"{step.label}: columns.{m.target}", raw_text=m.expr)
    if m.kind == "value" and isinstance(m.value, bool):
        return "boolean"
    if m.kind == "value" and isinstance(m.value, int):
        return "bigint"
    if m.kind == "value" and isinstance(m.value, float):
        return "numeric"
    return "text"  # a map's values, a text constant, a default only: write `cast` for another type


def row_hash(cols: list[str], alias: str, types: dict[str, str]) -> sql.Composed:
    """The 64-bit hash (core.catalog.row_hash_of) of the compared columns, cast to the target's types."""
    return row_hash_of(sql.SQL("ROW({})::text").format(sql.SQL(", ").join(
        sql.SQL("CAST({} AS {})").format(sql.Identifier(alias, c), sql.SQL(types[c])) for c in cols)))


def projected_source(step: Step, spec: TargetSpec, source: sql.Composable,
                     where: sql.Composable | None = None) -> sql.Composed:
    """SELECT of the source rows in target terms: one column per flow, named as in the target."""
    flows = spec.flows[step.name]
    pk = spec.source_pks.get(step.name) or []
    cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(f.expr(step, "s", pk), sql.Identifier(f.target)) for f in flows)
    q = sql.SQL("SELECT {} FROM {} AS s").format(cols, source)
    if where is not None:
        q = sql.SQL("{} WHERE {}").format(q, where)
    return q


def not_quarantined(plan: Plan, step: Step) -> sql.Composed:
    """Source rows that are not in quarantine for this step (alias s).

    The first test is an uncorrelated InitPlan: when the step quarantined nothing, the OR
    short-circuits and no row pays for to_jsonb().
    """
    return sql.SQL("(NOT EXISTS (SELECT 1 FROM {q} AS q0 WHERE q0.step = {name}) OR "
                   "NOT EXISTS (SELECT 1 FROM {q} AS q WHERE q.step = {name} AND q.original = to_jsonb(s)))").format(
        q=tool_ident(plan, "quarantine"), name=sql.Literal(step.name))


def key_match(spec: TargetSpec, left: str, right: str) -> sql.Composed:
    if not spec.key:
        raise ValueError(f"{spec.qualified} has no key")
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in spec.key)


def key_in(spec: TargetSpec, source_rows: sql.Composable) -> sql.Composed:
    return sql.SQL("EXISTS (SELECT 1 FROM ({}) AS x WHERE {})").format(source_rows, key_match(spec, "x", "t"))


def column_list(names) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def key_json(spec: TargetSpec, alias: str) -> sql.Composed:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in spec.key))


def undo_inserts(plan: Plan, step: Step, spec: TargetSpec, run_id: str, cte: str) -> sql.Composed:
    """CTE recording the keys of rows inserted into a table that existed before the plan."""
    return sql.SQL("INSERT INTO {u} (run_id, step, target, op, key) SELECT {run}, {step}, {tgt}, 'insert', {k} FROM {cte} AS i "
                   "ON CONFLICT (step, op, key) DO NOTHING").format(
        u=tool_ident(plan, "undo"), run=sql.Literal(run_id), step=sql.Literal(step.name),
        tgt=sql.Literal(spec.qualified), k=key_json(spec, "i"), cte=sql.Identifier(cte))


__all__ = ["Action", "ActionError", "TARGET_KEYS", "action_of", "column_flows", "validate_foreign_keys", "row_hash", "projected_source",
           "not_quarantined", "key_match", "key_in", "column_list", "key_json", "undo_inserts", "source_ident"]
