"""Task bodies for the phase DAGs: thin calls into the engine, with clear failures.

Every function takes the Airflow context and returns something small and JSON-able
for XCom (never rows). Raising fails the task with the message as the reason.
"""
from __future__ import annotations

from consolidation.airflow.runtime import run_info, task_connection


def _plan():
    from consolidation.core.plan import load_plan

    return load_plan()


def inventory_task(**context) -> dict:
    from consolidation.checks.inventory import InventoryBlocked, render, take_inventory

    plan = _plan()
    with task_connection() as (_, conn):
        inv = take_inventory(conn, plan)
    print(render(inv))
    if not inv.ok:
        raise InventoryBlocked(inv)
    return {"findings": len(inv.findings), "blocking": 0}


def require_gate_task(phase: str, **context) -> dict:
    from consolidation.checks.gates import require_gate

    plan = _plan()
    with task_connection() as (_, conn):
        row = require_gate(conn, plan, phase)
    print(f"{phase} may start: gate {row['name']} passed in run {row['run_id']} at {row['finished_at']}")
    return {"gate_run": row["run_id"]}


def prepare_4a_task(**context) -> list[str]:
    from consolidation.phases.extend import ensure_schemas

    info = run_info(context)
    with task_connection() as (_, conn):
        made = ensure_schemas(conn, _plan(), run_id=info.run_id, user=info.user)
    print(f"schemas created: {made or 'none (all existed)'}")
    return made


def extend_group_task(legacy_schema: str, **context) -> list[str]:
    from consolidation.phases.extend import extend_group

    info = run_info(context)
    with task_connection() as (_, conn):
        done = extend_group(conn, _plan(), legacy_schema, run_id=info.run_id, user=info.user)
    for line in done:
        print(line)
    return done


def finalize_4a_task(**context) -> list[str]:
    from consolidation.phases.extend import finalize

    info = run_info(context)
    with task_connection() as (_, conn):
        done = finalize(conn, _plan(), run_id=info.run_id, user=info.user)
    for line in done:
        print(line)
    return done


def gate_task(phase: str, **context) -> dict:
    from consolidation.checks import gates
    from consolidation.checks.gate_4a import gate_4a_checks
    from consolidation.checks.gate_4b import gate_4b_checks

    plan = _plan()
    info = run_info(context)
    builders = {"4A": gate_4a_checks, "4B": gate_4b_checks}
    with task_connection() as (dsn, conn):
        if phase in gates.PREVIOUS:  # the gate runs even after failed steps, never after a refusal
            gates.require_gate(conn, plan, phase)
        checks = builders[phase](conn, plan)
        conn.commit()
        result = gates.run_phase_gate(conn, dsn, plan, phase, checks, run_id=info.run_id, user=info.user)
    print(result.summary())
    return {"gate": phase, "passed": result.passed, "checks": len(result.results)}


def step_task(step_name: str, **context) -> dict:
    from consolidation.phases.migrate import run_step

    info = run_info(context)
    params = context.get("params") or {}
    plan = _plan()
    with task_connection() as (_, conn):
        if params.get("dry_run"):
            from consolidation.cli.commands import preview

            for heading, text in preview(conn, plan, "4B"):
                if heading.startswith(step_name):
                    print(f"-- {heading}\n{text};")
            return {"step": step_name, "dry_run": True}
        result = run_step(conn, plan, step_name, run_id=info.run_id, user=info.user)
    print(result.line())
    return {"step": step_name, "read": result.read, "inserted": result.inserted, "merged": result.merged,
            "quarantined": result.quarantined}
