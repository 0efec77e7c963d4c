"""Tasks reach the database through the Airflow connection consolidation_db as the postgres
provider's PostgresHook connects to it: its extras (options, application_name, sslmode,
target_session_attrs) reach the server; CONSOLIDATION_DB_URL still wins when it is set."""
from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import quote, urlencode

import pytest
from psycopg.conninfo import conninfo_to_dict

from consolidation.airflow.connection import task_dsn
from consolidation.airflow.runtime import task_body
from consolidation.api import Outcome
from consolidation.core import db

pytestmark = pytest.mark.engine

EXTRAS = {"options": "-c search_path=task_schema,public -c work_mem=7MB",
          "application_name": "consolidation task test", "sslmode": "disable",
          "target_session_attrs": "read-write"}


def airflow_uri(dsn: str, extras: dict) -> str:
    """AIRFLOW_CONN_* URI of a DSN, the extras as its query (Airflow puts them in `extra`)."""
    info = conninfo_to_dict(dsn)
    auth = quote(info.get("user", "postgres"), safe="")
    if info.get("password"):
        auth += ":" + quote(info["password"], safe="")
    return (f"postgresql://{auth}@{quote(info.get('host', '127.0.0.1'), safe='')}:{info.get('port', '5432')}/"
            f"{info['dbname']}?{urlencode(extras, quote_via=quote)}")


def settings(conn) -> tuple:
    return conn.execute("SELECT current_database(), current_setting('search_path'), current_setting('work_mem'), "
                        "current_setting('application_name')").fetchone()


@pytest.fixture
def airflow_connection(db_dsn, monkeypatch) -> str:
    monkeypatch.delenv("CONSOLIDATION_DB_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_CONSOLIDATION_DB", airflow_uri(db_dsn, EXTRAS))
    return db_dsn


def test_the_connections_extras_reach_the_server(airflow_connection):
    dsn = task_dsn()
    assert conninfo_to_dict(dsn) == conninfo_to_dict(airflow_connection) | EXTRAS
    with db.connect(dsn) as conn:
        assert settings(conn) == (conninfo_to_dict(airflow_connection)["dbname"], "task_schema,public", "7MB",
                                  "consolidation task test")
        assert conn.info.get_parameters()["target_session_attrs"] == "read-write"


def test_a_task_body_gets_that_connection(airflow_connection):
    @task_body
    def probe(t) -> Outcome:
        return Outcome(value=[*settings(t.conn), t.run], lines=["probed"])

    dag_run = SimpleNamespace(run_id="manual__1", dag_id="probe_dag", triggering_user_name="alice",
                              run_type="manual", conf={})
    value = probe(dag_run=dag_run, params={})
    assert value == [conninfo_to_dict(airflow_connection)["dbname"], "task_schema,public", "7MB",
                     "consolidation task test", {"run_id": "manual__1", "user": "alice"}]


def test_consolidation_db_url_wins(db_dsn, monkeypatch):
    monkeypatch.setenv("CONSOLIDATION_DB_URL", db_dsn)
    monkeypatch.setenv("AIRFLOW_CONN_CONSOLIDATION_DB", "postgresql://nobody:secret@127.0.0.1:1/none")
    assert task_dsn() == db_dsn
    with db.connect(task_dsn()) as conn:
        assert conn.execute("SELECT current_setting('application_name')").fetchone()[0] != EXTRAS["application_name"]
