"""Step actions, one module each (copy, union, merge, delete, recreate_view), one interface.

Modeled on pgroll's operations: each action owns everything about its kind of step - the
plan keys it accepts, its target's columns and key, the SQL that moves its rows, what
reconciliation compares, its 4B gate checks, its registry entry, its inventory notes and
how to undo it (the contract: consolidation.actions.base). Importing this package
registers them with core.plan, where the plan parser and the spec derivation ask them
(the engine's package __init__ imports it, so they are always registered).

Adding an action: one module here, one line below.
"""
from __future__ import annotations

from consolidation.core.plan import action_of, register_action
from consolidation.actions.base import Action
from consolidation.actions.copy import CopyAction
from consolidation.actions.delete import DeleteAction
from consolidation.actions.merge import MergeAction
from consolidation.actions.recreate_view import RecreateViewAction
from consolidation.actions.union import UnionAction

# In this order in messages ("use one of copy, merge, union, delete").
ACTIONS: dict[str, Action] = {a.name: a for a in (
    CopyAction(),
    MergeAction(),
    UnionAction(),
    DeleteAction(),
    RecreateViewAction(),
)}
for _action in ACTIONS.values():
    register_action(_action)


def action_for(step) -> Action:
    """The action handling `step` (a recreated view: recreate_view, though the plan says copy)."""
    return action_of(step)
