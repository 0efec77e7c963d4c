"""The 4D approval through Airflow's human-in-the-loop: who may respond, what they are shown, the
response checked and copied, the previews of the destructive part, and the Airflow REST calls
`consolidation approve|reject` and the demo make as the approving user."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from consolidation.api.outcome import Outcome
from consolidation.core import ledger
from consolidation.core.plan import Plan
from consolidation.phases import approvals, rollback
from consolidation.phases.approvals import ApprovalRefused
from consolidation.phases.backup import default_folder
from consolidation.phases.hitl import preview, response

CLEANUP_DAG = approvals.CLEANUP_DAG
WAIT_TASK = "wait_for_approval"
APPROVE, REJECT = response.APPROVE, response.REJECT


def approval_assignees(plan: Plan, triggered_by: str | None) -> list[dict[str, str]]:
    """HITL assigned_users: the plan's approvers minus the triggering user (ApprovalRefused if none)."""
    return response.assignees(plan.approvers, triggered_by)


def approval_body(conn, plan: Plan, request_id: int, *, backup_dir: str | None, run_id: str) -> Outcome:
    """The approval's Markdown body: fingerprint, DROP list per schema, rows per table, quarantine,
    backup destination; value = the body, data = the request."""
    req = approvals.get(conn, plan, int(request_id))
    if req is None:
        return Outcome(failure=ApprovalRefused(f"no approval request {request_id}; trigger {CLEANUP_DAG} again"))
    drops = preview.drop_preview(conn, plan)
    body = preview.approval_body(req, drops, preview.quarantined(conn, plan),
                                 str(Path(backup_dir) if backup_dir else default_folder(run_id)))
    # what the approver is shown, kept for the completion report (the schemas are gone by then)
    ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase="4D", kind="approval",
                  name="drop_preview", message=f"DROP statements shown with request {req.id}",
                  details={"request_id": req.id, "schemas": {s: {"statements": e["statements"], "tables": e["tables"],
                                                                 "blockers": e["blockers"]}
                                                             for s, e in drops.items() if e["exists"]}})
    conn.commit()
    return Outcome(value=body, data=req, lines=[f"approval body for request {req.id}:", body])


def approval_response(conn, plan: Plan, request_id: int, event: dict, *, fingerprint: str, assigned: list[str],
                      triggered_by: str | None, run_id: str, validity_hours: float) -> Outcome:
    """Airflow's response, checked and written as the audit copy; value = what backup/drop verify."""
    try:
        req = response.record_response(conn, plan, int(request_id), event, fingerprint=fingerprint,
                                       assigned=assigned, triggered_by=triggered_by, run_id=run_id,
                                       validity_hours=validity_hours)
    except ApprovalRefused as exc:
        return Outcome(failure=exc)
    resp = response.response_of(event)
    return Outcome(value={"request_id": req.id, "fingerprint": req.fingerprint, **resp}, data=req, lines=[
        f"request {req.id} approved by {req.decided_by} (Airflow HITL response at {resp['responded_at']}): "
        f"{req.reason}; verified against the data (fingerprint {req.fingerprint[:12]})"])


def verify_decision(conn, plan: Plan, request_id, decision: dict | None):
    """The audit copy equals Airflow's response (ApprovalRefused otherwise, the request invalidated)."""
    return response.verify_copy(conn, plan, int(request_id), decision)


def drop_sql_preview(conn, plan: Plan) -> Outcome:
    """`sql --phase 4d`: the DROP statements 4D would run now, per legacy schema, in order."""
    drops = preview.drop_preview(conn, plan)
    return Outcome(value=drops, data=drops, lines=preview.preview_sql(drops))


def rollback_sql_preview(conn, plan: Plan) -> Outcome:
    """`sql --phase rollback`: what a rollback would restore and the 4A changes it would undo."""
    state = rollback.assess(conn, plan)
    conn.rollback()
    lines = [f"-- restore from the 4D backup (pg_restore, one psql --single-transaction): schema {s}"
             for s in state["needs_restore"]] or ["-- nothing to restore: every planned legacy object is present"]
    lines += [f"-- undo 4A ({d}), newest first" for d in state["ddl"]] or ["-- no 4A change to undo"]
    lines.append(f"-- undo-log rows to apply: {state['undo_rows']}")
    return Outcome(value=state, data=state, lines=lines)


# ------------------------------------------------------------------ Airflow's REST API, as a person
class AirflowApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _call(url: str, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    req = urllib.request.Request(url.rstrip("/") + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json", "Accept": "application/json",
                                          "User-Agent": "consolidation-cli",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            text = json.loads(text).get("detail", text)
        except (ValueError, AttributeError):
            pass
        raise AirflowApiError(exc.code, f"Airflow API {method} {path}: HTTP {exc.code}: {text}") from None
    except urllib.error.URLError as exc:
        raise AirflowApiError(0, f"Airflow API at {url} is not reachable ({exc.reason}); start it "
                                 "(`make airflow`) or pass --airflow-url") from None


def airflow_token(url: str, user: str, password: str) -> str:
    """A JWT for `user` from the auth manager's token endpoint (SimpleAuthManager / FAB)."""
    return _call(url, "POST", "/auth/token", {"username": user, "password": password})["access_token"]


def pending_approvals(url: str, token: str) -> list[dict]:
    """4D approvals waiting for a response, as Airflow lists them (newest first)."""
    q = urllib.parse.urlencode({"response_received": "false", "task_id": WAIT_TASK, "order_by": "-created_at"})
    found = _call(url, "GET", f"/api/v2/dags/{CLEANUP_DAG}/dagRuns/~/hitlDetails?{q}", token=token)
    return found.get("hitl_details", [])


def respond(url: str, token: str, decision: str, reason: str, *, request_id: int | None = None) -> Outcome:
    """Answer the waiting 4D approval as the token's user: Airflow checks that they are assigned
    and records them as responded_by. `request_id`: the one whose subject names it."""
    option = {"approve": APPROVE, "reject": REJECT}[decision]
    try:
        waiting = pending_approvals(url, token)
        if request_id is not None:
            waiting = [w for w in waiting if f"request {request_id} " in f"{w.get('subject', '')} "]
        if not waiting:
            return Outcome(failure=ApprovalRefused(
                f"no 4D approval is waiting in Airflow{f' for request {request_id}' if request_id else ''}; "
                f"trigger {CLEANUP_DAG} (it asks), or see Browse > Required Actions"))
        ti = waiting[0]["task_instance"]
        path = (f"/api/v2/dags/{urllib.parse.quote(ti['dag_id'])}/dagRuns/{urllib.parse.quote(ti['dag_run_id'])}"
                f"/taskInstances/{urllib.parse.quote(ti['task_id'])}/{ti.get('map_index', -1)}/hitlDetails")
        done = _call(url, "PATCH", path, {"chosen_options": [option], "params_input": {"reason": reason}}, token=token)
    except AirflowApiError as exc:
        return Outcome(failure=ApprovalRefused(str(exc)))
    return Outcome(value=done, data=done, lines=[
        f"{option} recorded by Airflow for {waiting[0]['subject']} as {done['responded_by']['name']} "
        f"at {done['responded_at']}; the waiting 4D run checks it against the data and continues"])
