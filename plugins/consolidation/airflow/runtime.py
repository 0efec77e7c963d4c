"""What a task needs from Airflow at run time: the database, the run, the person.

Imported by DAG files; cheap (no database, no Great Expectations at import). The
functions here run inside tasks only.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from consolidation.core import config


@dataclass
class RunInfo:
    run_id: str
    user: str  # the authenticated user who triggered the run, or "scheduler"
    dag_id: str


def run_info(context) -> RunInfo:
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None) or (
        "scheduler" if str(getattr(dag_run, "run_type", "")).endswith("scheduled") else "unknown")
    return RunInfo(dag_run.run_id, user, dag_run.dag_id)


def task_dsn() -> str:
    """DSN of the consolidation_db connection; CONSOLIDATION_DB_URL wins when set."""
    if os.environ.get("CONSOLIDATION_DB_URL"):
        return os.environ["CONSOLIDATION_DB_URL"]
    from consolidation.core.db import airflow_connection_dsn

    return airflow_connection_dsn(config.CONNECTION_ID)


@contextmanager
def task_connection():
    from consolidation.core import db

    dsn = task_dsn()
    with db.connect(dsn) as conn:
        yield dsn, conn
