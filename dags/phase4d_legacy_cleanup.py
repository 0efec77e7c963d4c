"""
### Phase 4D: back up and drop the legacy schemas, after a person approved; post-cleanup gate and report
1. **require_4C_gate**: refuses to start unless the latest 4C gate passed.
2. **preflight**: the inventory again (an object in a legacy schema that the plan does not name, or an object
   elsewhere that depends on a legacy one, blocks, named) and the 4B reconciliation again. Rows written to a
   legacy table after 4B block the cleanup, named with their counts, unless the run sets
   `resync_late_rows=true`: then the affected 4B steps are re-run (idempotent) and proven again. The 4B gate
   checks run as a Great Expectations checkpoint (`reconcile_4D`) and must pass.
3. **open_request**: an approval request bound to the fingerprint of the data (plan sha256 + reconciliation
   digest), taken after any re-sync. Its id goes to the sensor via XCom; the log says how to approve.
4. **wait_for_approval**: a human-in-the-loop approval (Browse > Required Actions; the task waits in
   AWAITING_INPUT, holding no worker slot). Assigned to the plan's `approvers` minus the user who triggered
   this run (four eyes); its body shows the fingerprint, the DROP statements per schema, the rows per table,
   the quarantined rows and the backup folder. Respond on that page, or `consolidation approve|reject --user
   NAME --reason TEXT` (the Airflow REST API, as that user). The response Airflow authenticated is checked
   (assigned user, reason) and copied to the approvals table, then the data's fingerprint is verified again;
   a rejection, a stale or forged approval fails the run, nothing dropped. A timeout
   (`approval_timeout_hours`, default 72) never approves.
5. **backup**: every legacy schema dumped with pg_dump (custom format) from one snapshot in which the approved
   fingerprint is verified again; size, sha256 and per-table checksums to the ledger; each archive proven
   readable (pg_restore --list) before anything is dropped. Folder: `backup_dir`, else
   CONSOLIDATION_BACKUP_DIR/<run id> (default .state/backups/<run id>).
6. **one TaskGroup per legacy schema** (one after the other): the archive is re-checked, then in ONE
   transaction the schema's planned objects are locked, compared with the backup checksums, and dropped with
   RESTRICT - views first, tables in dependency order - then the schema. Anything unplanned in the way stops
   the drop, named, and nothing of that schema is dropped. `public` is kept, emptied, unless the plan sets
   `legacy_schemas.public.drop_schema: true`.
7. **gate_4D** (Great Expectations): only the consolidated schemas (and a kept public) hold user objects, every
   migrated table accepts an insert with default keys (rolled back), every consolidated table holds exactly
   the rows it held at backup time.
8. **report**: Markdown + self-contained HTML (`report_dir`, else CONSOLIDATION_REPORT_DIR/<run id>).
"""
from __future__ import annotations

from airflow.sdk import Param, chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag, dag_plan, schema_groups
from consolidation.airflow.approval import CleanupApproval

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses

with consolidation_dag(
    "phase4d_legacy_cleanup", __doc__, tags=["phase4", "destructive"],
    description="Phase 4D: back up and drop the legacy schemas after approval",
    params={
        "resync_late_rows": Param(False, type="boolean",
                                  description="rows found in legacy tables after 4B: false = block and name them; "
                                              "true = re-run the affected 4B steps and prove them again"),
        "approval_timeout_hours": Param(72, type="number", minimum=0,
                                        description="how long to wait for a decision before the run fails"),
        # null-able: the UI's form treats an empty required string as missing and disables Trigger
        "backup_dir": Param(None, type=["null", "string"],
                            description="folder for the archives (empty: CONSOLIDATION_BACKUP_DIR/<run id>)"),
        "report_dir": Param(None, type=["null", "string"],
                            description="folder for report.md/report.html (empty: CONSOLIDATION_REPORT_DIR/<run id>)"),
    },
    refused=refused,
) as dag:
    guard = task(task_id="require_4C_gate")(tasks.require_gate)(phase="4D")
    preflight = task(task_id="preflight")(tasks.preflight)()
    request = task(task_id="open_request")(tasks.open_request)()
    wait = CleanupApproval(task_id="wait_for_approval", request_task_id="open_request", validity_hours=24,
                           retries=0)
    backup = task(task_id="backup", retries=0)(tasks.backup)()
    drops = schema_groups(plan.legacy_schemas, "drop what the plan lists in {schema}", lambda schema: task(
        task_id="drop", retries=0)(tasks.drop)(schema=schema))
    gate = task(task_id="gate_4D")(tasks.gate)(phase="4D")
    report = task(task_id="report")(tasks.report)()
    # the database's lease: taken first (refused while another phase runs), held across the approval
    # wait, given back last, also after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    # one schema at a time: cross-schema foreign keys never deadlock two drops
    chain(lease, guard, preflight, request, wait, backup, *drops, gate, report, release)
