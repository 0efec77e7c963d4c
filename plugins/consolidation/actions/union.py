"""union: several sources into one new table; each row keeps its source table and key.

The target gets a new identity key (`target_key`); `provenance: {table, key}` name the two
columns holding each row's source table and its key there (text), unique together, so
keys of different sources never collide and re-runs match rows on them.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.plan import PlanError
from consolidation.core.spec import ColumnSpec, Flow, portable_default, source_relation
from consolidation.actions.base import TARGET_KEYS, Action, column_flows
from consolidation.actions.copy import CopyAction


class UnionAction(CopyAction):
    name = "union"
    described_as = "union steps"
    plan_keys = TARGET_KEYS | {"target_key", "provenance", "batch_rows"}
    required_keys = ("target", "target_key", "provenance")
    shared_target_rule = "all `union` (rows keep their source table and key)"
    resolve = Action.resolve  # a recreated view is copy's, not union's

    # -- plan ---------------------------------------------------------------------
    def missing_key(self, step, label, key):
        if key == "target":
            return super().missing_key(step, label, key)
        return (f"{label}: a union needs `target_key` (the new key column of {step.target}) and "
                "`provenance: {table: <column>, key: <column>}` so every row keeps its source")

    def parse(self, step, entry, label):
        step.target_key = entry.get("target_key")
        prov = entry.get("provenance") or {}
        if not step.target_key or not isinstance(prov, dict) or not prov.get("table") or not prov.get("key"):
            raise PlanError(self.missing_key(step, label, "provenance"))
        step.provenance_table, step.provenance_key = prov["table"], prov["key"]

    def shared_target_problem(self, target, steps):
        shapes = {(s.target_key, s.provenance_table, s.provenance_key) for s in steps}
        if len(shapes) > 1:
            return (f"union into {target}: {', '.join(s.source for s in steps)} disagree on target_key/provenance; "
                    "give them the same values")
        return None

    def kept_source_columns(self, step, catalog):
        pk = getattr(catalog, "primary_key", lambda *_: None)(step.source_schema, step.source_table)
        return {pk[0]} if pk and len(pk) == 1 else set()  # it lives on as the provenance key

    # -- target -------------------------------------------------------------------
    def flows(self, conn, catalog, step, existing=None):
        rel = source_relation(catalog, step)
        # the source key lives on as the provenance key
        return [Flow(step.provenance_table, "text", provenance="table"),
                Flow(step.provenance_key, "text", provenance="key")] + column_flows(
            conn, step, rel, existing, skip=set(rel.primary_key))

    def target_key(self, spec, existing):
        first = spec.steps[0]
        return [first.provenance_table, first.provenance_key]

    def new_target(self, conn, plan, catalog, spec):
        first = spec.steps[0]
        spec.columns.append(ColumnSpec(first.target_key, "bigint", True, None, identity=True))
        spec.primary_key = [first.target_key]
        spec.uniques.append([first.provenance_table, first.provenance_key])
        seen: dict[str, ColumnSpec] = {}
        for step in spec.steps:
            rel = source_relation(catalog, step)
            for f in spec.flows[step.name]:
                if f.target in seen:
                    if seen[f.target].type != f.type:
                        raise PlanError(
                            f"{step.label}: column {f.target} is {f.type} here but {seen[f.target].type} in another "
                            f"source of {spec.qualified}; add a cast under `columns` so both agree")
                    continue
                src_col = rel.columns.get(f.source) if f.source else None
                col = ColumnSpec(f.target, f.type, f.provenance == "table")
                if src_col is not None and src_col.default and "nextval(" not in src_col.default:
                    col.default = portable_default(src_col.default, plan, spec, step)
                seen[f.target] = col
                if f.target not in (first.target_key,):
                    spec.columns.append(col)
        spec.notes.append(f"union of {', '.join(s.source for s in spec.steps)}: key {first.target_key} is new; "
                          f"rows keep {first.provenance_table} and {first.provenance_key}")

    def fk_columns(self, step, spec, columns):
        return None  # its rows got new keys: a foreign key to a source is not carried over

    # -- moves: copy's statement (new rows by provenance key) -----------------------
    def validate(self, step, spec):
        if spec is None or spec.key != [step.provenance_table, step.provenance_key]:
            return [f"{step.label}: union target must be keyed by ({step.provenance_table}, {step.provenance_key})"]
        if not spec.source_pks.get(step.name):
            return [f"{step.label}: {step.source} has no primary key to keep as {step.provenance_key}; "
                    "give it one, or use copy into its own table"]
        return []

    # -- proves ---------------------------------------------------------------------
    def target_filter(self, step, spec, source_rows):
        return sql.SQL("{} = {}").format(sql.Identifier("t", step.provenance_table), sql.Literal(step.source))

    def owns_target_rows(self, step, spec):
        return not spec.exists_before_plan  # its provenance tells its rows apart from the other sources'

    # -- registers --------------------------------------------------------------------
    def registry_columns(self, step, spec, source):
        by_legacy = super().registry_columns(step, spec, source)
        pk = spec.source_pks.get(step.name) or []
        if len(pk) == 1:  # a composite key lives on as a JSON array: not offered by name
            by_legacy[pk[0]] = (step.provenance_key, None)
        return by_legacy

    def registry_filter(self, conn, step, spec, source):
        return (step.provenance_table, "=", step.source)

    def undo_note(self, step, spec):
        return f"drop {spec.qualified} (created by 4A)"
