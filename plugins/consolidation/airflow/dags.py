"""What every DAG file in dags/ shares: the DAG header, one TaskGroup per schema, and the
nightly schedule read from the environment. Imported at parse time: no database, no engine."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, TaskGroup

START = pendulum.datetime(2026, 1, 1, tz="UTC")


def consolidation_dag(dag_id: str, doc: str, *, description: str, tags: Iterable[str], schedule=None,
                      start_date=START, params: dict | None = None, **kwargs: Any) -> DAG:
    """DAG(...) with the suite's header: triggered by hand unless a schedule is given, starting
    2026-01-01, no catchup, one run at a time, tagged "consolidation", the docstring as doc_md."""
    return DAG(dag_id=dag_id, description=description, schedule=schedule, start_date=start_date, catchup=False,
               max_active_runs=1, doc_md=doc, params=params, tags=["consolidation", *tags], **kwargs)


def schema_groups(schemas: Iterable[str], tooltip: str, tasks_of: Callable[[str], Any]) -> list[TaskGroup]:
    """One TaskGroup per schema (group id: the schema; `tooltip` may say {schema}) holding the
    tasks `tasks_of(schema)` makes; the groups in the order of `schemas`."""
    groups = []
    for schema in schemas:
        with TaskGroup(group_id=schema, tooltip=tooltip.format(schema=schema)) as group:
            tasks_of(schema)
        groups.append(group)
    return groups


@dataclass
class NightlySchedule:
    cron: str
    timezone: str
    tz: Any
    timetable: CronTriggerTimetable


def nightly_schedule() -> NightlySchedule:
    """CONSOLIDATION_NIGHTLY_CRON (default 03:00) in CONSOLIDATION_TIMEZONE (default UTC): read
    from the environment only (cheap: no Airflow Variable, no database); ValueError naming the
    variable when either is wrong."""
    cron = os.environ.get("CONSOLIDATION_NIGHTLY_CRON", "0 3 * * *")
    timezone = os.environ.get("CONSOLIDATION_TIMEZONE", "UTC")
    try:
        tz = pendulum.timezone(timezone)
    except Exception as exc:  # pendulum raises InvalidTimezone (a subclass of ValueError in 3.x)
        raise ValueError(f"CONSOLIDATION_TIMEZONE={timezone!r} is not an IANA time zone name "
                         f"(e.g. UTC, Europe/Berlin, America/New_York): {exc}") from None
    try:
        timetable = CronTriggerTimetable(cron, timezone=tz)
        timetable.validate()
    except Exception as exc:
        raise ValueError(f"CONSOLIDATION_NIGHTLY_CRON={cron!r} is not a cron expression "
                         f"(e.g. '0 3 * * *' for 03:00 every day): {exc}") from None
    return NightlySchedule(cron, timezone, tz, timetable)
