"""Errors every layer may raise; each carries one readable line for the user."""
from __future__ import annotations


class DatabaseUnreachable(RuntimeError):
    """Raised with a one-line message: the DSN (password hidden) and how to fix it."""


class PlanError(ValueError):
    """A plan that cannot be run; the message names the entry and the fix (core.plan re-exports it)."""
