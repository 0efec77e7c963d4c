"""Task bodies of the nightly validation DAG (consolidation_nightly_validation)."""
from __future__ import annotations

from consolidation.core.plan import Plan
from consolidation.phases.nightly import (DAG_ID, HISTORY, NightlyFailed, _qualified, ensure_history, finish,
                                          require_migrated, validate_schema)

__all__ = ["DAG_ID", "HISTORY", "prepare_task", "validate_schema_task", "report_task"]


def _plan() -> Plan:
    from consolidation.core.plan import load_plan

    return load_plan()


def prepare_task(**context) -> dict:
    from consolidation.airflow.runtime import task_connection

    plan = _plan()
    with task_connection() as (_, conn):
        require_migrated(conn, plan)
        ensure_history(conn, plan)
        conn.commit()
    print(f"validation history: {_qualified(plan, HISTORY)}")
    return {"history": _qualified(plan, HISTORY)}


def validate_schema_task(schema: str, **context) -> dict:
    from consolidation.airflow.runtime import run_info, task_connection

    info = run_info(context)
    with task_connection() as (dsn, conn):
        outcome = validate_schema(conn, dsn, _plan(), schema, run_id=info.run_id, user=info.user)
    print(outcome.summary())
    if not outcome.passed:
        raise NightlyFailed(outcome.summary())
    return {"schema": schema, "checks": outcome.checks, "failed": 0}


def report_task(**context) -> dict:
    from consolidation.airflow.runtime import run_info, task_connection

    info = run_info(context)
    with task_connection() as (_, conn):
        verdict = finish(conn, _plan(), run_id=info.run_id, user=info.user)
    print(verdict.summary())
    print(f"page: {verdict.page}")
    if not verdict.passed:
        raise NightlyFailed(verdict.summary())
    return {"passed": True, "checks": len(verdict.rows), "page": str(verdict.page)}
