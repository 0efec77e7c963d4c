"""Phase 4A: extend the consolidated schemas (non-destructive), closed by the 4A gate."""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, TaskGroup, task

from consolidation.core.plan import load_plan
from consolidation.airflow import tasks

plan = load_plan()  # a YAML read: no database at parse time

DOC = """
### Phase 4A: schema extension (non-destructive)
1. **inventory**: the plan checked against the live database; a blocking finding stops the run.
2. **prepare**: consolidated schemas and the tool's tables (ledger, quarantine, conflicts, undo).
3. **one TaskGroup per legacy schema**: creates the targets its steps need (columns, types, keys,
   checks, indexes, grants; own identity sequences). An existing target is compared with the plan:
   compatible, it is used; different, the run stops with a column-by-column diff.
4. **finalize**: foreign keys re-pointed between targets; views the plan recreates.
5. **gate_4A** (Great Expectations): every target exists with the planned columns, types and keys,
   and nothing refers to a legacy object. Its result goes to the ledger; 4B requires it.
"""

with DAG(
    dag_id="phase4a_schema_extension",
    description="Phase 4A: create what the plan needs in the consolidated schemas",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["consolidation", "phase4"],
) as dag:
    inventory = task(task_id="inventory")(tasks.inventory_task)()
    prepare = task(task_id="prepare")(tasks.prepare_4a_task)()
    finalize = task(task_id="finalize")(tasks.finalize_4a_task)()
    gate = task(task_id="gate_4A")(tasks.gate_task)(phase="4A")
    inventory >> prepare
    previous = prepare
    for schema in plan.legacy_schemas:
        with TaskGroup(group_id=schema, tooltip=f"targets fed by {schema}") as group:
            task(task_id="create_targets")(tasks.extend_group_task)(legacy_schema=schema)
        previous >> group
        previous = group  # one group at a time: DDL on shared targets never interleaves
    previous >> finalize >> gate
