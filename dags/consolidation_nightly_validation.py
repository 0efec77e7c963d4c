"""
### Nightly validation of the consolidated schemas: keys, foreign keys, registry, row counts, freshness
Scheduled `{cron}` in time zone `{timezone}` (env `CONSOLIDATION_NIGHTLY_CRON`, `CONSOLIDATION_TIMEZONE`).

One TaskGroup per consolidated schema, one Great Expectations checkpoint each; the expectations are derived
from the plan and the live catalog every night: keys unique and not null, foreign keys resolve, the registry's
entries name existing relations, migrated tables never lose rows from one validation to the next unless the
ledger records why (`python -m consolidation validate --accept-drop SCHEMA.TABLE --reason TEXT`), and the plan's
freshness rules hold. Results: the history table `{history}`, GX validation
results, and the page under **Consolidation -> Nightly validation** in the menu.

**report** fails the run with a summary naming each table, expectation and observed value; on failure the
notifier named by `CONSOLIDATION_NOTIFIER` (or the Variable `consolidation_notifier`) is called, if any.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import task

from consolidation.airflow import tasks
from consolidation.airflow.dags import consolidation_dag, dag_plan, nightly_schedule, schema_groups
from consolidation.airflow.notify import NightlyFailureNotifier
from consolidation.phases.nightly import DAG_ID, HISTORY

plan, refused = dag_plan()  # a YAML read: no database at parse time; a refused plan still parses
schedule = nightly_schedule()  # from the environment at parse time (a ValueError names a wrong variable)

with consolidation_dag(
    DAG_ID,
    # the schedule and the plan's history table, filled into the docstring
    __doc__.format(cron=schedule.cron, timezone=schedule.timezone, history=".".join(plan.tool_table(HISTORY))),
    tags=["nightly"],
    description="Nightly: prove the consolidated data is whole, against the data",
    schedule=schedule.timetable,
    start_date=pendulum.datetime(2026, 1, 1, tz=schedule.tz),
    on_failure_callback=NightlyFailureNotifier(),
    refused=refused,
) as dag:
    prepare = task(task_id="prepare")(tasks.nightly_prepare)()
    groups = schema_groups(plan.consolidated_schemas, "checks of {schema}", lambda schema: task(
        task_id="validate")(tasks.validate_schema)(schema=schema))
    # all_done: a failed schema still gets a verdict (and a page) naming what failed
    report = task(task_id="report", trigger_rule="all_done")(tasks.nightly_report)()
    prepare >> groups >> report
