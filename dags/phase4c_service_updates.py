"""
### Phase 4C: point every migrated table at its consolidated home, closed by the 4C gate
Refuses to start unless the latest **4B gate** passed. Then the **table registry**
(`{registry}`, the single source of truth services read to find a table)
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
every service smoke query in the plan's `smoke_dir` returns the same rows through the registry as
from the legacy tables; the JSON export equals the table. Its result goes to the ledger; 4D
requires it.
"""
from __future__ import annotations

from airflow.sdk import Param, chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag, dag_plan, schema_groups

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses
migrating = [s for s in plan.legacy_schemas if any(st.action != "delete" for st in plan.steps_for_schema(s))]

with consolidation_dag(
    "phase4c_service_updates",
    __doc__.format(registry=".".join(plan.tool_table("registry"))),  # the plan names the registry table
    tags=["phase4"],
    description="Phase 4C: the table registry services read, proven by service smoke queries",
    # null-able: the UI's form treats an empty required string as missing and disables Trigger
    params={"export_dir": Param(None, type=["null", "string"],
                                description="folder for registry.json (empty: $CONSOLIDATION_REGISTRY_DIR "
                                            "or .state/registry)")},
    refused=refused,
) as dag:
    guard = task(task_id="require_4B_gate")(tasks.require_gate)(phase="4C")
    prepare = task(task_id="prepare_registry")(tasks.prepare_registry)()
    groups = schema_groups(migrating, "registry entries for {schema}'s migrated tables", lambda schema: task(
        task_id="register")(tasks.register_group)(legacy_schema=schema))
    export = task(task_id="export_registry")(tasks.export_registry)()
    # all_done: a failed group still gets a gate that names what is missing
    gate = task(task_id="gate_4C", trigger_rule="all_done")(tasks.gate)(phase="4C")
    # one group at a time: each register GRANTs on the shared registry/schema, and concurrent
    # GRANTs on one object fail in PostgreSQL ("tuple concurrently updated") under a real executor
    # the database's lease: taken first (refused while another phase runs), given back last, also
    # after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    chain(lease, guard, prepare, *groups, export, gate, release)
