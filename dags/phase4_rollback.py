"""
### Phase 4 rollback: back to the database as it was before Phase 4
1. **assess**: which legacy schemas 4D dropped, what 4A/4B created (the ledger) and the undo log.
2. **restore_legacy** (only after a cleanup): the dropped legacy schemas restored from their 4D backups with
   pg_restore, all in one transaction; every table then equals the checksum recorded when it was dumped.
   Foreign keys 4D removed between legacy schemas are re-created.
3. **undo_migration** (skipped with `restore_only=true`): removes exactly what 4A and 4B created - the rows
   inserted into tables that existed before (undo log), the values a merge overwrote (before-images), added
   columns and constraints, then the tables, views and schemas 4A created - in one transaction, every drop
   RESTRICT. Refuses, naming it and changing nothing, when a created table holds rows that did not come from
   the plan, or when anything Phase 4 did not create depends on what it would remove. Recorded in the ledger
   (kind 'rollback'); afterwards Phase 4 starts again from 4A.
The tool's own tables (ledger, approvals, ...) keep the history.

Takes the database's lease first (**acquire_lease**): refused, naming the holder, while another phase runs
(4D holds it across its approval wait). While a cleanup request is pending it refuses, unless
`cancel_pending_cleanup=true`: then the request is rejected with this run as the reason and the waiting 4D
run's lease is taken over (its sensor fails at the next poke; nothing is dropped).
"""
from __future__ import annotations

from airflow.sdk import Param, chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag

with consolidation_dag(
    "phase4_rollback", __doc__, tags=["phase4", "rollback"],
    description="Phase 4 rollback: back to the database as it was before Phase 4",
    params={"restore_only": Param(False, type="boolean",
                                  description="only restore the dropped legacy schemas; keep the consolidated tables"),
            "cancel_pending_cleanup": Param(False, type="boolean",
                                            description="a cleanup request is pending: reject it (with this run as "
                                                        "the reason) and roll back; false = refuse")},
) as dag:
    # the database's lease: taken first (refused while another phase runs), given back last, also
    # after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    chain(lease, task(task_id="assess")(tasks.assess)(),
          task(task_id="restore_legacy", retries=0)(tasks.restore_legacy)(),
          task(task_id="undo_migration", retries=0)(tasks.undo_migration)(), release)
