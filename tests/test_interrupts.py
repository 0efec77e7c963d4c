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
# a task body refused by the lease (call_task raises the refusal the task wrapper's TaskRefused stands for)
REFUSED = leases.LeaseRefused


def lease_refused(match: str | None = None):
    return pytest.raises(REFUSED, match=match)


def lease_rows(dsn):
    with psycopg.connect(dsn) as conn:
        return ledger.rows(conn, PLAN, "kind = 'run' AND name IN ('lease', 'lease_takeover')")


def test_a_second_phase_is_refused_in_one_line_naming_the_holder(db_4b):
    out = call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__b1", user="alice")
    assert out["phase"] == "4B"
    # the same run again (a retried task): re-entrant
    assert call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__b1", user="alice")["lease"] == out["lease"]
    with lease_refused() as refused:
        call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r1", user="bob")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("rollback refused: the database is in use by phase4b_data_migration run manual__b1 "
                              "(phase 4B, user alice) since ")
    # a task of a run that does not hold the lease changes nothing
    with lease_refused("in use by phase4b_data_migration run manual__b1"):
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
        with lease_refused("a task of it is running now"):
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
    with lease_refused("in use by phase4_rollback run manual__r2"):
        call_task(tasks.run_step, db_4b, dag_id=B, run_id="manual__gone", step_name=PLAN.steps[0].name)


def test_4b_and_rollback_started_together_one_is_refused_nothing_lost(db_4b):
    before = snapshot(db_4b, EVERYTHING)
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def start(dag, run_id):
        barrier.wait()
        try:
            results[dag] = call_task(tasks.acquire_lease, db_4b, dag_id=dag, run_id=run_id, user="u")
        except REFUSED as exc:
            results[dag] = exc

    threads = [threading.Thread(target=start, args=(d, f"manual__{d}")) for d in (B, RB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    refused = [d for d, r in results.items() if isinstance(r, REFUSED)]
    assert len(refused) == 1, results
    winner = ({B, RB} - set(refused)).pop()
    assert f"in use by {winner} run manual__{winner}" in str(results[refused[0]])
    # the refused run's first real task stops too; the winner runs
    loser_task = tasks.run_step if refused[0] == B else tasks.assess
    kwargs = {"step_name": PLAN.steps[0].name} if refused[0] == B else {}
    with lease_refused():
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
    with lease_refused() as refused:
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
    with lease_refused("in use by phase4_rollback run manual__r1"):
        call_task(tasks.backup, db_4c, dag_id=D, run_id="manual__d1", xcom={"open_request": req})


def set_heartbeat_back(dsn, run_id, hours=2):
    """As if the holder's last heartbeat was `hours` ago (a parked HITL task sends none)."""
    with psycopg.connect(dsn) as conn:
        conn.execute(ledger.tool_ident(PLAN, "ledger").as_string(conn).join([
            "UPDATE ", " SET details = details || jsonb_build_object('heartbeat_at', "
                       "clock_timestamp() - make_interval(hours => %s)) "
                       "WHERE kind = 'run' AND name = 'lease' AND status = 'running' AND run_id = %s"]),
            (hours, run_id))


@pytest.mark.parametrize("end", ["expired", "rejected", "deadline passed"])
def test_a_4d_lease_waiting_on_its_pending_request_is_alive_until_the_request_ends(db_4c, cli, end):
    from datetime import datetime, timedelta, timezone

    call_task(tasks.acquire_lease, db_4c, dag_id=D, run_id="manual__d1", user="alice")
    req = call_task(tasks.open_request, db_4c, dag_id=D, run_id="manual__d1", user="alice")
    # CleanupApproval parks: it records the wait's deadline (none when the run has no approval timeout)
    from consolidation.airflow.approval import CleanupApproval
    from consolidation.airflow.runtime import RunInfo

    waiting_task = CleanupApproval(task_id="wait_for_approval", request_task_id="open_request")
    waiting_task.response_timeout = None if end == "rejected" else timedelta(hours=1)
    before = datetime.now(timezone.utc)
    with psycopg.connect(db_4c) as conn:
        waiting_task._renew_lease(conn, PLAN, RunInfo("manual__d1", "alice", D, "alice"), req, waiting=True)
    after = datetime.now(timezone.utc)
    set_heartbeat_back(db_4c, "manual__d1")  # 2 h without a heartbeat, far past the 600 s bound
    with lease_refused() as refused:
        call_task(tasks.acquire_lease, db_4c, dag_id=B, run_id="manual__b1", user="bob")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("4B refused: the database is in use by phase4d_legacy_cleanup run manual__d1 ")
    with psycopg.connect(db_4c) as conn:
        held = leases.current(conn, PLAN)
    assert (held.waiting, held.waiting_request) == (True, req)
    if end == "rejected":
        assert held.waiting_until is None
    else:
        assert before + timedelta(hours=1) <= held.waiting_until <= after + timedelta(hours=1)
    expiry = ("it is decided (no approval timeout)" if held.waiting_until is None
              else f"{held.waiting_until:%Y-%m-%d %H:%M:%S %Z}")  # in the session's time zone
    assert f"waiting for approval until {expiry} (cleanup request {req})" in message
    assert f"reject request {req}" in message
    # nor released by hand while it waits; the status says why
    out = cli("lease", "release", "--run", "manual__d1", "--reason", "looks stuck", dsn=db_4c)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"lease release refused: run manual__d1 is waiting for approval until {expiry}")
    assert f"reject request {req} (`consolidation reject`)" in out.stderr
    out = cli("lease", dsn=db_4c)
    assert out.returncode == 0, out.stderr
    assert "lease: phase4d_legacy_cleanup run manual__d1 (phase 4D, user alice)" in out.stdout
    assert f"pending approval: waiting for approval until {expiry} (cleanup request {req})" in out.stdout
    assert "connected: no" in out.stdout

    with psycopg.connect(db_4c) as conn:
        if end == "expired":  # Airflow's timeout sweep
            assert approvals.expire(conn, PLAN, req, "no decision within the approval timeout")
        elif end == "rejected":
            approvals.decide(conn, PLAN, request_id=req, decision="reject", by="carol", via="cli",
                             reason="not this week")
        else:  # the deadline passed, the request still pending (nobody swept it)
            assert api.lease_renew(conn, PLAN, run_id="manual__d1", phase="4D", waiting_for=req,
                                   until=datetime.now(timezone.utc) - timedelta(seconds=1)).ok
            set_heartbeat_back(db_4c, "manual__d1")
    call_task(tasks.acquire_lease, db_4c, dag_id=B, run_id="manual__b1", user="bob")
    rows = {(r["run_id"], r["name"]): r for r in lease_rows(db_4c)}
    assert rows[("manual__d1", "lease")]["status"] == "interrupted"
    assert "taken over by phase4b_data_migration run manual__b1" in rows[("manual__d1", "lease")]["message"]
    assert rows[("manual__b1", "lease_takeover")]["details"]["previous"]["waiting_request"] == (
        req if end == "deadline passed" else None)
    assert rows[("manual__b1", "lease")]["status"] == "running"


def test_a_lease_is_released_by_hand_only_when_its_run_is_gone(db_4b, cli, monkeypatch):
    call_task(tasks.acquire_lease, db_4b, dag_id=B, run_id="manual__gone", user="alice")
    with leases.hold(db_4b, "manual__gone"):  # a task of it works
        out = cli("lease", "release", "--run", "manual__gone", dsn=db_4b)
        assert out.returncode == 1 and out.stderr.count("\n") == 1
        assert out.stderr.startswith("lease release refused: a task of run manual__gone is working now")
        assert "connected: yes" in cli("lease", dsn=db_4b).stdout
    out = cli("lease", "release", "--run", "manual__other", dsn=db_4b)
    assert out.returncode == 1
    assert out.stderr.startswith("lease release refused: run manual__other does not hold the database's lease "
                                 "(it is held by phase4b_data_migration run manual__gone")
    out = cli("lease", dsn=db_4b)
    assert "lease: phase4b_data_migration run manual__gone (phase 4B, user alice)" in out.stdout
    assert "connected: no" in out.stdout and "pending approval: none" in out.stdout
    # the worker is gone for good; nobody waits the 600 s
    out = cli("lease", "release", "--run", "manual__gone", "--reason", "worker host lost", dsn=db_4b)
    assert out.returncode == 0, out.stderr
    who = ledger.operator_name()
    assert f"released by {who}: worker host lost" in out.stdout
    rows = {(r["run_id"], r["name"]): r for r in lease_rows(db_4b) + lease_release_rows(db_4b)}
    lease_row = rows[("manual__gone", "lease")]
    assert lease_row["status"] == "interrupted" and lease_row["finished_at"] is not None
    assert f"released by hand by {who}: worker host lost" in lease_row["message"]
    assert lease_row["details"]["released_by"] == who
    recorded = rows[("manual__gone", "lease_release")]
    assert (recorded["status"], recorded["triggered_by"], recorded["details"]["reason"]) == (
        "success", who, "worker host lost")
    assert cli("lease", dsn=db_4b).stdout.startswith("lease: free")
    assert call_task(tasks.acquire_lease, db_4b, dag_id=RB, run_id="manual__r1", user="bob")["phase"] == "rollback"
    # the old run's next task is refused: it lost the lease
    with lease_refused("in use by phase4_rollback run manual__r1"):
        call_task(tasks.run_step, db_4b, dag_id=B, run_id="manual__gone", step_name=PLAN.steps[0].name)


def lease_release_rows(dsn):
    with psycopg.connect(dsn) as conn:
        return ledger.rows(conn, PLAN, "kind = 'run' AND name = 'lease_release'")


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
