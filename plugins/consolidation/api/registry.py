"""Operations of Phase 4C and of the table registry services read: prepare the registry and
grant its readers, register a legacy schema's tables, export it; show, resolve, smoke."""
from __future__ import annotations

from pathlib import Path

from consolidation.api.outcome import Outcome
from consolidation.core.plan import Plan
from consolidation.phases import registry
from consolidation.phases.registry import NotRegistered, RegistryError
from consolidation.phases.smoke import run_smoke


def registry_prepare(conn, plan: Plan) -> Outcome:
    """The registry table, readable by the roles that could read a legacy table."""
    readers = registry.ensure_registry(conn, plan)
    conn.commit()
    name = ".".join(plan.tool_table("registry"))
    return Outcome(value=name, lines=[f"registry table {name} ready; readable by {', '.join(readers) or 'its owner only'}"])


def register_group(conn, plan: Plan, legacy_schema: str, *, run_id: str, user: str | None) -> Outcome:
    lines = registry.register_group(conn, plan, legacy_schema, run_id=run_id, user=user)
    return Outcome(value=lines, lines=lines)


def registry_export(conn, plan: Plan, folder: str | Path | None = None, *, run_id: str, user: str | None) -> Outcome:
    """registry.json in `folder` (default: $CONSOLIDATION_REGISTRY_DIR or .state/registry); data = its path."""
    path = registry.export(conn, plan, folder or None, run_id=run_id, user=user)
    return Outcome(value=str(path), lines=[f"registry exported to {path}"], data=path)


def registry_show(conn, plan: Plan) -> Outcome:
    """One line per entry; an empty or missing registry is the failure."""
    rows = registry.entries(conn, plan)
    if not rows:
        return Outcome(data=rows, failure=RegistryError(
            f"the registry {'.'.join(plan.tool_table('registry'))} is empty or missing; run phase4c_service_updates"))
    lines = []
    for e in rows:
        filt = ""
        if e["filter_op"]:
            filt = " WHERE " + registry.Filter(e["filter_column"], e["filter_op"], e.get("filter_value")).text()
        lines.append(f"{e['logical_name']:<45} -> {e['physical_schema']}.{e['physical_table']}{filt} "
                     f"[{e['status']}, run {e['set_by_run']}, {e['set_at']}]")
    return Outcome(lines=lines, data=rows)


def registry_resolve(source, name: str, *, show_sql: bool = False, plan: Plan | None = None) -> Outcome:
    """Where the legacy table `name` lives now; `source` is a connection, or a Path to an
    exported registry.json; `plan` names the registry table (default: the configured plan).
    Not registered is the failure."""
    try:
        r = registry.resolve(source, name, plan=plan)
    except NotRegistered as exc:
        return Outcome(failure=exc)
    where = f" WHERE {r.filter.text()}" if r.filter else ""
    lines = [f"{r.logical_name} -> {r.qualified}{where}"]
    for c in r.columns:
        cast = f" (cast from {c.physical_type})" if c.type != c.physical_type else ""
        lines.append(f"  {c.name:<28} {c.column}{cast}")
    if show_sql:
        lines.append(r.relation().as_string(None))  # identifiers and literals need no connection
    return Outcome(lines=lines, data=r)


def registry_smoke(conn, plan: Plan, folder: str | Path | None = None) -> Outcome:
    """The service smoke queries through the legacy tables and through the registry; any
    difference is the failure."""
    outcomes = run_smoke(conn, plan, folder)
    lines = []
    for o in outcomes:
        state = "ok" if o.ok else ("ERROR " + (o.error or "") if o.error else f"{o.differing} rows differ")
        lines.append(f"{o.name:<36} legacy {o.legacy_rows if o.legacy_rows is not None else '-':>5}  "
                     f"registry {o.registry_rows if o.registry_rows is not None else '-':>5}  {state}")
    bad = [o.name for o in outcomes if not o.ok]
    return Outcome(lines=lines, data=outcomes,
                   failure=RegistryError(f"smoke queries differ: {', '.join(bad)}") if bad else None)
