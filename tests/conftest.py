"""Shared fixtures: one PostgreSQL server per session, one throw-away database per test, and
the phases' stage templates, built once per session and cloned per test.

Server: CONSOLIDATION_DB_URL when set (any database on that server; it is only used to
reach the server), else the embedded server from the repository's .state/pgdata (started
if needed, left running afterwards, like `make demo` leaves it).

Tests never touch the `betting` database: use

    def test_x(db_dsn): ...                       # a fresh empty database (from template0)
    def test_y(make_db):
        dsn = make_db()                           # another fresh database
        clone = make_db(template="ctest_abc")     # a copy of an existing database
    make_session_db                               # same factory, dropped at session end

Every database is named ctest_<hex> and dropped WITH (FORCE) at teardown, so the suite
also runs against a shared cluster (e.g. PostgreSQL 15 on 127.0.0.1:5432). Roles are
cluster-wide: tests that create roles must use unique names and drop them.

Stages (templates, built lazily - only when a selected test asks - through the engine
functions the DAG tasks call, see tests/phase_helpers.py; clone them, never write to them).
One run builds each stage once: the first pytest-xdist worker that asks builds it, the others
wait on its lock file (in a folder of the system's temporary folder named by the run's id,
CONSOLIDATION_TEST_RUN), and the run's own process drops them at the end:

    fixture_template   name of the legacy fixture (Phases 1-3)     legacy_db -> a clone's DSN
    template_4a        Stage: 4A done, its gate passed              db_4a     -> a clone's DSN
    template_4b        Stage: 4B done, its gate passed              db_4b     -> a clone's DSN
    template_4c        Stage: 4C done (registry exported), gate     db_4c     -> a clone's DSN

What the engine writes outside the database lives under CONSOLIDATION_STATE_DIR (GX results,
registry exports, backups, reports, nightly pages). Each test gets its own state folder
(`state_dir`, autouse), so nothing one test writes there is seen by another; each stage
keeps the folder it was built with (Stage.state; 4C's export is Stage.export_file), which
its clones only read.

Tiers (markers, see pytest.ini): a module's `pytestmark` (or a test's own mark) decides;
otherwise: a test that uses run_dag is `dag`, one that uses the database server is
`engine`, anything else `unit`; the modules in RUNTIME_MODULES are `runtime`.
CONSOLIDATION_SKIP_RUNTIME=1 skips the runtime tier (CI's second leg).

Environment, set here at import time (before anything imports Airflow):
  CONSOLIDATION_PGDATA      pinned to the repository's .state/pgdata (computed from the
                            caller's CONSOLIDATION_STATE_DIR, or .state) BEFORE the state dir is
                            redirected, so the embedded server - and CLI subprocesses started by
                            tests, which inherit the environment - keep using the developer's
                            server instead of initialising a new one in a temporary folder.
  CONSOLIDATION_STATE_DIR   a per-session temporary folder (and per test, see above);
                            CONSOLIDATION_BACKUP_DIR / _REPORT_DIR are unset to follow it.
  AIRFLOW_HOME              a per-session temporary folder; no example DAGs; dags/ and plugins/
                            of this repository.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGINS = REPO_ROOT / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="consolidation-tests-"))
# What the processes of one run share: the stage templates and their state folders, built by
# the first worker that needs one (see _stage). The run's own process picks the id before it
# starts its pytest-xdist workers, which inherit it with the environment.
_RUN_ID = os.environ.setdefault("CONSOLIDATION_TEST_RUN", uuid.uuid4().hex[:12])
_SHARED = Path(tempfile.gettempdir()) / f"consolidation-stages-{_RUN_ID}"

os.environ.setdefault(
    "CONSOLIDATION_PGDATA",
    str(Path(os.environ.get("CONSOLIDATION_STATE_DIR") or REPO_ROOT / ".state") / "pgdata"),
)
os.environ["CONSOLIDATION_STATE_DIR"] = str(_SESSION_TMP / "state")
for _name in ("CONSOLIDATION_BACKUP_DIR", "CONSOLIDATION_REPORT_DIR", "CONSOLIDATION_REGISTRY_DIR"):
    os.environ.pop(_name, None)
os.environ["AIRFLOW_HOME"] = str(_SESSION_TMP / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PLUGINS)
# subprocesses (`python -m consolidation ...`) find the package too
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p
)


_STAGES_BUILT: dict[str, float] = {}


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
    if not hasattr(session.config, "workerinput"):  # the run's own process, after every worker
        _STAGES_BUILT.update({s["label"]: s["seconds"] for s in _shared_stages()})
        _drop_shared_stages()


def _shared_stages() -> list[dict]:
    stages = [json.loads(p.read_text()) for p in _SHARED.glob("*.json")] if _SHARED.is_dir() else []
    return sorted(stages, key=lambda s: s["finished"])  # templates before their clones


def _drop_shared_stages() -> None:
    for stage in reversed(_shared_stages()):  # clones before their templates
        try:
            _drop_databases(stage["maintenance_dsn"], [stage["name"]])
        except Exception as exc:  # the server may be gone; say so, do not hide the run's result
            print(f"could not drop stage database {stage['name']}: {exc}", file=sys.stderr)
    shutil.rmtree(_SHARED, ignore_errors=True)


# ------------------------------------------------------------------ tiers
TIERS = ("unit", "engine", "dag", "runtime")
# Tests that start Airflow itself as processes (api-server, scheduler, Celery worker, a
# browser). They exercise Airflow's executors, not the database server, so CI's second leg
# (PostgreSQL 15) sets CONSOLIDATION_SKIP_RUNTIME=1 to keep within its time budget.
RUNTIME_MODULES = {"test_local_airflow.py", "test_celery.py", "test_run_phase.py"}
# the runtime tier's modules in the order its two workers take them (Makefile: loadfile,
# --no-loadscope-reorder): worker 1 the local Airflow with its browser test, then the faults;
# worker 2 Celery, then `consolidation run` (CI, fresh clone: 191 + 70 s against 150 + 73 s)
RUNTIME_ORDER = ("test_local_airflow.py", "test_celery.py", "test_faults.py", "test_run_phase.py")

def _tier(item) -> str:
    fixtures = set(getattr(item, "fixturenames", ()))
    needs = "dag" if "run_dag" in fixtures else "engine" if "server_dsn" in fixtures else "unit"
    closest = next((m.name for m in item.iter_markers() if m.name in TIERS), None)
    if item.path.name in RUNTIME_MODULES:
        tier = "runtime"
        if closest not in (None, "runtime"):
            raise pytest.UsageError(f"{item.nodeid}: marked {closest}, but its module starts Airflow (runtime)")
    else:
        tier = closest or needs
        if closest == "unit" and needs != "unit":
            raise pytest.UsageError(f"{item.nodeid}: marked unit, but it uses the database server ({needs})")
        if closest == "engine" and needs == "dag":
            raise pytest.UsageError(f"{item.nodeid}: marked engine, but it runs a DAG (run_dag): mark it dag")
    return tier


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    skip_runtime = os.environ.get("CONSOLIDATION_SKIP_RUNTIME") == "1"
    skip = pytest.mark.skip(reason="Airflow runtime test: runs in CI's first leg (CONSOLIDATION_SKIP_RUNTIME=1)")
    for item in items:
        tier = _tier(item)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "runtime" and skip_runtime:
            item.add_marker(skip)
    order = {name: i for i, name in enumerate(RUNTIME_ORDER)}
    items.sort(key=lambda item: order.get(item.path.name, -1))  # stable: other modules keep their order


def pytest_terminal_summary(terminalreporter):
    if _STAGES_BUILT:  # read by pytest_sessionfinish, which runs first
        terminalreporter.write_line("stages built (engine, once per run, shared by its workers): " + ", ".join(
            f"{label} {seconds:.1f} s" for label, seconds in _STAGES_BUILT.items()))


def pytest_report_header(config):
    return [f"tiers: {', '.join(TIERS)} (pytest.ini); state folders under {_SESSION_TMP}"]


# ------------------------------------------------------------------ the server and its databases
def with_dbname(dsn: str, dbname: str) -> str:
    """The same server/credentials, another database (URL or key=value DSN)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + dbname))
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(dsn)
    info["dbname"] = dbname
    return make_conninfo(**info)


def dbname_of(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    return conninfo_to_dict(dsn)["dbname"]


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


def _create_database(maintenance_dsn: str, template: str | None, *, background: bool = False) -> str:
    import psycopg

    name = f"ctest_{uuid.uuid4().hex[:16]}"
    statement = _create_statement(maintenance_dsn, name, template)
    with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
        # a template must have no session. Someone reading it (ro_4b, in this worker or another
        # one: the stages are shared) is left alone for a while; then the sessions left over
        # (e.g. a GX pool) are ended and it is tried once more
        for wait in (0.1, 0.2, 0.5, 1, 2, 4, 8, None):
            try:
                conn.execute(statement)
                return name
            except psycopg.errors.ObjectInUse:
                if background:  # the foreground makes it when it is needed
                    raise
                if wait is None:
                    release(conn, template)
                    conn.execute(statement)
                    return name
                time.sleep(wait)
    return name


@functools.lru_cache(maxsize=None)
def _file_copy(maintenance_dsn: str):
    """` STRATEGY FILE_COPY` where the server has it (PostgreSQL 15+). Its default, WAL_LOG, writes
    every page of the copy to the WAL through shared buffers, then the checkpointer writes
    them again and DROP DATABASE scans them out: for a 45 MB stage, about 41 MB of WAL per clone
    and a drop 3x slower. A test run makes a few hundred clones; FILE_COPY copies the files."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
        return sql.SQL(" STRATEGY FILE_COPY") if conn.info.server_version >= 150000 else sql.SQL("")


def _create_statement(maintenance_dsn: str, name: str, template: str | None):
    """CREATE DATABASE name as a copy of `template` (template0 when None)."""
    from psycopg import sql

    return sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
        sql.Identifier(name), sql.Identifier(template or "template0"), _file_copy(maintenance_dsn))


def _drop_databases(maintenance_dsn: str, names) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class _ClonePool:
    """Database housekeeping off the tests' critical path, in two background threads:

    * one spare copy of each registered template (the stages, the fixture, template0), made
      while a test runs, so the next test that asks for a copy gets it at once (only templates
      that no longer change are registered);
    * the drop of each test's databases after the test (DROP DATABASE waits for a checkpoint,
      which takes seconds while the server is busy).
    """

    def __init__(self, maintenance_dsn: str):
        from concurrent.futures import ThreadPoolExecutor

        self.maintenance_dsn = maintenance_dsn
        self.stable: set[str | None] = {None}  # None: template0, an empty database
        self.pending: dict = {}
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ctest-clone")
        self.dropper = ThreadPoolExecutor(1, thread_name_prefix="ctest-drop")
        self.drops: list = []
        self.closed = False

    def discard(self, names: list[str]) -> None:
        """Drop these databases in the background (their test is over)."""
        self.drops.append(self.dropper.submit(_drop_databases, self.maintenance_dsn, list(names)))

    def register(self, template: str) -> None:
        self.stable.add(template)

    def take(self, template: str | None) -> str | None:
        """A ready copy of `template` (None when there is none yet); starts making the next one."""
        if template not in self.stable or self.closed:
            return None
        future = self.pending.pop(template, None)
        name = None
        if future is not None:
            try:
                name = future.result()
            except Exception:  # e.g. a test was reading the template at that moment: make one now
                name = None
        self.pending[template] = self.executor.submit(_create_database, self.maintenance_dsn, template,
                                                      background=True)
        return name

    def close(self) -> None:
        self.closed = True
        spares = []
        for future in self.pending.values():
            try:
                spares.append(future.result())
            except Exception:
                pass
        self.executor.shutdown(wait=True)
        if spares:
            self.discard(spares)
        self.dropper.shutdown(wait=True)
        for future in self.drops:
            future.result()  # a failed drop is reported


class _DatabaseFactory:
    def __init__(self, server_dsn: str, maintenance_dsn: str, pool: _ClonePool | None = None):
        self.server_dsn = server_dsn
        self.maintenance_dsn = maintenance_dsn
        self.pool = pool
        self.created: list[str] = []

    def __call__(self, template: str | None = None) -> str:
        name = (self.pool.take(template) if self.pool else None) or _create_database(self.maintenance_dsn, template)
        self.created.append(name)
        return with_dbname(self.server_dsn, name)

    def drop_all(self) -> None:
        names = list(reversed(self.created))  # clones before their templates
        self.created.clear()
        if names and self.pool is not None and not self.pool.closed:
            self.pool.discard(names)
        elif names:
            _drop_databases(self.maintenance_dsn, names)


def release(conn, dbname: str) -> None:
    """End every session connected to `dbname` (on the maintenance connection `conn`)."""
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))


@pytest.fixture(scope="session")
def make_session_db(server_dsn, maintenance_dsn):
    """Like make_db, but the databases live until the end of the session."""
    factory = _DatabaseFactory(server_dsn, maintenance_dsn)
    yield factory
    factory.drop_all()


@pytest.fixture(scope="session")
def clone_pool(make_session_db, maintenance_dsn):
    """The session's _ClonePool (closed, spares dropped, before the session's templates are)."""
    pool = _ClonePool(maintenance_dsn)
    yield pool
    pool.close()


@pytest.fixture
def make_db(server_dsn, maintenance_dsn, clone_pool):
    """Factory: make_db(template=None) -> DSN of a new database, dropped after the test."""
    factory = _DatabaseFactory(server_dsn, maintenance_dsn, clone_pool)
    yield factory
    factory.drop_all()


@pytest.fixture
def db_dsn(make_db) -> str:
    """DSN of a fresh, empty database."""
    return make_db()


# ------------------------------------------------------------------ state folders
@contextmanager
def state_folder(path: Path):
    """CONSOLIDATION_STATE_DIR=path for the duration (for session-scoped builds)."""
    path.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("CONSOLIDATION_STATE_DIR")
    os.environ["CONSOLIDATION_STATE_DIR"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("CONSOLIDATION_STATE_DIR", None)
        else:
            os.environ["CONSOLIDATION_STATE_DIR"] = saved


@pytest.fixture(autouse=True)
def state_dir(monkeypatch, tmp_path_factory) -> Path:
    """This test's own CONSOLIDATION_STATE_DIR (GX results, exports, backups, reports, pages)."""
    path = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("CONSOLIDATION_STATE_DIR", str(path))
    return path


# ------------------------------------------------------------------ stages
@dataclass(frozen=True)
class Stage:
    """A session template: clone it with make_db(template=stage.name); never connect to it to write."""

    name: str
    dsn: str
    state: Path  # the state folder it was built with (its clones read what is there)
    export_file: Path | None = None  # 4C: the registry export its ledger names


def _stage(maintenance_dsn, clone_pool, template: str | None, label: str, build) -> Stage:
    """The run's stage `label`: a database copied from `template`, then `build(dsn, folder)`.

    Built once per run, by whichever worker asks first: the others wait on its lock file and
    use it (a build that failed is retried by the next worker that asks, from scratch). It is
    dropped by the run's own process at the end (pytest_sessionfinish)."""
    import fcntl

    import psycopg
    from psycopg import sql

    _SHARED.mkdir(parents=True, exist_ok=True)
    name = f"ctest_stage_{_RUN_ID}_{label}"
    record = _SHARED / f"{label}.json"
    folder = _SHARED / label
    with open(_SHARED / f"{label}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            started = time.perf_counter()
            with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(_create_statement(maintenance_dsn, name, template))
            dsn = with_dbname(maintenance_dsn, name)
            shutil.rmtree(folder, ignore_errors=True)
            with state_folder(folder):
                extra = build(dsn, folder)
            with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
                release(conn, name)  # nobody may stay connected to a template
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps({"label": label, "name": name, "maintenance_dsn": maintenance_dsn,
                                       "seconds": round(time.perf_counter() - started, 1),
                                       "finished": time.time(),
                                       "extra": str(extra) if extra is not None else None}))
            tmp.replace(record)
        built = json.loads(record.read_text())
    clone_pool.register(name)
    return Stage(name, with_dbname(maintenance_dsn, name), folder,
                 Path(built["extra"]) if built["extra"] else None)


@pytest.fixture(scope="session")
def fixture_template(maintenance_dsn, clone_pool) -> str:
    """Name of the run's database holding the Phase 1-3 fixture (scale 1); clone it."""
    from consolidation.dev import fixture

    return _stage(maintenance_dsn, clone_pool, None, "fixture", lambda dsn, folder: fixture.build(dsn)).name


@pytest.fixture(scope="session")
def template_4a(maintenance_dsn, clone_pool, fixture_template) -> Stage:
    import phase_helpers as ph

    return _stage(maintenance_dsn, clone_pool, fixture_template, "4a", lambda dsn, folder: ph.engine_4a(dsn))


@pytest.fixture(scope="session")
def template_4b(maintenance_dsn, clone_pool, template_4a) -> Stage:
    import phase_helpers as ph

    return _stage(maintenance_dsn, clone_pool, template_4a.name, "4b", lambda dsn, folder: ph.engine_4b(dsn))


@pytest.fixture(scope="session")
def template_4c(maintenance_dsn, clone_pool, template_4b) -> Stage:
    import phase_helpers as ph

    def build(dsn, folder):
        export = ph.engine_4c(dsn, folder / "registry-export")
        export.chmod(0o444)  # clones read it; a re-export goes to the clone's own state folder
        return export

    return _stage(maintenance_dsn, clone_pool, template_4b.name, "4c", build)


def read_only(dsn: str) -> str:
    """The same database, every transaction read-only (for reading a template without copying it)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dsn, options="-c default_transaction_read_only=on")


@pytest.fixture
def ro_4b(template_4b) -> str:
    """The 4B stage itself, read-only: for tests that only read (no copy made)."""
    return read_only(template_4b.dsn)


@pytest.fixture
def ro_4c(template_4c) -> str:
    """The 4C stage itself, read-only: for tests that only read (no copy made)."""
    return read_only(template_4c.dsn)


@pytest.fixture
def legacy_db(make_db, fixture_template) -> str:
    """DSN of a fresh copy of the legacy fixture database (as Phases 1-3 left it)."""
    return make_db(template=fixture_template)


@pytest.fixture
def db_4a(make_db, template_4a) -> str:
    """DSN of a fresh copy of the database after 4A (gate passed)."""
    return make_db(template=template_4a.name)


@pytest.fixture
def db_4b(make_db, template_4b) -> str:
    """DSN of a fresh copy of the database after 4A and 4B (both gates passed)."""
    return make_db(template=template_4b.name)


@pytest.fixture
def db_4c(make_db, template_4c) -> str:
    """DSN of a fresh copy of the database after 4A-4C (gates passed, registry exported)."""
    return make_db(template=template_4c.name)


# ------------------------------------------------------------------ the command line
@pytest.fixture
def run_cli():
    """run_cli("db", "status", dsn=None, env={...}) -> CompletedProcess: a real
    `python -m consolidation` subprocess (text, captured). For what only a process shows (exit
    codes, one-line messages, import costs); everything else uses `cli` (in-process).

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


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli("approve", "--by", ..., dsn=None, env={...}) -> CompletedProcess: the same command
    as run_cli, called in-process (consolidation.cli.main.main) with its output captured."""
    from consolidation.cli.main import main

    def _run(*args: str, dsn: str | None = None, env: dict | None = None):
        with monkeypatch.context() as m:
            if dsn is not None:
                m.setenv("CONSOLIDATION_DB_URL", dsn)
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()  # what came before is not this command's output
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["consolidation", *args], code, out, err)

    return _run


# ------------------------------------------------------------------ Airflow
def _migrated_metadata(config) -> None:
    """AIRFLOW_HOME's metadata database, migrated. `airflow db migrate` takes ~8 s here; the
    migrated (still empty) file is kept in pytest's cache per Airflow version and copied."""
    import airflow

    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    target = home / "airflow.db"
    cache = getattr(config, "cache", None)
    cached = None
    if cache is not None:
        cached = cache.mkdir(f"airflow-meta-{airflow.__version__}-py{sys.version_info[0]}{sys.version_info[1]}") \
            / "airflow.db"
        if cached.is_file():
            shutil.copyfile(cached, target)
            return
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   capture_output=True, env=dict(os.environ))
    if cached is not None and target.is_file():
        tmp = cached.with_name(f".airflow.db.{os.getpid()}.tmp")
        shutil.copyfile(target, tmp)
        tmp.replace(cached)


@pytest.fixture(scope="session")
def dag_bag():
    """The DAG bag of dags/ (parsed once per session; no metadata database needed to read it)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # older Airflow
        from airflow.models.dagbag import DagBag

    bag = DagBag(str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag


@pytest.fixture(scope="session")
def airflow_dags(request, dag_bag):
    """The DAG bag of dags/, with Airflow's metadata database created (once per session)."""
    _migrated_metadata(request.config)
    return dag_bag


def _quick_idle_waits():
    """dag.test() sleeps 1 s whenever no task is runnable - once per level of tasks marked
    upstream_failed after a failure, and between a sensor's pokes. Make that wait 50 ms (only
    dag.test's own sleeps; the loop re-reads the state each time, so nothing else changes)."""
    real = time.sleep

    def sleep(seconds):
        caller = sys._getframe(1).f_code
        if caller.co_name == "test" and caller.co_filename.endswith(os.path.join("definitions", "dag.py")):
            seconds = min(seconds, 0.05)
        real(seconds)

    return sleep


@pytest.fixture(scope="session")
def run_dag(airflow_dags):
    """run_dag(dag_id, dsn, conf=None, dags=None) -> the DagRun's state, after dag.test() against `dsn`
    (dags: {dag_id: DAG} of a DagBag of your own, e.g. parsed with CONSOLIDATION_PLAN set).

    The DAG reaches the database through the Airflow connection consolidation_db, set
    from `dsn` for the duration of the run (CONSOLIDATION_DB_URL is hidden meanwhile).
    """
    from unittest import mock

    def _run(dag_id: str, dsn: str, conf: dict | None = None, dags: dict | None = None) -> str:
        saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_CONSOLIDATION_DB", "CONSOLIDATION_DB_URL")}
        os.environ["AIRFLOW_CONN_CONSOLIDATION_DB"] = dsn
        os.environ.pop("CONSOLIDATION_DB_URL", None)
        dag = (dags or airflow_dags.dags)[dag_id]  # dags: another DagBag's (e.g. parsed with another plan)
        # Airflow merges a run's conf into the Param objects the DAG and its tasks share;
        # in-process runs would inherit the previous run's conf: restore their defaults
        params = [d.get_param(k) for d in (dag.params, *(t.params for t in dag.tasks)) for k in d]
        defaults = [p.value for p in params]
        try:
            with mock.patch.object(time, "sleep", _quick_idle_waits()):
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


def task_states(dag_id: str) -> tuple[str, dict[str, str]]:
    """(run_id, {task_id: state}) of the latest run of `dag_id`, from Airflow's metadata."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dr = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc())).first()
        return dr.run_id, {ti.task_id: str(getattr(ti.state, "value", ti.state))
                           for ti in dr.get_task_instances(session=session)}


@pytest.fixture(scope="session")
def core_api(airflow_dags):
    """(url, AIRFLOW_HOME): Airflow's core REST API served from this process on the session's
    metadata database (consolidation.dev.api_server), so a 4D dag.test() parked in its
    human-in-the-loop approval can be answered as a person would (logins operator, approver)."""
    from consolidation.dev import api_server

    home = Path(os.environ["AIRFLOW_HOME"])
    with api_server.serve(home) as url:
        yield url, home
