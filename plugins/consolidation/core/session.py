"""Specs as the plan and the live catalog make them, once per unit of work.

`load_specs` introspects the legacy and consolidated schemas and derives every target
spec; `created_targets` reads from the ledger which targets 4A created (so a re-run
treats them as ours). A `Session` holds one connection's catalog and specs so the
checks of one task derive them once; call `refresh()` after DDL changed the catalog.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core import ledger
from consolidation.core.catalog import Catalog, introspect
from consolidation.core.plan import Plan
from consolidation.core.spec import TargetSpec, derive_specs


def created_targets(conn, plan: Plan) -> set[str]:
    """Targets that 4A created (since the last rollback), according to the ledger."""
    if not ledger.tool_tables_exist(conn, plan):
        return set()
    q = sql.SQL("""
        SELECT target FROM {l}
         WHERE phase = '4A' AND kind = 'ddl' AND status = 'success' AND details->>'kind' IN ('table', 'view')
           AND id > COALESCE((SELECT max(id) FROM {l} WHERE kind = 'rollback' AND status = 'success'), 0)
    """).format(l=ledger.tool_ident(plan, "ledger"))
    return {r[0] for r in conn.execute(q).fetchall()}


def load_specs(conn, plan: Plan, catalog: Catalog | None = None) -> tuple[Catalog, dict[str, TargetSpec]]:
    catalog = catalog or introspect(conn, list(plan.legacy_schemas) + list(plan.consolidated_schemas), count_rows=False)
    return catalog, derive_specs(conn, plan, catalog, created_targets(conn, plan))


class Session:
    """One connection and plan; the catalog and specs derived at most once until refresh()."""

    def __init__(self, conn, plan: Plan):
        self.conn = conn
        self.plan = plan
        self._loaded: tuple[Catalog, dict[str, TargetSpec]] | None = None

    def _load(self) -> tuple[Catalog, dict[str, TargetSpec]]:
        if self._loaded is None:
            self._loaded = load_specs(self.conn, self.plan)
        return self._loaded

    @property
    def catalog(self) -> Catalog:
        return self._load()[0]

    @property
    def specs(self) -> dict[str, TargetSpec]:
        return self._load()[1]

    def refresh(self) -> None:
        self._loaded = None
