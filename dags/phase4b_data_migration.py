"""Phase 4B: move the data inside the database, step by step, closed by the 4B gate."""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, TaskGroup, task

from consolidation.core.plan import load_plan
from consolidation.airflow import tasks

plan = load_plan()  # a YAML read: no database at parse time

DOC = """
### Phase 4B: data migration (non-destructive)
Refuses to start unless the latest **4A gate** passed. Then, one TaskGroup per legacy schema and one
task per plan step, in plan order (list referenced tables before the tables that point at them):
each step runs inside the database in one transaction (INSERT ... SELECT; rows never travel through
Python), idempotently. Rows that cannot be stored go to the quarantine with the original row as JSONB
and the reason; a step fails when its quarantine exceeds the plan's threshold (default 0).

**gate_4B** (Great Expectations) proves, for every step, against the data: every source row is present
in its target (hashed comparison, not counts), counts reconcile (read = present + quarantined), keys
are unique and not null, foreign keys resolve, merged targets hold every source key.
"""

with DAG(
    dag_id="phase4b_data_migration",
    description="Phase 4B: migrate every planned row, then prove it",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    params={"dry_run": Param(False, type="boolean", description="print each step's SQL instead of running it")},
    tags=["consolidation", "phase4"],
) as dag:
    guard = task(task_id="require_4A_gate")(tasks.require_gate_task)(phase="4B")
    # all_done: a failed step still gets a gate that records what is missing, and where
    gate = task(task_id="gate_4B", trigger_rule="all_done")(tasks.gate_task)(phase="4B")
    previous = guard
    for schema in plan.legacy_schemas:
        steps = [s for s in plan.steps_for_schema(schema) if s.migrates_rows or s.is_recreated_view]
        if not steps:
            continue
        with TaskGroup(group_id=schema, tooltip=f"steps reading {schema}") as group:
            chain_prev = None
            for step in steps:
                t = task(task_id=step.name)(tasks.step_task)(step_name=step.name)
                if chain_prev is not None:
                    chain_prev >> t
                chain_prev = t
        previous >> group
        previous = group
    previous >> gate
