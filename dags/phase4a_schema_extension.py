"""
### Phase 4A: extend the consolidated schemas (non-destructive), closed by the 4A gate
1. **inventory**: the plan checked against the live database; a blocking finding stops the run.
2. **prepare**: consolidated schemas and the tool's tables (ledger, quarantine, conflicts, undo).
3. **one TaskGroup per legacy schema**: creates the targets its steps need (columns, types, keys,
   checks, indexes, grants; own identity sequences). An existing target is compared with the plan:
   compatible, it is used; different, the run stops with a column-by-column diff.
4. **finalize**: foreign keys re-pointed between targets; views the plan recreates.
5. **gate_4A** (Great Expectations): every target exists with the planned columns, types and keys,
   and nothing refers to a legacy object. Its result goes to the ledger; 4B requires it.
"""
from __future__ import annotations

from airflow.sdk import chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag, dag_plan, schema_groups

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses

with consolidation_dag("phase4a_schema_extension", __doc__, tags=["phase4"],
                       description="Phase 4A: create what the plan needs in the consolidated schemas",
                       refused=refused) as dag:
    inventory = task(task_id="inventory")(tasks.inventory)()
    prepare = task(task_id="prepare")(tasks.prepare_4a)()
    groups = schema_groups(plan.legacy_schemas, "targets fed by {schema}", lambda schema: task(
        task_id="create_targets")(tasks.extend_group)(legacy_schema=schema))
    finalize = task(task_id="finalize")(tasks.finalize_4a)()
    gate = task(task_id="gate_4A")(tasks.gate)(phase="4A")
    # the database's lease: taken first (refused while another phase runs), given back last, also
    # after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    # one group at a time: DDL on shared targets never interleaves
    chain(lease, inventory, prepare, *groups, finalize, gate, release)
