"""delete: the table is not migrated; 4D backs it up with its schema, then drops it."""
from __future__ import annotations

from consolidation.actions.base import Action


class DeleteAction(Action):
    name = "delete"
    moves_rows = False

    def statement(self, plan, step, spec, source, run_id):
        raise TypeError(f"{step.label}: a delete step moves no rows")

    def undo_note(self, step, spec):
        return f"restore {step.source} from the 4D backup"
