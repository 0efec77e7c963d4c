"""The 4D approval's response as Airflow hands it to CleanupApproval.execute_complete (a HITL
event: chosen option, the reason param, responded_by from the authenticated user), for tests
that check what the cleanup does with it without an api-server in the loop."""
from __future__ import annotations

from datetime import datetime, timezone

import psycopg

from consolidation import api
from consolidation.phases import approvals

REASON = "reviewed the 4B and 4C gates and the DROP list"


def event(user: str = "approver", option: str = "Approve", reason: str | None = REASON,
          at: datetime | None = None) -> dict:
    return {"chosen_options": [option], "params_input": {"reason": reason},
            "responded_at": at or datetime.now(timezone.utc), "responded_by_user": {"id": user, "name": user}}


def respond(dsn: str, plan, request_id: int, *, user: str = "approver", option: str = "Approve",
            reason: str | None = REASON, at: datetime | None = None, triggered_by: str = "operator",
            run_id: str = "4d-run", validity_hours: float = 24) -> api.Outcome:
    """api.approval_response (what the waiting task runs) for Airflow's response by `user`; the
    fingerprint the task bound is the request's own. value = the decision backup/drop verify."""
    with psycopg.connect(dsn) as conn:
        fp = approvals.get(conn, plan, int(request_id)).fingerprint
        return api.approval_response(conn, plan, int(request_id), event(user, option, reason, at), fingerprint=fp,
                                     assigned=list(plan.approvers) or [user], triggered_by=triggered_by,
                                     run_id=run_id, validity_hours=validity_hours)
