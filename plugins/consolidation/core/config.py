"""Where things live: the repository, the state folder, the plan, the database.

Everything is resolved from the environment at call time (never at import), so a
test or a DAG run can point the engine elsewhere by setting a variable.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
CONNECTION_ID = "consolidation_db"
DEFAULT_PLAN = REPO_ROOT / "include" / "plans" / "phase4.yaml"
SQL_DIR = REPO_ROOT / "include" / "sql"


def state_dir() -> Path:
    """Git-ignored folder for the embedded server, Airflow home, backups, reports."""
    path = Path(os.environ.get("CONSOLIDATION_STATE_DIR", REPO_ROOT / ".state"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def plan_path() -> Path:
    return Path(os.environ.get("CONSOLIDATION_PLAN", DEFAULT_PLAN))


def configured_db_url() -> str | None:
    """The user's own server, when they name one; None means the embedded default."""
    return os.environ.get("CONSOLIDATION_DB_URL") or None


def backup_dir() -> Path:
    path = Path(os.environ.get("CONSOLIDATION_BACKUP_DIR", state_dir() / "backups"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def report_dir() -> Path:
    path = Path(os.environ.get("CONSOLIDATION_REPORT_DIR", state_dir() / "reports"))
    path.mkdir(parents=True, exist_ok=True)
    return path
