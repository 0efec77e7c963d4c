"""Fault tests for 4A and 4C: kill -9 the process running the phase while it works, then re-run:
the end state equals a clean run's, the ledger shows no `running` row, and the killed run's lease
is taken over (4A) or released by hand (4C, `consolidation lease release`).

4A's and 4C's units of work are short DDL / upsert transactions (milliseconds), too quick to catch
one mid-statement, and the engine has no pause hook for them. So the kill lands at a point the
ledger shows: just after the run's first unit committed (4A: its first `ddl` row; 4C: its first
`register__<schema>` step), with the rest of the run (more groups, the export, the gate) still to
do - the test checks the process was still running and had not reached its gate. The child runs
the DAG's task bodies in order (tests/phase_runs.py), lease first; no Airflow process is needed
(engine tier). The kill -9 during 4B's big statement, a server restart and 4D are in
tests/test_faults.py.
"""
from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest
from psycopg import sql

from consolidation import api
from consolidation.core import ledger
from consolidation.core.runs.lease import LeaseRefused

from phase_helpers import EVERYTHING, PLAN, snapshot
from phase_runs import run_4a, run_4c
from test_faults import child, wait_backends_gone

pytestmark = pytest.mark.engine

KILLED = "manual__killed"


def kill_after(proc, dsn: str, where: str, timeout: float = 120) -> int:
    """kill -9 the child (its process group) as soon as the ledger holds a committed row of run
    KILLED matching `where`; returns how many such rows there were when it died."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s AND status = 'success' AND {}").format(
            ledger.tool_ident(PLAN, "ledger"), sql.SQL(where))
        while True:
            assert proc.poll() is None, f"the child ended first: {proc.stderr.read()}"
            if ledger.tool_tables_exist(conn, PLAN) and conn.execute(query, (KILLED,)).fetchone()[0]:
                break
            assert time.monotonic() < deadline, "the child never committed its first unit of work"
            time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    wait_backends_gone(dsn)  # its sessions end; their open transactions roll back
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, (KILLED,)).fetchone()[0]


def catalog(dsn: str) -> dict:
    """What 4A makes: every relation of the legacy and consolidated schemas with kind, columns and
    rows (snapshot), plus each constraint's and index's definition and the tables' privileges."""
    out = snapshot(dsn, EVERYTHING, kinds=True)
    with psycopg.connect(dsn) as conn:
        out["definitions"] = conn.execute("""
            SELECT array_agg(d ORDER BY d) FROM (
              SELECT c.conrelid::regclass::text || ':' || c.conname || ':' || pg_get_constraintdef(c.oid) AS d
                FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
               WHERE n.nspname = ANY(%(s)s) AND c.conrelid::regclass::text NOT LIKE '%%consolidation\\_%%'
              UNION ALL
              SELECT i.schemaname || '.' || i.indexname || ':' || i.indexdef FROM pg_indexes i
               WHERE i.schemaname = ANY(%(s)s) AND i.tablename NOT LIKE 'consolidation\\_%%'
              UNION ALL
              SELECT n.nspname || '.' || c.relname || ':' || coalesce(c.relacl::text, '-')
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = ANY(%(s)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                 AND c.relname NOT LIKE 'consolidation\\_%%') x""", {"s": EVERYTHING}).fetchone()[0]
    return out


def registry(dsn: str) -> tuple[list, list]:
    """The registry's entries (without who/when set them) and the privileges of its table and targets."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL(
            "SELECT logical_name, legacy_schema, legacy_table, legacy_kind, physical_schema, physical_table, action, "
            "plan_step, filter_column, filter_op, filter_value, columns, status FROM {} ORDER BY 1").format(
            ledger.tool_ident(PLAN, "registry"))).fetchall()
        acl = conn.execute(
            "SELECT n.nspname || '.' || c.relname, coalesce(c.relacl::text, '-') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v') "
            "ORDER BY 1", (list(PLAN.consolidated_schemas) + [PLAN.tool_table("registry")[0]],)).fetchall()
    return rows, acl


def after_recovery(dsn: str, phase: str, rerun: str) -> dict:
    """The re-run's gate passed, nothing is `running`, and the killed run's lease row."""
    with psycopg.connect(dsn) as conn:
        api.sweep_interrupted(conn, PLAN, by="test")
        gate = ledger.latest(conn, PLAN, phase=phase, kind="gate")
        assert (gate["status"], gate["run_id"]) == ("success", rerun), gate
        assert not ledger.rows(conn, PLAN, "status = 'running'")
        assert not ledger.rows(conn, PLAN, "run_id = %s AND kind = 'gate'", (KILLED,))  # killed before its gate
        return ledger.rows(conn, PLAN, "run_id = %s AND name = 'lease'", (KILLED,))[0]


def test_kill_9_during_4a_then_rerun_equals_a_clean_run(make_db, fixture_template, template_4a, monkeypatch):
    dsn, clean = make_db(template=fixture_template), make_db(template=template_4a.name)
    proc = child(f"from phase_runs import run_4a\nimport os\nrun_4a(os.environ['CONSOLIDATION_DB_URL'], {KILLED!r})",
                 dsn)
    kill_after(proc, dsn, "phase = '4A' AND kind = 'ddl'")
    assert catalog(dsn) != catalog(clean)  # it stopped half-way

    # the killed run's lease: no task of it connected; with no heartbeat for longer than the bound, taken over
    monkeypatch.setenv("CONSOLIDATION_LEASE_STALE_SECONDS", "0")
    run_4a(dsn, "manual__rerun")
    assert catalog(dsn) == catalog(clean)
    lease = after_recovery(dsn, "4A", "manual__rerun")
    assert lease["status"] == "interrupted"
    assert "taken over by phase4a_schema_extension run manual__rerun" in lease["message"]


def test_kill_9_during_4c_then_rerun_equals_a_clean_run(make_db, template_4b, template_4c, tmp_path, cli):
    dsn, clean = make_db(template=template_4b.name), make_db(template=template_4c.name)
    proc = child(f"from phase_runs import run_4c\nimport os\n"
                 f"run_4c(os.environ['CONSOLIDATION_DB_URL'], {KILLED!r}, {str(tmp_path / 'killed')!r})", dsn)
    kill_after(proc, dsn, "phase = '4C' AND kind = 'step' AND name LIKE 'register\\_\\_%%'")
    assert registry(dsn) != registry(clean)  # it stopped half-way

    # within the stale bound the killed run still holds the lease: a re-run is refused, naming it ...
    out = cli("lease", dsn=dsn)
    assert f"lease: phase4c_service_updates run {KILLED}" in out.stdout and "connected: no" in out.stdout
    with pytest.raises(LeaseRefused,
                       match=f"4C refused: the database is in use by phase4c_service_updates run {KILLED}"):
        run_4c(dsn, "manual__rerun", str(tmp_path / "rerun"))
    # ... until a person who knows its worker is gone releases it by hand
    out = cli("lease", "release", "--run", KILLED, "--reason", "its worker was killed", dsn=dsn)
    assert out.returncode == 0, out.stderr
    run_4c(dsn, "manual__rerun", str(tmp_path / "rerun"))
    assert registry(dsn) == registry(clean)
    lease = after_recovery(dsn, "4C", "manual__rerun")
    assert lease["status"] == "interrupted" and "released by hand" in lease["message"]
    assert lease["details"]["reason"] == "its worker was killed"
