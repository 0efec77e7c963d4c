"""The one wrapper every task body of the DAGs goes through, and what it hands the body.

`@task_body` turns `body(t, **kwargs) -> api.Outcome` into the callable a DAG gives to
Airflow's @task: it builds a TaskRun `t` from the Airflow context (the plan, the run id and
the triggering user, the params, the database connected on first use), calls the body,
closes the connection (committed, or rolled back when the body raised), prints the outcome's
lines, raises its failure, and returns its value as the task's XCom.

Imported by DAG files: nothing here touches a database at import.
"""
from __future__ import annotations

import inspect
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

from consolidation.airflow.connection import task_dsn
from consolidation.api import Outcome
from consolidation.api.runs import LEASED_DAGS
from consolidation.core import db
from consolidation.core.errors import Refusal
from consolidation.core.plan import Plan, PlanError, load_plan


@dataclass
class RunInfo:
    run_id: str
    user: str  # the authenticated user who triggered the run, or "scheduler"
    dag_id: str
    triggered_by: str | None = None  # the authenticated user only, None when nobody triggered it
    conf: dict = field(default_factory=dict)


def run_info(context) -> RunInfo:
    dag_run = context["dag_run"]
    triggered_by = getattr(dag_run, "triggering_user_name", None)
    user = triggered_by or ("scheduler" if str(getattr(dag_run, "run_type", "")).endswith("scheduled") else "unknown")
    return RunInfo(dag_run.run_id, user, dag_run.dag_id, triggered_by, dict(getattr(dag_run, "conf", None) or {}))


class TaskRun:
    """What a task body gets: `plan`, `info` (run id, user, ...), `params`, `dsn`, `conn`
    (connected on first use, closed by the wrapper), `run` (run_id= and user= for the api)."""

    def __init__(self, context: dict, stack: ExitStack):
        self.context = context
        self.info = run_info(context)
        self.params = dict(context.get("params") or {})
        self._stack = stack

    @property
    def run(self) -> dict[str, Any]:
        return {"run_id": self.info.run_id, "user": self.info.user}

    @cached_property
    def plan(self) -> Plan:
        return load_plan()

    @cached_property
    def dsn(self) -> str:
        return task_dsn()

    @cached_property
    def conn(self):
        return self._stack.enter_context(db.connect(self.dsn))

    def xcom(self, task_id: str) -> Any:
        return self.context["ti"].xcom_pull(task_ids=task_id)


# the task bodies that take and give back the lease themselves
LEASE_TASKS = {"acquire_lease", "release_lease"}


def lease_for(t: TaskRun) -> None:
    """A task of a DAG that changes the database works only while its run holds the lease:
    renewed now, or taken again when free (a task cleared after the run ended); LeaseRefused,
    naming the holder, when another run has it. The run's advisory lock is held until the
    task ends, so the lease counts as alive while it works, however long."""
    from consolidation.core.runs.lease import acquire, hold

    with db.connect(t.dsn) as conn:
        acquire(conn, t.plan, phase=LEASED_DAGS[t.info.dag_id], run_id=t.info.run_id, user=t.info.user,
                dag=t.info.dag_id)
    t._stack.enter_context(hold(t.dsn, t.info.run_id))


class TaskRefused(SystemExit):
    """A task that refuses (a plan that cannot be run, a blocked inventory, a failed gate, ...):
    it fails, and its log ends with the refusal's lines - Airflow logs a SystemExit as "Task
    exited" with its code, where any other exception gets a traceback. `refusal` is the engine's
    exception it stands for."""

    def __init__(self, message: str, refusal: BaseException | None = None):
        super().__init__(message)
        self.refusal = refusal


def refuse(message: str, refusal: BaseException | None = None):
    """Fail the task with `message` in its log, no traceback; a refusal of several lines (an
    inventory's findings) is printed whole, its first line is the task's exit message."""
    print(message)
    raise TaskRefused(message.splitlines()[0] if message.strip() else "refused", refusal) from None


def task_body(body: Callable[..., Outcome]) -> Callable[..., Any]:
    """The task callable for `body(t, **kwargs)`; kwargs are the ones the DAG passes (e.g.
    legacy_schema=...), everything else Airflow passes is the context."""
    names = list(inspect.signature(body).parameters)[1:]

    def run(**context):
        kwargs = {name: context.pop(name) for name in names if name in context}
        try:
            with ExitStack() as stack:
                t = TaskRun(context, stack)
                if body.__name__ not in LEASE_TASKS and t.info.dag_id in LEASED_DAGS:
                    lease_for(t)
                outcome = body(t, **kwargs)
        except PlanError as exc:  # the plan cannot be run: its one line is the task's last word
            refuse("plan rejected: " + " ".join(str(exc).splitlines()), exc)
        except Refusal as exc:  # the engine's own refusal: its message, no traceback (a bug keeps its traceback)
            refuse(str(exc) or type(exc).__name__, exc)
        for line in outcome.lines:
            print(line)
        if isinstance(outcome.failure, PlanError):
            refuse("plan rejected: " + " ".join(str(outcome.failure).splitlines()), outcome.failure)
        if isinstance(outcome.failure, Refusal):
            refuse(str(outcome.failure) or type(outcome.failure).__name__, outcome.failure)
        if outcome.failure is not None:
            raise outcome.failure
        return outcome.value

    # not functools.wraps: Airflow reads the signature, and must see **context, not (t, ...)
    run.__name__, run.__qualname__, run.__doc__, run.__module__ = (
        body.__name__, body.__qualname__, body.__doc__, body.__module__)
    return run
