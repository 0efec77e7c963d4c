"""Nightly validation of the consolidated schemas: keys, foreign keys, registry, row counts, freshness."""
from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, TaskGroup, task

from consolidation.airflow import nightly_tasks as nightly
from consolidation.airflow.notify import NightlyFailureNotifier
from consolidation.core.plan import load_plan

plan = load_plan()  # a YAML read: no database at parse time

# Read at parse time from the environment only (cheap, no Airflow Variable, no database).
CRON = os.environ.get("CONSOLIDATION_NIGHTLY_CRON", "0 3 * * *")
TIMEZONE = os.environ.get("CONSOLIDATION_TIMEZONE", "UTC")
try:
    TZ = pendulum.timezone(TIMEZONE)
except Exception as exc:  # pendulum raises InvalidTimezone (a subclass of ValueError in 3.x)
    raise ValueError(f"CONSOLIDATION_TIMEZONE={TIMEZONE!r} is not an IANA time zone name "
                     f"(e.g. UTC, Europe/Berlin, America/New_York): {exc}") from None
try:
    SCHEDULE = CronTriggerTimetable(CRON, timezone=TZ)
    SCHEDULE.validate()
except Exception as exc:
    raise ValueError(f"CONSOLIDATION_NIGHTLY_CRON={CRON!r} is not a cron expression "
                     f"(e.g. '0 3 * * *' for 03:00 every day): {exc}") from None

DOC = f"""
### Nightly validation of the consolidated schemas
Scheduled `{CRON}` in time zone `{TIMEZONE}` (env `CONSOLIDATION_NIGHTLY_CRON`, `CONSOLIDATION_TIMEZONE`).

One TaskGroup per consolidated schema, one Great Expectations checkpoint each; the expectations are derived
from the plan and the live catalog every night: keys unique and not null, foreign keys resolve, the registry's
entries name existing relations, migrated tables never lose rows from one validation to the next unless the
ledger records why (`python -m consolidation validate --accept-drop SCHEMA.TABLE --reason TEXT`), and the plan's
freshness rules hold. Results: the history table `{'.'.join(plan.tool_table(nightly.HISTORY))}`, GX validation
results, and the page under **Consolidation -> Nightly validation** in the menu.

**report** fails the run with a summary naming each table, expectation and observed value; on failure the
notifier named by `CONSOLIDATION_NOTIFIER` (or the Variable `consolidation_notifier`) is called, if any.
"""

with DAG(
    dag_id=nightly.DAG_ID,
    description="Nightly: prove the consolidated data is whole, against the data",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    on_failure_callback=NightlyFailureNotifier(),
    tags=["consolidation", "nightly"],
) as dag:
    prepare = task(task_id="prepare")(nightly.prepare_task)()
    # all_done: a failed schema still gets a verdict (and a page) naming what failed
    report = task(task_id="report", trigger_rule="all_done")(nightly.report_task)()
    for schema in plan.consolidated_schemas:
        with TaskGroup(group_id=schema, tooltip=f"checks of {schema}") as group:
            task(task_id="validate")(nightly.validate_schema_task)(schema=schema)
        prepare >> group >> report
