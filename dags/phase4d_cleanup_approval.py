"""
### Phase 4D: approve or reject the legacy cleanup
**phase4d_legacy_cleanup** waits (holding no worker slot) for a decision on its approval request:
the fingerprint of the data it would drop, recomputed from the data when it asked.

Trigger this DAG with the form: `decision` (approve or reject), `reason` (what you reviewed) and,
optionally, `request` (default: the single pending request; `python -m consolidation status` lists it).

* The approver recorded is **you, the authenticated user who triggered this run**; there is no name
  field, and a name in the conf is ignored.
* A rejection ends the waiting cleanup run with your reason; nothing is dropped.
* An approval is used only while the data still has the approved fingerprint and for 24 h; after
  that the cleanup refuses it and asks again.

Same from a shell: `python -m consolidation approve|reject --by NAME --reason TEXT [--request ID]`.
"""
from __future__ import annotations

from airflow.sdk import Param, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag
from consolidation.phases.approvals import REASON_MIN_LENGTH

with consolidation_dag(
    "phase4d_cleanup_approval", __doc__, tags=["phase4", "approval"],
    description="Phase 4D: approve or reject the pending legacy-cleanup request",
    params={
        "request": Param(None, type=["null", "integer"], minimum=1, title="Request id",
                         description="the approval request to decide; empty = the single pending request"),
        "decision": Param(type="string", enum=["approve", "reject"], title="Decision"),
        "reason": Param(type="string", minLength=REASON_MIN_LENGTH, title="Reason",
                        description="what you reviewed and why you decide so (recorded with your user name)"),
    },
) as dag:
    task(task_id="record_decision", retries=0)(tasks.record_decision)()
