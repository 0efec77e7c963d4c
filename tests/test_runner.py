"""dev.runner, what `consolidation run --phase` and `make demo` use besides Airflow itself
(the runs: tests/test_run_phase.py, runtime tier)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_the_migration_is_skipped_only_for_the_default_sqlite_left_as_migrated(tmp_path, monkeypatch):
    """What `consolidation run` compares before skipping `airflow db migrate`: Airflow's own
    default SQLite file in AIRFLOW_HOME and its alembic revision; anything else is migrated."""
    import sqlite3

    from consolidation.dev import runner

    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", raising=False)
    assert runner._metadata_state(tmp_path) is None  # nothing there yet
    (tmp_path / "airflow.cfg").write_text(f"[database]\nsql_alchemy_conn = sqlite:///{tmp_path / 'airflow.db'}\n")
    with sqlite3.connect(tmp_path / "airflow.db") as conn:
        conn.execute("CREATE TABLE alembic_version (version_num text)")
        conn.execute("INSERT INTO alembic_version VALUES ('abc123')")
    state = runner._metadata_state(tmp_path)
    assert state is not None and state["revision"] == "abc123" and state["airflow"]
    with sqlite3.connect(tmp_path / "airflow.db") as conn:  # another revision: migrate again
        conn.execute("UPDATE alembic_version SET version_num = 'def456'")
    assert runner._metadata_state(tmp_path)["revision"] == "def456"
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{tmp_path / 'airflow.db'}")
    assert runner._metadata_state(tmp_path) is None  # a metadata database set by the environment
    monkeypatch.delenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    (tmp_path / "airflow.cfg").write_text("[database]\nsql_alchemy_conn = postgresql://x@y/z\n")
    assert runner._metadata_state(tmp_path) is None  # a server's: always migrated
