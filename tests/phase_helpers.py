"""Shared test helpers: the phases through the engine functions the DAG tasks call, the
test-side checksums, and a stand-in Airflow context for calling task bodies directly.

Every engine import of the suite's setup is here, so a moved name is fixed in one place.
The stage templates built with these (conftest: template_4a, template_4b, template_4c) are
cloned per test; see conftest.py.

Checksums (table_md5, table_rows) are computed test-side, independently of the engine.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql

from consolidation import api
from consolidation.checks import gates
from consolidation.checks.gate_4a import gate_4a_checks
from consolidation.checks.gate_4b import gate_4b_checks
from consolidation.core.plan import load_plan
from consolidation.phases.migrate import StepFailed
from consolidation.phases.registry_checks import gate_4c_checks

PLAN = load_plan()
USER = "test"


# ------------------------------------------------------------------ test-side checksums
def q(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(*map(sql.Identifier, name.split(".")))


def table_md5(conn, name: str, columns: list[str] | None = None, where: str = "TRUE") -> tuple[str, int]:
    """Order-independent digest of a table's rows over the given columns (test-side, not the engine's)."""
    cols = sql.SQL("*") if columns is None else sql.SQL(", ").join(map(sql.Identifier, columns))
    row = conn.execute(sql.SQL(
        "SELECT md5(coalesce(string_agg(h, ',' ORDER BY h), '')), count(*) "
        "FROM (SELECT md5(ROW(x.*)::text) AS h FROM (SELECT {} FROM {} WHERE " + where + ") x) y").format(
        cols, q(name))).fetchone()
    return row[0], row[1]


def table_rows(conn, query: sql.Composable) -> list[str]:
    """The rows of a query as sorted text: a multiset, computed test-side."""
    return sorted(r[0] for r in conn.execute(sql.SQL("SELECT ROW(q.*)::text FROM ({}) AS q").format(query)))


def snapshot(dsn: str, schemas, kinds: bool = False) -> dict:
    """{schema.table: (md5, rows)} of every table in `schemas`, the tool's own tables excepted.

    kinds=True: every relation (tables, views, matviews) with its kind and columns too, plus
    the constraints of those schemas under the key "constraints" (what a rollback must restore).
    """
    with psycopg.connect(dsn) as conn:
        rels = conn.execute(
            "SELECT n.nspname || '.' || c.relname, c.relkind, "
            "(SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) "
            "   FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm') "
            "AND c.relname NOT LIKE 'consolidation\\_%%' ORDER BY 1", (list(schemas),)).fetchall()
        if not kinds:
            return {name: table_md5(conn, name) for name, kind, _ in rels if kind in ("r", "p")}
        out = {name: (kind, cols) for name, kind, cols in rels}
        for name, kind, _ in rels:
            if kind in ("r", "p"):
                out[name] += table_md5(conn, name)
        out["constraints"] = conn.execute(
            # ordered by the text itself: `ORDER BY 1` inside an aggregate sorts by the constant 1, which
            # left the order to creation order (a re-run after a kill creates them in another order)
            "SELECT string_agg(conrelid::regclass::text || ':' || conname, ',' "
            "ORDER BY conrelid::regclass::text || ':' || conname) FROM pg_constraint "
            "WHERE connamespace IN (SELECT oid FROM pg_namespace WHERE nspname = ANY(%s)) "
            "AND conrelid::regclass::text NOT LIKE '%%consolidation\\_%%'", (list(schemas),)).fetchone()[0]
        return out


EVERYTHING = list(PLAN.legacy_schemas) + list(PLAN.consolidated_schemas)


# ------------------------------------------------------------------ the phases, through the engine
def run_gate(dsn: str, phase: str, plan=None, *, run_id: str = "test-gate", **kw):
    """A phase's gate checks (4A, 4B, 4C; kw: 4C's export_file / smoke_folder) run as its GX
    checkpoint and recorded in the ledger, without the phase's own preconditions; raises
    GateFailed when it does not pass. (The gate exactly as its task runs it: api.gate.)"""
    plan = plan or PLAN
    builders = {"4A": gate_4a_checks, "4B": gate_4b_checks, "4C": gate_4c_checks}
    with psycopg.connect(dsn) as conn:
        checks = builders[phase](conn, plan, **kw)
        conn.commit()
        return gates.run_phase_gate(conn, dsn, plan, phase, checks, run_id=run_id, user=USER)


def done(outcome: api.Outcome):
    """An operation's value, its failure raised (as a task body does)."""
    if outcome.failure is not None:
        raise outcome.failure
    return outcome.value


def engine_4a(dsn: str, plan=None, *, run_id: str = "setup-4a") -> None:
    """Phase 4A as phase4a_schema_extension's tasks do it (consolidation.api): prepare, one call per
    legacy schema, finalize, then gate_4A (which must pass)."""
    plan = plan or PLAN
    run = {"run_id": run_id, "user": USER}
    with psycopg.connect(dsn) as conn:
        done(api.extend_prepare(conn, plan, **run))
        for schema in plan.legacy_schemas:
            done(api.extend_group(conn, plan, schema, **run))
        done(api.extend_finalize(conn, plan, **run))
        done(api.gate(conn, dsn, plan, "4A", **run))


def steps_4b(plan=None) -> list[str]:
    """The step tasks of phase4b_data_migration, in the DAG's order (legacy schema by schema)."""
    plan = plan or PLAN
    return [s.name for schema in plan.legacy_schemas for s in plan.steps_for_schema(schema)
            if s.migrates_rows or s.is_recreated_view]


def engine_4b(dsn: str, plan=None, *, run_id: str = "setup-4b", gate: bool = True) -> dict[str, StepFailed]:
    """Phase 4B's steps as its tasks run them (and, with gate=True, gate_4B, which must pass). A
    failing step does not stop the others here; the failures are returned by step name."""
    plan = plan or PLAN
    run = {"run_id": run_id, "user": USER}
    failed = {}
    with psycopg.connect(dsn) as conn:
        for name in steps_4b(plan):
            try:
                done(api.run_step(conn, plan, name, **run))
            except StepFailed as exc:
                failed[name] = exc
        if gate:
            done(api.gate(conn, dsn, plan, "4B", **run))
    return failed


def engine_4c(dsn: str, export_dir: Path, plan=None, *, run_id: str = "setup-4c") -> Path:
    """Phase 4C as phase4c_service_updates' tasks do it: the registry, one call per legacy schema,
    the JSON export into `export_dir`, then gate_4C (which must pass). Returns the export file."""
    plan = plan or PLAN
    run = {"run_id": run_id, "user": USER}
    with psycopg.connect(dsn) as conn:
        done(api.registry_prepare(conn, plan))
        for schema in plan.legacy_schemas:
            if [s for s in plan.steps_for_schema(schema) if s.action != "delete"]:
                done(api.register_group(conn, plan, schema, **run))
        path = Path(done(api.registry_export(conn, plan, export_dir, **run)))
        done(api.gate(conn, dsn, plan, "4C", **run))
    return path


def record_gate(dsn: str, phase: str, status: str, *, run_id: str, message: str | None = None) -> None:
    """A ledger gate row as a phase would leave it (e.g. a later run whose gate failed)."""
    from consolidation.core import ledger

    with psycopg.connect(dsn) as conn:
        ledger.record(conn, PLAN, status=status, message=message, run_id=run_id, phase=phase, kind="gate",
                      name=f"gate_{phase}", details={"plan_sha256": PLAN.sha256})
        conn.commit()


# ------------------------------------------------------------------ task bodies without Airflow
class FakeDagRun:
    def __init__(self, dag_id: str, run_id: str, user: str | None, conf: dict | None):
        self.dag_id, self.run_id, self.triggering_user_name = dag_id, run_id, user
        self.run_type = "manual"
        self.conf = conf or {}


class FakeTI:
    """The part of a task instance the task bodies use: xcom_pull of an upstream task's return value."""

    def __init__(self, xcom: dict | None = None):
        self.xcom = dict(xcom or {})

    def xcom_pull(self, task_ids=None, **_):
        return self.xcom.get(task_ids)

    def get_first_reschedule_date(self, context):
        return None


def task_context(dag_id: str = "test_dag", run_id: str = "manual__test", *, user: str | None = "tester",
                 params: dict | None = None, conf: dict | None = None, xcom: dict | None = None) -> dict:
    """What a task body receives as **context, for calling it the way its DAG does, without a DAG run."""
    return {"dag_run": FakeDagRun(dag_id, run_id, user, conf), "params": dict(params or {}),
            "ti": FakeTI(xcom), "run_id": run_id}


@contextmanager
def task_db(dsn: str):
    """Task bodies reach the database through CONSOLIDATION_DB_URL (as under `airflow tasks test`)."""
    saved = os.environ.get("CONSOLIDATION_DB_URL")
    os.environ["CONSOLIDATION_DB_URL"] = dsn
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CONSOLIDATION_DB_URL", None)
        else:
            os.environ["CONSOLIDATION_DB_URL"] = saved


def call_task(body, dsn: str, *, dag_id: str = "test_dag", run_id: str = "manual__test", user: str | None = "tester",
              params: dict | None = None, conf: dict | None = None, xcom: dict | None = None, **kwargs):
    """A task body of consolidation.airflow.tasks called the way Airflow calls it (context as
    keywords, plus the DAG's own keyword arguments such as schema=...), against `dsn`."""
    from consolidation.airflow.runtime import TaskRefused

    with task_db(dsn):
        try:
            return body(**task_context(dag_id, run_id, user=user, params=params, conf=conf, xcom=xcom), **kwargs)
        except TaskRefused as exc:  # the task ended on an engine refusal (printed, no traceback): raise that
            if exc.refusal is None:
                raise
            raise exc.refusal from None


@contextmanager
def leased(dsn: str, dag_id: str, run_id: str = "manual__test", user: str | None = "tester"):
    """A DAG's first and last task around task bodies called directly: the database's run lease
    taken for `run_id` (acquire_lease) and given back at the end, also after a failure (release_lease)."""
    from consolidation.airflow import tasks

    call_task(tasks.acquire_lease, dsn, dag_id=dag_id, run_id=run_id, user=user)
    try:
        yield
    finally:
        call_task(tasks.release_lease, dsn, dag_id=dag_id, run_id=run_id, user=user)


DAG_4B = "phase4b_data_migration"


def parse_4b() -> dict:
    """dags/phase4b_data_migration.py parsed now, as the DAG processor does (its shape follows
    the step graph 4A wrote, if any): {dag_id: DAG}."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(Path(__file__).resolve().parent.parent / "dags" / f"{DAG_4B}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags

