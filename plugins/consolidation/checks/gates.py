"""Phase gates: what a phase requires before it starts, and the one path that runs a
gate's checks as a Great Expectations checkpoint and records the outcome in the ledger,
where the next phase looks for it. The checks of each gate are built in gate_4a, gate_4b,
phases.registry_checks (4C) and phases.cleanup (4D).
"""
from __future__ import annotations

from psycopg import sql

from consolidation.checks.gx import Check, GateFailed, GateResult, run_gate
from consolidation.core import ledger
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan

PREVIOUS = {"4B": "4A", "4C": "4B", "4D": "4C"}
DAG_OF = {"4A": "phase4a_schema_extension", "4B": "phase4b_data_migration",
          "4C": "phase4c_service_updates", "4D": "phase4d_legacy_cleanup"}


class PhaseRefused(RuntimeError):
    """A phase may not start: the gate before it has not passed."""


def require_gate(conn, plan: Plan, phase: str) -> dict:
    """The latest gate of the phase before `phase` must have passed; returns its ledger row."""
    before = PREVIOUS[phase]
    if not ledger.tool_tables_exist(conn, plan):
        raise PhaseRefused(f"{phase} refused: no {before} gate has run yet (no ledger in {plan.tool_schema}); "
                           f"trigger {DAG_OF[before]} first")
    row = ledger.latest(conn, plan, phase=before, kind="gate")
    if row is None:
        raise PhaseRefused(f"{phase} refused: no {before} gate has run yet; trigger {DAG_OF[before]} first")
    if row["status"] != ledger.SUCCESS:
        raise PhaseRefused(
            f"{phase} refused: the latest {before} gate (run {row['run_id']}, finished {row['finished_at']:%Y-%m-%d %H:%M:%S %Z}) "
            f"did not pass: {row['message'] or row['status']}; fix it and re-run {DAG_OF[before]}")
    rolled = conn.execute(sql.SQL("SELECT finished_at FROM {} WHERE kind = 'rollback' AND status = 'success' "
                                  "AND id > %s ORDER BY id DESC LIMIT 1").format(tool_ident(plan, "ledger")),
                          (row["id"],)).fetchone()
    if rolled:  # a rollback (phase4_rollback) undid what that gate proved
        raise PhaseRefused(f"{phase} refused: Phase 4 was rolled back at {rolled[0]:%Y-%m-%d %H:%M:%S %Z}, after "
                           f"the {before} gate of run {row['run_id']} passed; start again with {DAG_OF['4A']}")
    if row.get("details", {}).get("plan_sha256") not in (None, plan.sha256):
        raise PhaseRefused(f"{phase} refused: the {before} gate passed for another version of the plan; "
                           f"re-run {DAG_OF[before]} with the current plan")
    return row


def record_gate(conn, plan: Plan, phase: str, result: GateResult, *, run_id: str, user: str | None) -> None:
    ledger.record(conn, plan, status=ledger.SUCCESS if result.passed else ledger.FAILED,
                  message=None if result.passed else result.summary(),
                  run_id=run_id, phase=phase, kind="gate", name=f"gate_{phase}", triggered_by=user,
                  details=result.to_dict() | {"plan_sha256": plan.sha256})
    conn.commit()


def run_phase_gate(conn, dsn: str, plan: Plan, phase: str, checks: list[Check], *, run_id: str,
                   user: str | None) -> GateResult:
    """Run a gate's checkpoint, record it, and raise GateFailed when it did not pass."""
    result = run_gate(dsn, phase, checks)
    record_gate(conn, plan, phase, result, run_id=run_id, user=user)
    if not result.passed:
        raise GateFailed(result)
    return result
