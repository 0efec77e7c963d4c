"""recreate_view: a legacy view recreated over the targets (`object: view`, `view_mode: recreate`).

The plan says `action: copy` (copy resolves such a step to this variant) and gives the
view's new `definition`, a SELECT over the consolidated tables. 4A creates the view once
every table exists; 4B moves nothing: it proves, once the view's tables are filled, that
the new view returns the same rows as the legacy one (whole rows, hashed).
"""
from __future__ import annotations

from consolidation.core.catalog import row_hashes
from consolidation.core.columns.check import lexical_problem
from consolidation.core.plan import PlanError, action_of
from consolidation.core.spec import ColumnSpec, source_ident, source_relation
from consolidation.actions.base import TARGET_KEYS, Action


class RecreateViewAction(Action):
    name = "recreate_view"
    in_plan = False  # reached through copy
    described_as = "views with view_mode: recreate"
    plan_keys = TARGET_KEYS | {"definition"}
    required_keys = ("target", "definition")

    # -- plan ---------------------------------------------------------------------
    def resolve(self, step):
        return self

    def missing_key(self, step, label, key):
        if key == "definition":
            return (f"{label}: view_mode recreate needs a `definition` (the SELECT over the target tables); "
                    "or use view_mode: snapshot")
        return super().missing_key(step, label, key)

    def parse(self, step, entry, label):
        step.definition = entry.get("definition")
        if not step.definition or not str(step.definition).strip():
            raise PlanError(self.missing_key(step, label, "definition"))
        # 4A runs CREATE VIEW ... AS <definition>: it must be one SELECT, nothing after it. The
        # database checks the rest once the tables exist (select_problem, in 4A before any write).
        problem = definition_problem(step.definition)
        if problem:
            raise PlanError(f"{label}: definition: {problem}; write one SELECT over the consolidated tables")

    def catalog_problems(self, step, src_cols, tgt_cols, catalog):
        return []  # the view's columns are its definition's

    # -- target -------------------------------------------------------------------
    def fill_spec(self, conn, plan, catalog, spec, existing):
        first = spec.steps[0]
        spec.kind = "view"
        spec.view_definition = first.definition
        rel = source_relation(catalog, first)
        spec.columns = [ColumnSpec(c.name, c.type) for c in rel.columns.values()]

    # -- moves: nothing; verified once its tables are filled --------------------------
    moves_rows = False
    verify_path = "recreated view"

    def statement(self, plan, step, spec, source, run_id):
        raise TypeError(f"{step.label}: a recreated view moves no rows; 4B only verifies it")

    def upstream(self, plan, step):
        return [d for d in plan.migrating_steps()
                if action_of(d).moves_rows and d.target_schema == step.target_schema]

    # -- proves: whole rows, no key -------------------------------------------------
    def projection(self, plan, step, spec, *, quarantined=True):
        return row_hashes(source_ident(step), "s"), row_hashes(spec.ident, "t"), []

    def gate_checks(self, plan, step, spec, source_side):
        return []  # nothing is quarantined

    # -- registers: every column, same names --------------------------------------------
    def registry_columns(self, step, spec, source):
        return {c: (c, None) for c in source.columns}

    def undo_note(self, step, spec):
        return f"drop view {spec.qualified} (created by 4A)"


_SELECT_START = ("select", "with", "values", "table", "(")


def definition_problem(text: str) -> str | None:
    """Why a view definition is not one SELECT, read without a database (None: it may be)."""
    body = text.strip().removesuffix(";")
    problem = lexical_problem(body, "the definition")
    if problem and "`;`" in problem:
        return "it holds more than one statement (a `;` before its end)"
    if problem:
        return problem
    if not body.lower().startswith(_SELECT_START):
        return f"the definition starts with {body.split()[0][:30]!r}, not SELECT"
    return None

