"""Step actions, one module each (copy, union, merge, delete), one small interface.

Modeled on pgroll's operations: each action validates a step against the specs (the
virtual schema 4A will produce), builds the SQL that moves its rows (one statement,
run set-based over the whole source, or per row to isolate rows that cannot be
stored), builds the projections that reconciliation compares, and says how to undo.
"""
from __future__ import annotations

from consolidation.actions.base import Action
from consolidation.actions.copy import CopyAction
from consolidation.actions.delete import DeleteAction
from consolidation.actions.merge import MergeAction
from consolidation.actions.union import UnionAction

ACTIONS: dict[str, Action] = {
    "copy": CopyAction(),
    "union": UnionAction(),
    "merge": MergeAction(),
    "delete": DeleteAction(),
}


def action_for(step) -> Action:
    return ACTIONS[step.action]
