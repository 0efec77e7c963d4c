"""Whole runs of 4A and 4C through their DAG's task bodies, in the DAG's order (lease first,
given back last), without Airflow: what tests/test_faults_phases.py runs in a child process
it kills, and again in-process for the re-run. Imports neither conftest nor pytest, so a child
process keeps the environment its parent gave it."""
from __future__ import annotations

from phase_helpers import PLAN, call_task

from consolidation.airflow import tasks

A, C = "phase4a_schema_extension", "phase4c_service_updates"


def run_4a(dsn: str, run_id: str, user: str = "alice") -> None:
    kw = {"dag_id": A, "run_id": run_id, "user": user}
    call_task(tasks.acquire_lease, dsn, **kw)
    call_task(tasks.inventory, dsn, **kw)
    call_task(tasks.prepare_4a, dsn, **kw)
    for schema in PLAN.legacy_schemas:
        call_task(tasks.extend_group, dsn, legacy_schema=schema, **kw)
    call_task(tasks.finalize_4a, dsn, **kw)
    call_task(tasks.gate, dsn, phase="4A", **kw)
    call_task(tasks.release_lease, dsn, **kw)


def run_4c(dsn: str, run_id: str, export_dir: str, user: str = "alice") -> None:
    kw = {"dag_id": C, "run_id": run_id, "user": user, "params": {"export_dir": export_dir}}
    call_task(tasks.acquire_lease, dsn, **kw)
    call_task(tasks.require_gate, dsn, phase="4C", **kw)
    call_task(tasks.prepare_registry, dsn, **kw)
    for schema in PLAN.legacy_schemas:
        if any(s.action != "delete" for s in PLAN.steps_for_schema(schema)):
            call_task(tasks.register_group, dsn, legacy_schema=schema, **kw)
    call_task(tasks.export_registry, dsn, **kw)
    call_task(tasks.gate, dsn, phase="4C", **kw)
    call_task(tasks.release_lease, dsn, **kw)
