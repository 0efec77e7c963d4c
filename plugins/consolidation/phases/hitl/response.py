"""The decision the cleanup acts on: Airflow's authenticated human-in-the-loop response.

4D waits in a HITL approval (airflow/approval.py) assigned to the plan's `approvers` minus
the user who triggered the run (four eyes). Airflow authenticates whoever responds on its
Required Actions page or REST API and records them as `responded_by`; the approvals table is
only the audit copy of that response, written here by the task that waited for it. So:

* assignees() refuses a plan with no approvers, or whose only approver triggered the run;
* record_response() checks the response (an assigned user, not the triggering one, one
  option, a reason), writes it over the *pending* request it was bound to, then applies the
  fingerprint, staleness and expiry checks of approvals.check(). A request that is no longer
  pending, or no longer carries the bound fingerprint, was written by someone else (any role
  can UPDATE a table): refused and recorded as `approval_forged`;
* verify_copy() is what backup and drop call: the audit copy must still equal the response
  Airflow holds (the HITL task's XCom), else the request is invalidated and nothing dropped.

Every refusal invalidates the request (status 'refused', the reason in `refusal`) and is a
ledger row; it raises ApprovalRefused with one line naming why and the fix.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql

from consolidation.core import ledger
from consolidation.core.plan import Plan
from consolidation.phases import approvals
from consolidation.phases.approvals import CLEANUP_DAG, REASON_MIN_LENGTH, ApprovalRefused, Request

APPROVE, REJECT = "Approve", "Reject"
OPTIONS = (APPROVE, REJECT)
VIA = "airflow"  # Airflow's HITL endpoint: the Required Actions page and the REST API are the same call


def assignees(approvers: list[str], triggered_by: str | None) -> list[dict[str, str]]:
    """HITL assigned_users: the plan's approvers minus the user who triggered the 4D run."""
    if not approvers:
        raise ApprovalRefused("the plan names no approvers, so nobody may approve the cleanup; add "
                              "`approvers: [<Airflow user>, ...]` to the plan and trigger the run again")
    left = [a for a in approvers if a != triggered_by]
    if not left:
        raise ApprovalRefused(f"the plan's only approver {triggered_by} triggered this 4D run and may not approve "
                              "it (four eyes); add another approver to the plan's `approvers`, or have another "
                              "person trigger the run")
    # SimpleAuthManager and FAB identify users by name here; an id that differs from the name
    # belongs in the plan as that id
    return [{"id": a, "name": a} for a in left]


def _when(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def response_of(event: dict) -> dict:
    """The parts of a HITL response the cleanup keeps (XCom-safe: plain JSON types)."""
    user = event.get("responded_by_user") or {}
    when = _when(event.get("responded_at"))
    return {"chosen": list(event.get("chosen_options") or []),
            "reason": ((event.get("params_input") or {}).get("reason") or "").strip(),
            "responded_by": user.get("name") if user else None, "responded_by_id": user.get("id") if user else None,
            "responded_at": when.isoformat() if when else None}


def invalidate(conn, plan: Plan, req: Request, message: str, *, name: str, **details: Any) -> None:
    """Mark the request refused (whatever its status) with the reason, in the table and the ledger."""
    conn.rollback()
    conn.execute(sql.SQL("UPDATE {} SET status = 'refused', refusal = %s WHERE id = %s").format(
        ledger.tool_ident(plan, "approvals")), (message, req.id))
    req.status, req.refusal = "refused", message
    approvals._ledger(conn, plan, req, name=name, status=ledger.REFUSED, by=details.pop("by", None),
                      message=message, **details)
    conn.commit()


def record_response(conn, plan: Plan, request_id: int, event: dict, *, fingerprint: str, assigned: list[str],
                    triggered_by: str | None, run_id: str,
                    validity_hours: float = approvals.DEFAULT_VALIDITY_HOURS) -> Request:
    """Check Airflow's response to the request's HITL task and write its audit copy.

    `fingerprint` and `assigned` are what the waiting task bound the HITL request to (kept by
    Airflow with the task, not read from the table). Returns the approved, verified request;
    a rejection or any refusal raises ApprovalRefused (the request invalidated, recorded)."""
    resp = response_of(event)
    req = approvals.get(conn, plan, request_id)
    if req is None:
        raise ApprovalRefused(f"approval request {request_id} is missing from the approvals table; nothing is "
                              f"dropped. Trigger {CLEANUP_DAG} again for a new request")

    def refuse(message: str, name: str = "approval_refused") -> None:
        invalidate(conn, plan, req, message, name=name, by=resp["responded_by"], response=resp, run=run_id)
        raise ApprovalRefused(message)

    who = resp["responded_by"]
    if not who:
        refuse(f"request {req.id}: the response carries no authenticated user (a timeout default?); a cleanup "
               f"needs a person's approval - trigger {CLEANUP_DAG} again")
    if resp["responded_by_id"] not in assigned:
        refuse(f"request {req.id}: {who} responded but is not an assigned approver ({', '.join(assigned)}); "
               "nothing is dropped")
    if who == triggered_by or resp["responded_by_id"] == triggered_by:
        refuse(f"request {req.id}: {who} triggered this 4D run and may not approve it (four eyes); "
               "another approver must respond")
    if len(resp["chosen"]) != 1 or resp["chosen"][0] not in OPTIONS:
        refuse(f"request {req.id}: the response chose {resp['chosen']}, not exactly one of {list(OPTIONS)}")
    if len(resp["reason"]) < REASON_MIN_LENGTH:
        refuse(f"request {req.id}: {who}'s response has no reason (at least {REASON_MIN_LENGTH} characters); "
               f"a decision says what was reviewed - trigger {CLEANUP_DAG} again and give one")
    if req.fingerprint != fingerprint:
        refuse(f"request {req.id} in the approvals table carries fingerprint {req.fingerprint[:12]}, but the HITL "
               f"request was bound to {fingerprint[:12]}: the row was rewritten outside the cleanup; refused, "
               "nothing is dropped", "approval_forged")
    status = "approved" if resp["chosen"][0] == APPROVE else "rejected"
    row = conn.execute(sql.SQL("""
        UPDATE {t} SET status = %s, decided_by = %s, decided_via = %s, reason = %s, decided_at = %s,
               db_role = current_user::text,
               valid_until = CASE WHEN %s = 'approved' THEN %s::timestamptz + make_interval(secs => %s) END,
               decided_in_run = %s
         WHERE id = %s AND status = 'pending' AND decided_by IS NULL AND fingerprint = %s RETURNING id""").format(
        t=ledger.tool_ident(plan, "approvals")),
        (status, who, VIA, resp["reason"], resp["responded_at"], status, resp["responded_at"],
         validity_hours * 3600, run_id, req.id, fingerprint)).fetchone()
    if row is None:
        conn.rollback()
        now = approvals.get(conn, plan, request_id)
        already = f"{now.status}" + (f" by {now.decided_by} via {now.decided_via}" if now.decided_by else "")
        req = now
        refuse(f"request {req.id} was already {already} in the approvals table, which Airflow did not record "
               f"(its response: {resp['chosen'][0]} by {who}); a row written outside the approval task is not a "
               "decision: refused, nothing is dropped", "approval_forged")
    conn.commit()
    req = approvals.get(conn, plan, request_id)
    approvals._ledger(conn, plan, req, name="approve" if status == "approved" else "reject",
                      status=ledger.SUCCESS if status == "approved" else ledger.REFUSED, by=who,
                      message=f"request {req.id} {status} by {who} via {VIA} (Airflow HITL response): {resp['reason']}",
                      decided_via=VIA, reason=resp["reason"], response=resp, decided_in_run=run_id)
    conn.commit()
    if status == "rejected":
        raise ApprovalRefused(f"request {req.id} was rejected by {who} at {resp['responded_at']}: {resp['reason']}; "
                              f"nothing is dropped. Address the reason, then trigger {CLEANUP_DAG} again")
    approvals.check(conn, plan, req.id, validity_hours=validity_hours)  # fingerprint now, staleness, expiry
    return approvals.get(conn, plan, request_id)


def verify_copy(conn, plan: Plan, request_id: int, decision: dict | None) -> Request:
    """The audit copy must equal the response Airflow holds (`decision`: the HITL task's XCom)."""
    req = approvals.get(conn, plan, int(request_id))
    if not decision or decision.get("request_id") != int(request_id):
        raise ApprovalRefused(f"no Airflow approval is recorded for request {request_id} in this run (the "
                              "wait_for_approval task's result); nothing is backed up or dropped")
    if req is None:
        raise ApprovalRefused(f"approval request {request_id} is missing from the approvals table; nothing is dropped")
    want = {"status": "approved", "decided_by": decision.get("responded_by"), "decided_via": VIA,
            "reason": decision.get("reason"), "fingerprint": decision.get("fingerprint"),
            "decided_at": _when(decision.get("responded_at"))}
    have = {k: getattr(req, k) for k in want}
    diff = [f"{k} {have[k]!r} (Airflow: {want[k]!r})" for k in want if have[k] != want[k]]
    if diff:
        msg = (f"request {req.id} in the approvals table differs from the approval Airflow recorded: "
               f"{'; '.join(diff)}; the row was changed outside the cleanup - refused, nothing is dropped. "
               f"Trigger {CLEANUP_DAG} again for a new request")
        invalidate(conn, plan, req, msg, name="approval_forged", by=decision.get("responded_by"), airflow=decision)
        raise ApprovalRefused(msg)
    conn.commit()
    return req
