"""Phase 4C: point every migrated table at its consolidated home, closed by the 4C gate."""
from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, TaskGroup, task

from consolidation.core.plan import load_plan
from consolidation.airflow import service_tasks, tasks

plan = load_plan()  # a YAML read: no database at parse time

DOC = f"""
### Phase 4C: service updates (non-destructive)
Refuses to start unless the latest **4B gate** passed. Then the **table registry**
(`{'.'.join(plan.tool_table('registry'))}`, the single source of truth services read to find a table)
gets one entry per migrated legacy object, one TaskGroup per legacy schema: logical name (the legacy
`schema.table`), the consolidated table holding its rows, the filter selecting them when several
sources share a table (union provenance, merge), its columns under their legacy names and types,
status, run, user, time. The upsert is idempotent. Roles that could read a legacy table get SELECT
on the registry and, where missing, on its consolidated home (services keep their access).
**export_registry** writes it as JSON (`export_dir` param, else `$CONSOLIDATION_REGISTRY_DIR`, else
`.state/registry/registry.json`); services resolve names with `consolidation.phases.registry.resolve`
(database) or `resolve_file` (JSON file, no database).

**gate_4C** (Great Expectations) proves, against the data: every migrated table has an entry
pointing at its planned target; none points into a legacy schema; every entry resolves (relation,
columns); every legacy reader can read it; each entry returns exactly its legacy table's rows;
every service smoke query in `include/sql/smoke/` returns the same rows through the registry as
from the legacy tables; the JSON export equals the table. Its result goes to the ledger; 4D
requires it.
"""

with DAG(
    dag_id="phase4c_service_updates",
    description="Phase 4C: the table registry services read, proven by service smoke queries",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    # null-able: the UI's form treats an empty required string as missing and disables Trigger
    params={"export_dir": Param(None, type=["null", "string"],
                                description="folder for registry.json (empty: $CONSOLIDATION_REGISTRY_DIR "
                                            "or .state/registry)")},
    tags=["consolidation", "phase4"],
) as dag:
    guard = task(task_id="require_4B_gate")(tasks.require_gate_task)(phase="4C")
    prepare = task(task_id="prepare_registry")(service_tasks.prepare_registry_task)()
    export = task(task_id="export_registry")(service_tasks.export_registry_task)()
    # all_done: a failed group still gets a gate that names what is missing
    gate = task(task_id="gate_4C", trigger_rule="all_done")(service_tasks.gate_4c_task)()
    guard >> prepare
    previous = prepare
    for schema in plan.legacy_schemas:
        if not [s for s in plan.steps_for_schema(schema) if s.action != "delete"]:
            continue
        with TaskGroup(group_id=schema, tooltip=f"registry entries for {schema}'s migrated tables") as group:
            task(task_id="register")(service_tasks.register_group_task)(legacy_schema=schema)
        previous >> group
        # one group at a time: each register GRANTs on the shared registry/schema, and concurrent
        # GRANTs on one object fail in PostgreSQL ("tuple concurrently updated") under a real executor
        previous = group
    previous >> export >> gate
