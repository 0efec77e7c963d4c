"""Task bodies of Phase 4C (phase4c_service_updates): the registry, its export, the 4C gate.

Like tasks.py: thin calls into the engine, small JSON-able return values for XCom.
"""
from __future__ import annotations

from consolidation.airflow.runtime import run_info, task_connection


def _plan():
    from consolidation.core.plan import load_plan

    return load_plan()


def prepare_registry_task(**context) -> str:
    from consolidation.phases.registry import ensure_registry

    plan = _plan()
    with task_connection() as (_, conn):
        readers = ensure_registry(conn, plan)
        conn.commit()
    name = ".".join(plan.tool_table("registry"))
    print(f"registry table {name} ready; readable by {', '.join(readers) or 'its owner only'}")
    return name


def register_group_task(legacy_schema: str, **context) -> list[str]:
    from consolidation.phases.registry import register_group

    info = run_info(context)
    with task_connection() as (_, conn):
        lines = register_group(conn, _plan(), legacy_schema, run_id=info.run_id, user=info.user)
    for line in lines:
        print(line)
    return lines


def export_registry_task(**context) -> str:
    from consolidation.phases.registry import export

    info = run_info(context)
    folder = (context.get("params") or {}).get("export_dir") or None
    with task_connection() as (_, conn):
        path = export(conn, _plan(), folder, run_id=info.run_id, user=info.user)
    print(f"registry exported to {path}")
    return str(path)


def gate_4c_task(**context) -> dict:
    from consolidation.checks import gates
    from consolidation.phases.registry_checks import gate_4c_checks
    from consolidation.phases.registry import exported_in_run

    plan = _plan()
    info = run_info(context)
    with task_connection() as (dsn, conn):
        gates.require_gate(conn, plan, "4C")  # the gate runs after failed tasks, never after a refusal
        # the file this run exported must say what the table says; no export in this run fails that check
        exported = exported_in_run(conn, plan, info.run_id)
        checks = gate_4c_checks(conn, plan, export_file=exported or _missing_export(info.run_id))
        conn.commit()
        result = gates.run_phase_gate(conn, dsn, plan, "4C", checks, run_id=info.run_id, user=info.user)
    print(result.summary())
    return {"gate": "4C", "passed": result.passed, "checks": len(result.results)}


def _missing_export(run_id: str):
    from pathlib import Path

    return Path(f"<no registry export in run {run_id}>")
