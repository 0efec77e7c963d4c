"""copy: every source row lands once in its target (a new table, or an existing one).

A copy of a legacy view snapshots its rows into a table; a view with view_mode: recreate
is handled by its variant, recreate_view (the plan still says `action: copy`).
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.plan import Plan, Step, named_action
from consolidation.core.spec import ColumnSpec, TargetSpec, carry_table_details, portable_default, source_relation
from consolidation.actions.base import TARGET_KEYS, Action, column_list, key_match, projected_source, undo_inserts


class CopyAction(Action):
    name = "copy"
    carries_triggers = True
    described_as = "copy steps"
    plan_keys = TARGET_KEYS | {"batch_rows"}
    batches = True  # its statement skips rows already present, so any key range can run (again)

    def resolve(self, step: Step) -> Action:
        if step.is_recreated_view:
            return named_action("recreate_view")
        return self

    def validate(self, step: Step, spec: TargetSpec | None) -> list[str]:
        if spec is None:
            return [f"{step.label}: no target spec"]
        if not spec.key and (spec.exists_before_plan or len(spec.steps) > 1):
            return [f"{step.label}: {step.source} has no primary key and {spec.qualified} is not fed by this step "
                    "alone, so re-runs could not tell which rows already moved; give the source a primary key"]
        return []

    def new_target(self, conn, plan: Plan, catalog, spec: TargetSpec) -> None:
        """The source's shape: identity keys, portable defaults, and (for a table) its
        unique and check constraints and indexes, renamed; a view snapshot becomes a table."""
        step = spec.steps[0]
        rel = source_relation(catalog, step)
        rename = {f.source: f.target for f in spec.flows[step.name] if f.source}
        for f in spec.flows[step.name]:
            src = rel.columns.get(f.source) if f.source else None
            col = ColumnSpec(f.target, f.type, bool(src and src.not_null))
            if src is not None and (src.identity or (src.default and "nextval(" in src.default)):
                col.identity = True
            elif src is not None and src.default:
                col.default = portable_default(src.default, plan, spec, step)
            elif f.default is not None:
                col.not_null = False
            spec.columns.append(col)
        spec.primary_key = list(spec.key)
        if step.object == "view":
            spec.notes.append(f"snapshot of view {step.source}: its rows are copied into a table")
            return
        carry_table_details(conn, catalog, spec, step, rename)

    def pre_statements(self, plan: Plan, step: Step, spec: TargetSpec) -> list[sql.Composable]:
        if spec.key:
            return []
        # Keyless source (a view snapshot) into a table only this step feeds:
        # refresh it whole, which converges on every re-run.
        return [sql.SQL("DELETE FROM {}").format(spec.ident)]

    def statement(self, plan, step, spec, source, run_id):
        flows = spec.flows[step.name]
        cols = column_list(f.target for f in flows)
        rows = projected_source(step, spec, source)
        fresh = sql.SQL("TRUE") if not spec.key else sql.SQL(
            "NOT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(spec.ident, key_match(spec, "t", "r"))
        returning = column_list(spec.key) if spec.key else sql.SQL("1")
        parts = [sql.SQL("WITH r AS ({rows}), ins AS (INSERT INTO {tgt} ({cols}) SELECT {cols} FROM r WHERE {fresh} "
                         "RETURNING {ret})").format(rows=rows, tgt=spec.ident, cols=cols, fresh=fresh, ret=returning)]
        if spec.exists_before_plan:
            parts.append(sql.SQL(", u AS ({})").format(undo_inserts(plan, step, spec, run_id, "ins")))
        parts.append(sql.SQL(" SELECT (SELECT count(*) FROM ins), 0"))
        return sql.Composed(parts)

    def load_statement(self, plan, step, spec, source):
        if spec.exists_before_plan:  # inserts into a table that existed go to the undo log
            return None
        flows = spec.flows[step.name]
        return sql.SQL("INSERT INTO {tgt} ({cols}) {rows}").format(
            tgt=spec.ident, cols=column_list(f.target for f in flows), rows=projected_source(step, spec, source))

    def undo_note(self, step, spec):
        if spec.exists_before_plan:
            return f"delete the rows it inserted into {spec.qualified} (keys in the undo log)"
        return f"drop {spec.qualified} (created by 4A)"
