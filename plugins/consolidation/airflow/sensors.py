"""CleanupApprovalSensor: Phase 4D waits here for a person's decision.

The decision is read from the approvals table (consolidation.api.approval_state) and
nowhere else: not from the run's conf, not from its params. ApprovalSensor is the one
phase4d_legacy_cleanup uses: its poke interval is a run param.
"""
from __future__ import annotations

from typing import Any, Sequence

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout

from consolidation import api
from consolidation.airflow.connection import task_connection
from consolidation.core.plan import load_plan
from consolidation.phases.approvals import ApprovalRefused


class CleanupApprovalSensor(BaseSensorOperator):
    """Succeeds when the request opened by `request_task_id` is approved and still valid.

    request_task_id  task whose XCom return value is the request id (an int, or a dict
                     with "request_id" or "id")
    validity_hours   how long an approval may be used (default 24 h). Deliberately not
                     templated: a run's params must not revive an old approval.
    timeout_hours    optional, templated (e.g. "{{ params.approval_timeout_hours }}"): how
                     long to wait for a decision; overrides `timeout` (seconds). It only
                     bounds the wait, it never decides anything.

    Runs in reschedule mode (no worker slot held while waiting). A rejection, an expired
    or stale approval raises AirflowFailException: the task fails at once, no retry. On
    timeout the still-pending request is marked expired.
    """

    template_fields: Sequence[str] = ("timeout_hours",)
    ui_color = "#f6d8a8"

    def __init__(self, *, request_task_id: str, validity_hours: float = 24.0,
                 timeout_hours: float | str | None = None, mode: str = "reschedule",
                 poke_interval: float = 60, **kwargs: Any) -> None:
        super().__init__(mode=mode, poke_interval=poke_interval, **kwargs)
        self.request_task_id = request_task_id
        self.validity_hours = float(validity_hours)
        self.timeout_hours = timeout_hours

    def execute(self, context) -> Any:
        if self.timeout_hours not in (None, ""):
            try:
                hours = float(self.timeout_hours)
            except (TypeError, ValueError):
                raise AirflowFailException(
                    f"approval timeout {self.timeout_hours!r} is not a number of hours; "
                    "set the DAG param approval_timeout_hours to e.g. 72") from None
            self.timeout = hours * 3600
        try:
            return super().execute(context)
        except AirflowSensorTimeout:
            self._expire(context)
            raise

    def _expire(self, context) -> None:
        # nobody decided in time: the request must not stay "pending" for a run that gave up
        request_id = self.request_id(context)
        with task_connection() as (_, conn):
            api.expire_request(conn, load_plan(), request_id,
                   f"no decision within {self.timeout / 3600:g} h; the waiting 4D run stopped. "
                   "Trigger phase4d_legacy_cleanup again for a new request")

    def request_id(self, context) -> int:
        value = context["ti"].xcom_pull(task_ids=self.request_task_id)
        if isinstance(value, dict):
            value = value.get("request_id", value.get("id"))
        try:
            return int(value)
        except (TypeError, ValueError):
            raise AirflowFailException(
                f"task {self.request_task_id} returned no approval request id (got {value!r}); "
                "it must return the id from approvals.open_request") from None

    def poke(self, context) -> bool:
        request_id = self.request_id(context)
        plan = load_plan()
        with task_connection() as (_, conn):
            try:
                state = api.approval_state(conn, plan, request_id, validity_hours=self.validity_hours)
            except ApprovalRefused as exc:
                raise AirflowFailException(str(exc)) from None
        if state == "approved":
            self.log.info("request %s approved and verified against the data", request_id)
            return True
        self.log.info("request %s is pending: decide with the DAG phase4d_cleanup_approval or "
                      "`python -m consolidation approve|reject --by NAME --reason TEXT --request %s`",
                      request_id, request_id)
        return False


class ApprovalSensor(CleanupApprovalSensor):
    """CleanupApprovalSensor whose poke interval is the run's `approval_poke_seconds` param."""

    template_fields = (*CleanupApprovalSensor.template_fields, "poke_seconds")

    def __init__(self, *, poke_seconds: str | float = 60, **kwargs):
        super().__init__(**kwargs)
        self.poke_seconds = poke_seconds

    def execute(self, context):
        self.poke_interval = max(1.0, float(self.poke_seconds))
        return super().execute(context)
