"""delete: the table is not migrated; 4D backs it up with its schema, then drops it.

It has no target, so none of the target keys, and no part in 4A, 4B or 4C.
"""
from __future__ import annotations

from consolidation.actions.base import Action


class DeleteAction(Action):
    name = "delete"
    described_as = "delete steps"
    plan_keys = frozenset()
    required_keys = ()
    has_target = False
    moves_rows = False

    def resolve(self, step):
        return self  # a view with view_mode: recreate (e.g. from the defaults) may be deleted too

    def refused_key(self, label, key):
        return f"{label}: a delete step has no `{key}`; remove it or change the action"

    def fk_columns(self, step, spec, columns):
        return None  # a foreign key to a deleted table is not carried over

    def statement(self, plan, step, spec, source, run_id):
        raise TypeError(f"{step.label}: a delete step moves no rows")

    def undo_note(self, step, spec):
        return f"restore {step.source} from the 4D backup"
