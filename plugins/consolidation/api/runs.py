"""Operations on runs: the database's run lease (acquire / renew / release by run id, for
every phase that changes the database, 4D across its approval wait) and the interrupted
work the ledger shows.

A lease spans the tasks of one DAG run; any task or sensor of the run calls these with the
run id (consolidation.airflow.tasks: acquire_lease first, release_lease last; every task
body in between renews it and holds the run's advisory lock while it works).
"""
from __future__ import annotations

from datetime import datetime

from consolidation.api.outcome import Outcome
from consolidation.core import ledger
from consolidation.core.plan import Plan
from consolidation.core.runs import lease as leases
from consolidation.core.runs.interrupted import describe, interruptions, mark_interrupted
from consolidation.phases import approvals

# the DAGs whose runs change the database, and the phase each leases the database for
LEASED_DAGS = {"phase4a_schema_extension": "4A", "phase4b_data_migration": "4B",
               "phase4c_service_updates": "4C", "phase4d_legacy_cleanup": "4D", "phase4_rollback": "rollback"}
LeaseRefused = leases.LeaseRefused


def lease_acquire(conn, plan: Plan, phase: str, *, run_id: str, user: str | None, dag: str | None = None,
                  cancel_pending_cleanup: bool = False, via: str = "cli") -> Outcome:
    """Take the lease for `run_id` (re-entrant). A rollback refuses while a cleanup request is
    pending, unless `cancel_pending_cleanup`: then the request is rejected with that reason and
    the waiting 4D run's lease is taken over (its sensor fails at the next poke)."""
    lines: list[str] = []
    take_over = None
    if phase == "rollback":
        waiting = approvals.pending(conn, plan)
        conn.commit()
        for req in waiting:
            if not cancel_pending_cleanup:
                return Outcome(failure=LeaseRefused(
                    f"rollback refused: cleanup request {req.id} of 4D run {req.run_id} is pending (asked by "
                    f"{req.requested_by or '-'} at {req.requested_at:%Y-%m-%d %H:%M:%S %Z}); reject it first, or "
                    "run the rollback with cancel_pending_cleanup=true, which rejects it"))
            reason = (f"cancelled by rollback run {run_id} ({user or 'unknown'}): the cleanup is rolled back "
                      "instead; trigger phase4d_legacy_cleanup again after the rollback if it is still wanted")
            approvals.decide(conn, plan, request_id=req.id, decision="reject", by=user or "rollback", via=via,
                             reason=reason, decision_run_id=run_id)
            lines.append(f"rejected pending cleanup request {req.id} (4D run {req.run_id}): {reason}")
            take_over = req.run_id
    try:
        held = leases.acquire(conn, plan, phase=phase, run_id=run_id, user=user, dag=dag, take_over=take_over)
    except LeaseRefused as exc:
        return Outcome(lines=lines, failure=exc)
    lines.append(f"lease: {held.holder()} holds the database (others are refused until it is released)")
    return Outcome(value={"lease": held.id, "run_id": run_id, "phase": phase}, lines=lines, data=held)


def lease_renew(conn, plan: Plan, *, run_id: str, phase: str | None = None, waiting_for: int | None = None,
                until: datetime | None = None) -> Outcome:
    """The heartbeat of `run_id`'s lease (a waiting sensor calls it at each poke); the failure
    is LeaseRefused when the run no longer holds it. The approval task passes `waiting_for`
    (its request id) and `until` (the wait's deadline, None without a timeout) as it parks:
    the lease stays alive while that request is pending, until then."""
    try:
        held = leases.renew(conn, plan, run_id=run_id, phase=phase, waiting_for=waiting_for, until=until)
    except LeaseRefused as exc:
        return Outcome(failure=exc)
    return Outcome(value=held.id, data=held, lines=[])


def lease_release(conn, plan: Plan, *, run_id: str) -> Outcome:
    released = leases.release(conn, plan, run_id=run_id)
    return Outcome(value=released, lines=[f"lease of run {run_id} released" if released
                                          else f"run {run_id} holds no lease (nothing to release)"])


def lease_holder(conn, plan: Plan) -> Outcome:
    """Who holds the database's lease: holder, heartbeat age, whether a task of it is
    connected, its pending approval (`consolidation lease`)."""
    held = leases.current(conn, plan)
    conn.commit()
    if held is None:
        return Outcome(value=None, lines=["lease: free (no phase holds the database)"])
    lines = [f"lease: {held.holder()}",
             f"  last heartbeat: {held.heartbeat_age:.0f} s ago (taken over after {leases.stale_seconds():g} s "
             "without one, unless connected or waiting for approval)",
             f"  connected: {'yes, a task of it is working now' if held.connected else 'no'}",
             "  pending approval: " + (held.wait() if held.waiting else
                                       f"request {held.waiting_request}, its wait expired" if held.waiting_request
                                       else "none")]
    return Outcome(value=held.as_dict(), data=held, lines=lines)


def lease_release_by_hand(conn, plan: Plan, *, run_id: str, by: str | None = None,
                          reason: str | None = None) -> Outcome:
    """`consolidation lease release --run RUN_ID [--reason TEXT]`: end the lease of a run that
    is gone for good (its row becomes interrupted, with who and why; a lease_release ledger
    row records it). The failure (LeaseRefused, one line saying how to proceed) when the run
    holds no lease, a task of it is connected, or it waits on a pending cleanup request."""
    who = by or ledger.operator_name()
    try:
        held = leases.release_by_hand(conn, plan, run_id=run_id, by=who, reason=reason)
    except LeaseRefused as exc:
        return Outcome(failure=exc)
    return Outcome(value=held.id, data=held,
                   lines=[f"lease of {held.holder()} released by {who}" + (f": {reason}" if reason else "")
                          + "; the next phase takes the database"])


def sweep_interrupted(conn, plan: Plan, *, by: str) -> Outcome:
    """Mark running ledger entries whose process is gone as interrupted; list them."""
    found = mark_interrupted(conn, plan, by=by)
    return Outcome(value=len(found), data=found, lines=[f"marked interrupted: {describe(r)}" for r in found])


def interrupted_entries(conn, plan: Plan, run_id: str | None = None) -> list[dict]:
    return interruptions(conn, plan, run_id)
