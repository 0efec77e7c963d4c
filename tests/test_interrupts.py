"""Concurrent runs against the real server: the database's run lease (one changing phase at a
time, refused in one line naming the holder, a stale lease taken over and recorded, 4B and
rollback started together), a rollback while a cleanup request is pending, interrupted
ledger entries made visible, and private backups. Engine tier: the task bodies the DAGs run,
called directly (phase_helpers.call_task), or the engine functions. Fault tests where a real
process dies: tests/test_faults.py.
"""
from __future__ import annotations

import stat
import threading

import psycopg
import pytest

from consolidation import api
from consolidation.airflow import tasks
from consolidation.core import ledger
from consolidation.core.runs import lease as leases
from consolidation.phases import approvals

from phase_helpers import EVERYTHING, PLAN, call_task, snapshot

B, RB, D = "phase4b_data_migration", "phase4_rollback", "phase4d_legacy_cleanup"


def lease_rows(dsn):
    with psycopg.connect(dsn) as conn:
        return ledger.rows(conn, PLAN, "kind = 'run' AND name IN ('lease', 'lease_takeover')")


def test_a_second_phase_is_refused_in_one_line_naming_the_holder(db_4b):
    out = call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__b1", user="alice")
    assert out["phase"] == "4B"
    # the same run again (a retried task): re-entrant
    assert call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__b1", user="alice")["lease"] == out["lease"]
    with pytest.raises(leases.LeaseRefused) as refused:
        call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r1", user="bob")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("rollback refused: the database is in use by phase4b_data_migration run manual__b1 "
                              "(phase 4B, user alice) since ")
    # a task of a run that does not hold the lease changes nothing
    with pytest.raises(leases.LeaseRefused, match="in use by phase4b_data_migration run manual__b1"):
        call_task(tasks.assess, db_4b, dag_id=RB, run_id="manual__r1", user="bob")
    assert call_task(tasks.release_lease, db_4b, dag_id=RB, run_id="manual__r1") is False  # not its lease
    assert call_task(tasks.release_lease, db_4b, dag_id=B, run_id="manual__b1") is True
    assert call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r1", user="bob")["phase"] == "rollback"
    rows = lease_rows(db_4b)
    assert [(r["run_id"], r["status"]) for r in rows] == [("manual__b1", "success"), ("manual__r1", "running")]


def test_a_stale_lease_is_taken_over_and_recorded_a_working_one_never(db_4b, monkeypatch):
    call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__gone", user="alice")
    monkeypatch.setenv("CONSOLIDATION_LEASE_STALE_SECONDS", "0")
    # while a task of the holder works (its advisory lock held), it is alive whatever its heartbeat
    with leases.hold(db_4b, "manual__gone"):
        with pytest.raises(leases.LeaseRefused, match="a task of it is running now"):
            call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r2", user="bob")
    # no task connected, heartbeat older than the bound: the holder is gone
    call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r2", user="bob")
    rows = {(r["run_id"], r["name"]): r for r in lease_rows(db_4b)}
    old = rows[("manual__gone", "lease")]
    assert old["status"] == "interrupted"
    assert "taken over by phase4_rollback run manual__r2" in old["message"]
    took = rows[("manual__r2", "lease_takeover")]
    assert took["status"] == "success" and took["details"]["previous"]["run_id"] == "manual__gone"
    monkeypatch.setenv("CONSOLIDATION_LEASE_STALE_SECONDS", "600")  # the new holder is alive
    with pytest.raises(leases.LeaseRefused, match="in use by phase4_rollback run manual__r2"):
        call_task(tasks.run_step, db_4b, dag_id=B, run_id="manual__gone", step_name=PLAN.steps[0].name)


def test_4b_and_rollback_started_together_one_is_refused_nothing_lost(db_4b):
    before = snapshot(db_4b, EVERYTHING)
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def start(dag, run_id):
        barrier.wait()
        try:
            results[dag] = call_task(tasks.acquire_lease, db_4b, dag_id=dag, run_id=run_id, user="u")
        except leases.LeaseRefused as exc:
            results[dag] = exc

    threads = [threading.Thread(target=start, args=(d, f"manual__{d}")) for d in (B, RB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    refused = [d for d, r in results.items() if isinstance(r, leases.LeaseRefused)]
    assert len(refused) == 1, results
    winner = ({B, RB} - set(refused)).pop()
    assert f"in use by {winner} run manual__{winner}" in str(results[refused[0]])
    # the refused run's first real task stops too; the winner runs
    loser_task = tasks.run_step if refused[0] == B else tasks.assess
    kwargs = {"step_name": PLAN.steps[0].name} if refused[0] == B else {}
    with pytest.raises(leases.LeaseRefused):
        call_task(loser_task, db_4b, dag_id=refused[0], run_id=f"manual__{refused[0]}", **kwargs)
    if winner == B:  # a 4B re-run is idempotent: nothing changes
        call_task(tasks.run_step, db_4b, dag_id=B, run_id=f"manual__{B}", step_name=PLAN.steps[0].name)
        assert snapshot(db_4b, EVERYTHING) == before
    else:
        call_task(tasks.assess, db_4b, dag_id=RB, run_id=f"manual__{RB}")
        assert snapshot(db_4b, EVERYTHING) == before
    call_task(tasks.release_lease, db_4b, dag_id=winner, run_id=f"manual__{winner}")
    with psycopg.connect(db_4b) as conn:
        assert not ledger.rows(conn, PLAN, "status = 'running'")


def test_rollback_refuses_while_a_cleanup_request_is_pending_unless_told_to_cancel_it(db_4c):
    call_task(tasks.acquire_lease, db_4c, dag_id=D, run_id="manual__d1", user="alice")
    req = call_task(tasks.open_request, db_4c, dag_id=D, run_id="manual__d1", user="alice")
    with pytest.raises(leases.LeaseRefused) as refused:
        call_task(tasks.acquire_lease, db_4c, dag_id=RB, run_id="manual__r1", user="bob")
    assert f"rollback refused: cleanup request {req} of 4D run manual__d1 is pending" in str(refused.value)
    assert "cancel_pending_cleanup=true" in str(refused.value)
    call_task(tasks.acquire_lease, db_4c, dag_id=RB, run_id="manual__r1", user="bob",
              params={"cancel_pending_cleanup": True})
    with psycopg.connect(db_4c) as conn:
        r = approvals.get(conn, PLAN, req)
        assert (r.status, r.decided_by) == ("rejected", "bob")
        assert "cancelled by rollback run manual__r1" in r.reason
        with pytest.raises(approvals.ApprovalRefused, match="rejected by bob"):
            api.approval_state(conn, PLAN, req, validity_hours=24)
        assert leases.current(conn, PLAN).run_id == "manual__r1"
    # the 4D run cannot go on to back up or drop
    with pytest.raises(leases.LeaseRefused, match="in use by phase4_rollback run manual__r1"):
        call_task(tasks.backup, db_4c, dag_id=D, run_id="manual__d1", xcom={"open_request": req})


def test_a_running_entry_whose_process_is_gone_is_marked_interrupted_by_status(db_4b, cli):
    with psycopg.connect(db_4b) as victim:
        pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        entry = ledger.open_entry(victim, PLAN, run_id="manual__killed", phase="4B", kind="step",
                                  name="copy__public__sbr_raw_html", source="public.sbr_raw_html",
                                  target="raw_data.sbr_raw_html")
        victim.commit()
        with psycopg.connect(db_4b, autocommit=True) as other:
            # alive: not touched
            assert api.sweep_interrupted(other, PLAN, by="test").value == 0
            other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    out = cli("status", dsn=db_4b)
    assert out.returncode == 0, out.stderr
    assert "interrupted: 4B step copy__public__sbr_raw_html (public.sbr_raw_html) of run manual__killed" in out.stdout
    assert f"database backend pid {pid} no longer exists" in out.stdout
    with psycopg.connect(db_4b) as conn:
        row = ledger.rows(conn, PLAN, "id = %s", (entry.id,))[0]
        assert row["status"] == "interrupted" and row["finished_at"] is not None
        assert row["details"]["interrupted"]["noticed_by"] == "status"
        assert not ledger.rows(conn, PLAN, "status = 'running'")


def test_backups_are_private(db_4c, tmp_path):
    from consolidation.phases.backup import default_folder, take_backup

    folder = default_folder("manual__private")
    manifest = take_backup(db_4c, PLAN, folder, run_id="manual__private", user="t")
    for path in [folder, folder.parent]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    files = [a["path"] for a in manifest["archives"]] + [str(folder / "manifest.json")]
    for name in files:
        st = __import__("os").stat(name)
        assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert st.st_uid == __import__("os").getuid()


def test_the_4b_dag_is_refused_at_its_start_while_a_rollback_holds_the_lease(db_4b, run_dag):
    from conftest import task_states

    call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__rb", user="bob")
    before = snapshot(db_4b, EVERYTHING)
    assert run_dag(B, db_4b) == "failed"
    _, states = task_states(B)
    assert states["acquire_lease"] == "failed"
    assert states["release_lease"] != "success"  # the teardown of a lease never taken does not run
    assert snapshot(db_4b, EVERYTHING) == before
    with psycopg.connect(db_4b) as conn:
        assert leases.current(conn, PLAN).run_id == "manual__rb"


def test_a_dag_run_gives_the_lease_back_after_a_failure(db_4a, run_dag):
    """4B fails (its gate finds rows missing when a step fails); its teardown still releases."""
    from conftest import task_states

    with psycopg.connect(db_4a) as conn:
        conn.execute("ALTER TABLE raw_data.sbr_raw_html ADD CONSTRAINT t_no_rows CHECK (false) NOT VALID")
        conn.commit()
    assert run_dag(B, db_4a) == "failed"  # the teardown's success does not make the run succeed
    _, states = task_states(B)
    assert states["release_lease"] == "success"
    with psycopg.connect(db_4a) as conn:
        assert leases.current(conn, PLAN) is None
        assert not ledger.rows(conn, PLAN, "status = 'running'")
