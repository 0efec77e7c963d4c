"""Phase gates: what a phase requires before it starts, and the one path that runs a
gate's checks as a Great Expectations checkpoint and records the outcome in the ledger,
where the next phase looks for it. The checks of each gate are built in gate_4a, gate_4b,
phases.registry_checks (4C) and phases.cleanup (4D); the same path runs 4D's
reconcile_4D and the nightly validation's checkpoints (which record to their history).
"""
from __future__ import annotations

from typing import Callable

from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.checks.gx import Check, GateFailed, GateResult, run_gate
from consolidation.core import ledger
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan

PREVIOUS = {"4B": "4A", "4C": "4B", "4D": "4C"}
DAG_OF = {"4A": "phase4a_schema_extension", "4B": "phase4b_data_migration",
          "4C": "phase4c_service_updates", "4D": "phase4d_legacy_cleanup"}


class PhaseRefused(Refusal):
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


def record_verdict(conn, plan: Plan, *, phase: str, name: str, passed: bool, summary: str, details: dict,
                   run_id: str, user: str | None) -> None:
    """A gate's verdict as a ledger row (kind 'gate'; the summary is the message of a failure), committed."""
    ledger.record(conn, plan, status=ledger.SUCCESS if passed else ledger.FAILED,
                  message=None if passed else summary,
                  run_id=run_id, phase=phase, kind="gate", name=name, triggered_by=user, details=details)
    conn.commit()


def record_gate(conn, plan: Plan, phase: str, result: GateResult, *, run_id: str, user: str | None,
                name: str | None = None, details: dict | None = None) -> None:
    """A checkpoint's result in the ledger: row `name` (default gate_<phase>), the result and the plan's sha256
    (plus `details`) in its details."""
    record_verdict(conn, plan, phase=phase, name=name or f"gate_{phase}", passed=result.passed,
                   summary=result.summary(), run_id=run_id, user=user,
                   details=result.to_dict() | {"plan_sha256": plan.sha256} | (details or {}))


def run_phase_gate(conn, dsn: str, plan: Plan, phase: str, checks: list[Check], *, run_id: str,
                   user: str | None, gate: str | None = None, details: dict | None = None,
                   record: Callable[[GateResult], None] | None = None, raise_failed: bool = True) -> GateResult:
    """Run a gate's checkpoint, record it, and raise GateFailed when it did not pass.

    The checkpoint is named `gate` (default: the phase); it is recorded in the ledger as
    `gate` (default gate_<phase>) with `details` added, or by `record(result)` instead.
    With raise_failed=False a failed gate is returned, not raised.
    """
    result = run_gate(dsn, gate or phase, checks)
    if record is None:
        record_gate(conn, plan, phase, result, run_id=run_id, user=user, name=gate, details=details)
    else:
        record(result)
    if raise_failed and not result.passed:
        raise GateFailed(result)
    return result
