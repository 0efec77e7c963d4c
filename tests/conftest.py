"""Shared fixtures: one PostgreSQL server per session, one throw-away database per test.

Server: CONSOLIDATION_DB_URL when set (any database on that server; it is only used to
reach the server), else the embedded server from the repository's .state/pgdata (started
if needed, left running afterwards, like `make demo` leaves it).

Tests never touch the `betting` database: use

    def test_x(db_dsn): ...                       # a fresh empty database (from template0)
    def test_y(make_db):
        dsn = make_db()                           # another fresh database
        clone = make_db(template="ctest_abc")     # a copy of an existing database
    make_session_db                               # same factory, dropped at session end
                                                  # (build a fixture once, clone per test)

Every database is named ctest_<hex> and dropped WITH (FORCE) at teardown, so the suite
also runs against a shared cluster (e.g. PostgreSQL 15 on 127.0.0.1:5432). Roles are
cluster-wide: tests that create roles must use unique names and drop them.

Environment, set here at import time (before anything imports Airflow):
  CONSOLIDATION_PGDATA      pinned to the repository's .state/pgdata (computed from the
                            caller's CONSOLIDATION_STATE_DIR, or .state) BEFORE the state dir is
                            redirected, so the embedded server - and CLI subprocesses started by
                            tests, which inherit the environment - keep using the developer's
                            server instead of initialising a new one in a temporary folder.
  CONSOLIDATION_STATE_DIR   a per-session temporary folder (backups, reports, ledgers...);
                            CONSOLIDATION_BACKUP_DIR / _REPORT_DIR are unset to follow it.
  AIRFLOW_HOME              a per-session temporary folder; no example DAGs; dags/ and plugins/
                            of this repository.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = REPO_ROOT / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="consolidation-tests-"))

os.environ.setdefault(
    "CONSOLIDATION_PGDATA",
    str(Path(os.environ.get("CONSOLIDATION_STATE_DIR") or REPO_ROOT / ".state") / "pgdata"),
)
os.environ["CONSOLIDATION_STATE_DIR"] = str(_SESSION_TMP / "state")
for _name in ("CONSOLIDATION_BACKUP_DIR", "CONSOLIDATION_REPORT_DIR"):
    os.environ.pop(_name, None)
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PLUGINS)
# subprocesses (`python -m consolidation ...`) find the package too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p
)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server/credentials, another database (URL or key=value DSN)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + dbname))
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return make_conninfo(**info)


@pytest.fixture(scope="session")
def server_dsn() -> str:
    """DSN of the server under test (CONSOLIDATION_DB_URL, else the embedded server)."""
    from consolidation.core import config

    configured = config.configured_db_url()
    if configured:
        return configured
    from consolidation.core import embedded

    embedded.start()
    return embedded.url("postgres")


@pytest.fixture(scope="session")
def maintenance_dsn(server_dsn) -> str:
    """The server's `postgres` database, for CREATE/DROP DATABASE."""
    return with_dbname(server_dsn, "postgres")


class _DatabaseFactory:
    def __init__(self, server_dsn: str, maintenance_dsn: str):
        self.server_dsn = server_dsn
        self.maintenance_dsn = maintenance_dsn
        self.created: list[str] = []

    def __call__(self, template: str | None = None) -> str:
        import psycopg
        from psycopg import sql

        name = f"ctest_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template or "template0")
                )
            )
        self.created.append(name)
        return with_dbname(self.server_dsn, name)

    def drop_all(self) -> None:
        if not self.created:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
            for name in reversed(self.created):  # clones before their templates
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        self.created.clear()


@pytest.fixture
def make_db(server_dsn, maintenance_dsn):
    """Factory: make_db(template=None) -> DSN of a new database, dropped after the test."""
    factory = _DatabaseFactory(server_dsn, maintenance_dsn)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def make_session_db(server_dsn, maintenance_dsn):
    """Like make_db, but the databases live until the end of the session."""
    factory = _DatabaseFactory(server_dsn, maintenance_dsn)
    yield factory
    factory.drop_all()


@pytest.fixture
def db_dsn(make_db) -> str:
    """DSN of a fresh, empty database."""
    return make_db()


@pytest.fixture
def run_cli():
    """run_cli("db", "status", dsn=None, env={...}) -> CompletedProcess (text, captured).

    With dsn=..., the command runs with CONSOLIDATION_DB_URL=dsn (so it never falls back to
    the embedded `betting` database).
    """

    def _run(*args: str, dsn: str | None = None, env: dict | None = None, timeout: float = 120):
        full_env = dict(os.environ)
        if dsn is not None:
            full_env["CONSOLIDATION_DB_URL"] = dsn
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "consolidation", *args],
            cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
        )

    return _run


def dbname_of(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)["dbname"]


@pytest.fixture(scope="session")
def fixture_template(make_session_db) -> str:
    """Name of a session database holding the Phase 1-3 fixture (scale 1); clone it."""
    from consolidation.dev import fixture

    dsn = make_session_db()
    fixture.build(dsn)
    return dbname_of(dsn)


@pytest.fixture
def legacy_db(make_db, fixture_template) -> str:
    """DSN of a fresh copy of the legacy fixture database (as Phases 1-3 left it)."""
    return make_db(template=fixture_template)


@pytest.fixture(scope="session")
def airflow_dags():
    """The DAG bag of dags/, with Airflow's metadata database created (once per session)."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True, env=dict(os.environ))
    from airflow.models.dagbag import DagBag

    bag = DagBag(str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="session")
def run_dag(airflow_dags):
    """run_dag(dag_id, dsn, conf=None) -> the DagRun's state, after dag.test() against `dsn`.

    The DAG reaches the database through the Airflow connection consolidation_db, set
    from `dsn` for the duration of the run (CONSOLIDATION_DB_URL is hidden meanwhile).
    """

    def _run(dag_id: str, dsn: str, conf: dict | None = None) -> str:
        saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_CONSOLIDATION_DB", "CONSOLIDATION_DB_URL")}
        os.environ["AIRFLOW_CONN_CONSOLIDATION_DB"] = dsn
        os.environ.pop("CONSOLIDATION_DB_URL", None)
        dag = airflow_dags.dags[dag_id]
        # Airflow merges a run's conf into the Param objects the DAG and its tasks share;
        # in-process runs would inherit the previous run's conf: restore their defaults
        params = [d.get_param(k) for d in (dag.params, *(t.params for t in dag.tasks)) for k in d]
        defaults = [p.value for p in params]
        try:
            run = dag.test(run_conf=conf)
        finally:
            for p, value in zip(params, defaults):
                p.value = value
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return str(getattr(run.state, "value", run.state))

    return _run


# Tests that start Airflow itself as processes (api-server, scheduler, Celery worker, a
# browser). They exercise Airflow's executors, not the database server, so CI's second leg
# (PostgreSQL 15) sets CONSOLIDATION_SKIP_RUNTIME=1 to keep within its time budget.
RUNTIME_MODULES = {"test_local_airflow.py", "test_celery.py", "test_e2e_browser.py"}


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CONSOLIDATION_SKIP_RUNTIME") != "1":
        return
    skip = pytest.mark.skip(reason="Airflow runtime test: runs in CI's first leg (CONSOLIDATION_SKIP_RUNTIME=1)")
    for item in items:
        if item.fspath.basename in RUNTIME_MODULES:
            item.add_marker(skip)
