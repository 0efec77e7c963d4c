"""
### Phase 4B: move the data inside the database, step by step, closed by the 4B gate
Refuses to start unless the latest **4A gate** passed. Then, one TaskGroup per legacy schema and one
task per plan step: each step runs inside the database in one transaction (INSERT ... SELECT; rows
never travel through Python), idempotently. Rows that cannot be stored go to the quarantine with the
original row as JSONB and the reason; a step fails when its quarantine exceeds the plan's threshold
(default 0).

**Steps side by side.** When 4A has written the plan's step graph (the steps each step waits for:
those filling the tables its foreign keys point at, earlier steps into the same target, a recreated
view's tables), each step task depends only on those steps, and independent steps run at once, at
most `CONSOLIDATION_4B_PARALLEL` tasks (default 2) at a time. Without a graph for this very plan,
the steps run one after another in plan order (which lists referenced tables first).

**A big step shared by workers.** With the step graph, a step whose plan sets `batch_rows` is three
tasks in a TaskGroup of its own: `plan_ranges` splits its source into key ranges of `batch_rows` rows
(bounds only), the mapped `run_range` moves one range per task instance, each in one transaction
(several at once, on any worker), and `finish` checks every range is done and closes the step with its
checksums. A re-run skips the ranges already done. Without the graph, such a step runs its batches one
after another inside its one task.

**gate_4B** (Great Expectations), after every step, proves against the data: every source row is
present in its target (hashed comparison, not counts), counts reconcile (read = present +
quarantined), keys are unique and not null, foreign keys resolve, merged targets hold every source key.
"""
from __future__ import annotations

from airflow.sdk import Param, TaskGroup, chain, task

from consolidation.airflow import tasks
from consolidation.airflow.dags import airflow_id, consolidation_dag, dag_plan, display_name, schema_groups
from consolidation.core.runs import step_graph

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses


def steps_of(schema: str) -> list:
    return [s for s in plan.steps_for_schema(schema) if s.migrates_rows or s.is_recreated_view]


SCHEMAS = [s for s in plan.legacy_schemas if steps_of(s)]
# the graph 4A wrote for this plan (one JSON read; phases.migrate.step_graph), or why there is none
graph, no_graph = step_graph.read(plan, [step.name for schema in SCHEMAS for step in steps_of(schema)])
if graph is not None:
    HOW = (f"\n\n**This DAG runs its steps by the step graph** `{graph.path}` ({graph.written_by}, "
           f"{graph.written_at}): {graph.edges()} dependencies, up to {graph.widest()} steps at once, "
           f"at most {step_graph.parallel()} tasks at a time.")
else:
    HOW = f"\n\n**This DAG runs its steps one after another, in plan order**: {no_graph}."

with consolidation_dag("phase4b_data_migration", __doc__ + HOW, tags=["phase4"],
                       description="Phase 4B: migrate every planned row, then prove it",
                       params={"dry_run": Param(False, type="boolean",
                                                description="print each step's SQL instead of running it")},
                       max_active_tasks=step_graph.parallel(), refused=refused) as dag:
    guard = task(task_id="require_4A_gate")(tasks.require_gate)(phase="4B")
    step_tasks = {}  # step -> its task (a mapped step: its plan_ranges task, where it starts)
    step_ends = {}  # step -> the task it ends with (a mapped step: its finish task)

    def mapped_step(step):
        """plan_ranges -> run_range (mapped over the ranges) -> finish, in a TaskGroup of the step."""
        gid = airflow_id(step.name)
        with TaskGroup(group_id=gid, tooltip=f"{step.name}: key ranges of {step.batch_rows:,} rows, mapped",
                       **({} if gid == step.name else {"group_display_name": step.name})) as group:
            planned = task(task_id="plan_ranges")(tasks.plan_ranges)(step_name=step.name)
            moved = task(task_id="run_range", map_index_template="{{ task.op_kwargs['key_range']['label'] }}")(
                tasks.run_range).partial(step_name=step.name).expand(key_range=planned)
            finished = task(task_id="finish")(tasks.finish_ranges)(step_name=step.name, key_ranges=planned)
            moved >> finished
        step_tasks[step.name], step_ends[step.name] = planned, finished
        return group

    def step_task(step):
        if graph is not None and step.batch_rows and step.migrates_rows:
            return mapped_step(step)
        step_tasks[step.name] = step_ends[step.name] = task(task_id=airflow_id(step.name), **display_name(step.name))(
            tasks.run_step)(step_name=step.name)
        return step_tasks[step.name]

    if graph is None:
        # plan order, group after group
        groups = schema_groups(SCHEMAS, "steps reading {schema}",
                               lambda schema: chain(*[step_task(step) for step in steps_of(schema)]))
    else:
        groups = schema_groups(SCHEMAS, "steps reading {schema}",
                               lambda schema: [step_task(step) for step in steps_of(schema)])
        for name, t in step_tasks.items():
            for up in graph.upstream[name]:
                if up in step_tasks:
                    step_ends[up] >> t
    # all_done: a failed step still gets a gate that records what is missing, and where
    gate = task(task_id="gate_4B", trigger_rule="all_done")(tasks.gate)(phase="4B")
    # the database's lease: taken first (refused while another phase runs), given back last, also
    # after a failure (a teardown: it does not decide the run's state)
    lease = task(task_id="acquire_lease")(tasks.acquire_lease)()
    release = task(task_id="release_lease")(tasks.release_lease)().as_teardown(setups=lease)
    if graph is None:
        chain(lease, guard, *groups, gate, release)
    else:
        chain(lease, guard)
        for name, t in step_tasks.items():
            if not t.operator.upstream_task_ids:
                guard >> t  # a step that waits for no other step starts after the guard
            step_ends[name] >> gate  # the gate after every step
        if not step_tasks:
            guard >> gate
        chain(gate, release)
