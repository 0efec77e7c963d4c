"""What every DAG file in dags/ shares: the plan read at parse time, the DAG header, one
TaskGroup per schema, and the nightly schedule read from the environment. Imported at parse
time: no database (a YAML read at most)."""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pendulum
from airflow.sdk import DAG, CronTriggerTimetable, TaskGroup

from consolidation.core.plan import Plan, PlanError, load_plan

START = pendulum.datetime(2026, 1, 1, tz="UTC")
_PLAIN_ID = re.compile(r"[a-z0-9_]+")
_MAX_ID = 200  # Airflow's limit is 250 characters, a group's prefix included


def dag_plan() -> tuple[Plan, str | None]:
    """(plan, None) for a DAG file at parse time; when the plan file is refused, (an empty plan,
    the refusal's one line). The DAG then still parses - a refused plan is not an import error
    with a traceback in every DAG file - and shows the refusal on top of its description and
    docs (`consolidation_dag(refused=...)`); any run of it fails at its first task with the
    same line, as the task reads the plan again."""
    try:
        return load_plan(), None
    except PlanError as exc:
        refusal = "plan rejected: " + " ".join(str(exc).splitlines())
        return Plan(name="(plan rejected)", description=refusal, consolidated_schemas={}, legacy_schemas={},
                    tool_schema="consolidation", tool_prefix="", steps=[]), refusal


def consolidation_dag(dag_id: str, doc: str, *, description: str, tags: Iterable[str], schedule=None,
                      start_date=START, params: dict | None = None, refused: str | None = None,
                      **kwargs: Any) -> DAG:
    """DAG(...) with the suite's header: triggered by hand unless a schedule is given, starting
    2026-01-01, no catchup, one run at a time, tagged "consolidation", the docstring as doc_md;
    `refused` (dag_plan's refusal) goes on top of both description and doc_md, and the DAG is
    tagged "plan-rejected" (its runs fail at their first task)."""
    if refused:
        description = f"{refused} | {description}"
        doc = f"**{refused}**\n\nFix the plan file; every run of this DAG fails at its first task until then.\n\n{doc}"
        tags = [*tags, "plan-rejected"]
    return DAG(dag_id=dag_id, description=description, schedule=schedule, start_date=start_date, catchup=False,
               max_active_runs=1, doc_md=doc, params=params, tags=["consolidation", *tags], **kwargs)


def airflow_id(name: str) -> str:
    """A task or TaskGroup id for a name from the plan or the catalog (any name PostgreSQL accepts).

    Airflow ids are letters, digits, '_', '-' (and '.' between a group and its tasks): a name of
    lowercase ASCII letters, digits and '_' is its own id; any other is lowercased, every other
    character becomes '_', and 8 hex digits of the name's sha256 are added, so names that read
    alike (`UPPER Case`, `upper_case`) get different ids, the same ones in every process.
    The real name goes in the display name (`display_name`)."""
    if _PLAIN_ID.fullmatch(name) and len(name) <= _MAX_ID:
        return name
    base = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:_MAX_ID] or "x"
    return f"{base}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def display_name(name: str) -> dict[str, str]:
    """task(...) keyword for a task whose id is airflow_id(name): the real name, when it differs."""
    return {} if airflow_id(name) == name else {"task_display_name": name}


def schema_groups(schemas: Iterable[str], tooltip: str, tasks_of: Callable[[str], Any]) -> list[TaskGroup]:
    """One TaskGroup per schema (group id: airflow_id(schema), shown as the schema's name;
    `tooltip` may say {schema}) holding the tasks `tasks_of(schema)` makes; the groups in the
    order of `schemas`."""
    groups = []
    for schema in schemas:
        gid = airflow_id(schema)
        extra = {} if gid == schema else {"group_display_name": schema}
        with TaskGroup(group_id=gid, tooltip=tooltip.format(schema=schema), **extra) as group:
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
