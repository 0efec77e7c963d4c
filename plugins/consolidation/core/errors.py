"""Errors every layer may raise; each carries one readable line for the user."""
from __future__ import annotations


class Refusal(RuntimeError):
    """What the engine refuses with a message of its own (a blocked inventory, a failed gate, a
    lease held by another run, ...): the message is the user's answer, so an Airflow task ends
    with it as its last line and no traceback (airflow.runtime.task_body). A subclass per kind."""


class DatabaseUnreachable(Refusal):
    """Raised with a one-line message: the DSN (password hidden) and how to fix it."""


class PlanError(ValueError):
    """A plan that cannot be run; the message names the entry and the fix (core.plan re-exports it)."""
