"""CleanupApproval: Phase 4D waits here, as an Airflow human-in-the-loop approval.

It is the design card's "manual approval sensor": listed under the UI's Required Actions, the
task parked in AWAITING_INPUT (Airflow 3.3: no worker slot, no triggerer) until an assigned
user responds on that page or through the REST API (`consolidation approve|reject` does).

* assigned_users = the plan's `approvers` minus the user who triggered this run (four eyes);
  a plan whose only approver triggered it is refused before anything waits.
* The body is made at run time from the database: fingerprint, DROP statements per schema,
  rows per table, quarantined rows, backup folder. The request id and fingerprint the body
  shows are kept by Airflow with the parked task (next_kwargs), not re-read from a table.
* No defaults: a timeout (`approval_timeout_hours`) never approves; it fails the task and
  marks the request expired.
* After the response: phases.hitl.response checks it and writes the approvals table's audit
  copy, then the fingerprint / staleness / expiry checks run. Any refusal invalidates the
  request and fails the task with one line; nothing downstream runs, nothing is dropped.
  The task's XCom is the verified response, which backup and drop compare with the table.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, TaskAwaitingInput

from consolidation import api
from consolidation.airflow.connection import task_connection
from consolidation.airflow.runtime import run_info
from consolidation.api.approval import APPROVE, REJECT
from consolidation.core.plan import load_plan
from consolidation.phases.approvals import REASON_MIN_LENGTH, ApprovalRefused


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class CleanupApproval(HITLOperator):
    """request_task_id: the task whose XCom is the approval request id; validity_hours: how long
    an approval may be used (not templated: a run's params must not revive an old one)."""

    ui_color = "#f6d8a8"

    def __init__(self, *, request_task_id: str, validity_hours: float = 24.0, **kwargs: Any) -> None:
        kwargs.setdefault("subject", "Approve the legacy cleanup")
        # the DAG's params (passed on by apply_defaults) stay out of the form: every param here is a field
        # of the Required Actions form, and an empty one (backup_dir) blocks its buttons; the task's
        # context still has them (Airflow merges the DAG's params into every task's context)
        kwargs.pop("params", None)
        super().__init__(options=[APPROVE, REJECT], multiple=False, params={
            # null-able: a task param without a value fails the task at start; the length is checked after
            "reason": Param(None, type=["null", "string"], minLength=REASON_MIN_LENGTH, title="Reason",
                            description="what you reviewed and why you decide so (recorded with your user name)")},
            **kwargs)
        self.request_task_id = request_task_id
        self.validity_hours = float(validity_hours)

    # ------------------------------------------------------------------ before the wait
    def execute(self, context) -> Any:
        info = run_info(context)
        request_id = self._request_id(context)
        plan = load_plan()
        params = context.get("params") or {}
        hours = params.get("approval_timeout_hours")
        self.response_timeout = timedelta(hours=float(hours)) if hours not in (None, "", 0) else None
        with task_connection() as (dsn, conn):
            # parked, no heartbeat: the lease stays alive while the request is pending, until the timeout
            self._renew_lease(conn, plan, info, request_id, waiting=True)
            try:
                self.assigned_users = api.approval_assignees(plan, info.triggered_by)
            except ApprovalRefused as exc:
                self._refuse(conn, plan, request_id, exc)
            out = api.approval_body(conn, plan, request_id, backup_dir=params.get("backup_dir"), run_id=info.run_id)
            if out.failure is not None:
                raise AirflowFailException(_one_line(out.failure))
            req = out.data
        self.subject = f"Approve the legacy cleanup: request {req.id}, fingerprint {req.fingerprint[:12]}"
        self.body = out.value
        assigned = [u["id"] for u in self.assigned_users]
        self.log.info("request %s waits for %s in Required Actions: %s", req.id, ", ".join(assigned), self._link(context))
        self._notify(context, req, assigned)
        try:
            super().execute(context)
        except TaskAwaitingInput as park:
            # what the response is bound to travels with the parked task in Airflow's database
            raise TaskAwaitingInput(method_name=park.method_name, timeout=park.timeout, kwargs={
                "request_id": req.id, "fingerprint": req.fingerprint, "assigned": assigned,
                "triggered_by": info.triggered_by}) from None
        raise AirflowFailException("this Airflow does not park human-in-the-loop tasks (Airflow 3.3+ needed)")

    def _request_id(self, context) -> int:
        value = context["ti"].xcom_pull(task_ids=self.request_task_id)
        if isinstance(value, dict):
            value = value.get("request_id", value.get("id"))
        try:
            return int(value)
        except (TypeError, ValueError):
            raise AirflowFailException(f"task {self.request_task_id} returned no approval request id (got {value!r})") from None

    def _refuse(self, conn, plan, request_id: int, exc: BaseException):
        from consolidation.phases import approvals
        from consolidation.phases.hitl.response import invalidate

        req = approvals.get(conn, plan, request_id)
        if req is not None and req.status in ("pending", "approved"):
            invalidate(conn, plan, req, _one_line(exc), name="approval_refused")
        raise AirflowFailException(_one_line(exc)) from None

    def _renew_lease(self, conn, plan, info, request_id: int, waiting: bool = False) -> None:
        # 4D holds the database's lease across the wait (issue 13); a run that lost it decides nothing
        if info.dag_id not in api.LEASED_DAGS:
            return
        until = (datetime.now(timezone.utc) + self.response_timeout) if waiting and self.response_timeout else None
        out = api.lease_renew(conn, plan, run_id=info.run_id, phase=api.LEASED_DAGS[info.dag_id],
                              waiting_for=request_id if waiting else None, until=until)
        if out.failure is not None:
            self._refuse(conn, plan, request_id, out.failure)

    def _link(self, context) -> str:
        try:
            return self.generate_link_to_ui_from_context(context=context)
        except ValueError:  # no [api] base_url configured: the path on the api-server
            ti = context["task_instance"]
            return f"/dags/{ti.dag_id}/runs/{ti.run_id}/tasks/{ti.task_id}/required_actions"

    def _notify(self, context, req, assigned: list[str]) -> None:
        from consolidation.airflow.notify import notify_approval_request

        notify_approval_request(context, request_id=req.id, fingerprint=req.fingerprint, assignees=assigned,
                                link=self._link(context))

    # ------------------------------------------------------------------ after the response
    def execute_complete(self, context, event: dict[str, Any], request_id: int | None = None,
                         fingerprint: str | None = None, assigned: list[str] | None = None,
                         triggered_by: str | None = None) -> Any:
        plan = load_plan()
        info = run_info(context)
        with task_connection() as (dsn, conn):
            if "error" in event:  # the timeout sweep: nobody decided in time; never an approval
                api.expire_request(conn, plan, int(request_id), f"no decision within the approval timeout "
                                   f"({event.get('error')}); the waiting 4D run stopped. Trigger "
                                   "phase4d_legacy_cleanup again for a new request")
                raise AirflowFailException(f"request {request_id}: no decision before the approval timeout; "
                                           "nothing is dropped")
            self._renew_lease(conn, plan, info, int(request_id))
            try:
                out = api.approval_response(conn, plan, int(request_id), event, fingerprint=fingerprint,
                                            assigned=list(assigned or []), triggered_by=triggered_by,
                                            run_id=info.run_id, validity_hours=self.validity_hours)
            except Exception as exc:  # any failure while verifying: the request must not stay usable
                self._refuse(conn, plan, int(request_id), RuntimeError(
                    f"request {request_id}: verifying the approval failed ({type(exc).__name__}: {_one_line(exc)}); "
                    "the request is invalidated, nothing is dropped"))
            if out.failure is not None:
                raise AirflowFailException(_one_line(out.failure))
        for line in out.lines:
            self.log.info(line)
        return out.value
