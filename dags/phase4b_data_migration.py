"""
### Phase 4B: move the data inside the database, step by step, closed by the 4B gate
Refuses to start unless the latest **4A gate** passed. Then, one TaskGroup per legacy schema and one
task per plan step, in plan order (list referenced tables before the tables that point at them):
each step runs inside the database in one transaction (INSERT ... SELECT; rows never travel through
Python), idempotently. Rows that cannot be stored go to the quarantine with the original row as JSONB
and the reason; a step fails when its quarantine exceeds the plan's threshold (default 0).

**gate_4B** (Great Expectations) proves, for every step, against the data: every source row is present
in its target (hashed comparison, not counts), counts reconcile (read = present + quarantined), keys
are unique and not null, foreign keys resolve, merged targets hold every source key.
"""
from __future__ import annotations

from airflow.sdk import Param, chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import airflow_id, consolidation_dag, dag_plan, display_name, schema_groups

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses


def steps_of(schema: str) -> list:
    return [s for s in plan.steps_for_schema(schema) if s.migrates_rows or s.is_recreated_view]


with consolidation_dag("phase4b_data_migration", __doc__, tags=["phase4"],
                       description="Phase 4B: migrate every planned row, then prove it",
                       params={"dry_run": Param(False, type="boolean",
                                                description="print each step's SQL instead of running it")},
                       refused=refused) as dag:
    guard = task(task_id="require_4A_gate")(tasks.require_gate)(phase="4B")
    # Plan order, group after group: a DAG file cannot read the catalog, so the foreign-key order of
    # phases.migrate.execution_order (which `python -m consolidation sql --phase 4b` prints) is not
    # used here; the plan lists referenced tables first.
    groups = schema_groups([s for s in plan.legacy_schemas if steps_of(s)], "steps reading {schema}",
                           lambda schema: chain(*[task(task_id=airflow_id(step.name), **display_name(step.name))(
                               tasks.run_step)(step_name=step.name)
                                                  for step in steps_of(schema)]))
    # all_done: a failed step still gets a gate that records what is missing, and where
    gate = task(task_id="gate_4B", trigger_rule="all_done")(tasks.gate)(phase="4B")
    # the database's lease: taken first (refused while another phase runs), given back last, also
    # after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    chain(lease, guard, *groups, gate, release)
