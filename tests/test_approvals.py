"""Cleanup approvals, against clones of the 4B stage: requests, decisions (UI and CLI), checks.
The approval DAG runs once (dag.test); the CLI is called in-process; the UI decision's other
paths go through the DAG's task body.

What the owner of the data cares about: nothing is dropped without a recorded human
decision (who, how, when, why, on which fingerprint); a rejection stops the cleanup with
its reason; an approval is refused once the data changed or it is too old; and no
name typed into a run's conf can approve anything.
"""
from __future__ import annotations

import getpass
import hashlib
import json

import psycopg
import pytest

from consolidation.phases import approvals
from consolidation.core import ledger
from consolidation.phases.approvals import ApprovalRefused
from consolidation.core.plan import load_plan

from phase_helpers import call_task

PLAN = load_plan()


@pytest.fixture(scope="module")
def migrated(make_session_db, template_4b):
    """(template db name, digest): the 4B stage (4A and 4B, gates passed), and its digest.

    Clones are byte-identical, so one digest serves every clone's request.
    """
    from consolidation.checks import reconcile

    dsn = make_session_db(template=template_4b.name)
    with psycopg.connect(dsn) as conn:
        digest = reconcile.digest(conn, PLAN)
    return template_4b.name, digest


@pytest.fixture
def db(make_db, migrated):
    return make_db(template=migrated[0])


def ask(dsn: str, digest: dict, run_id: str = "4d-run-1") -> approvals.Request:
    with psycopg.connect(dsn) as conn:
        return approvals.open_request(conn, PLAN, run_id=run_id, user="operator", digest=digest)


def approve(dsn: str, request_id: int | None = None, by: str = "alice") -> approvals.Request:
    with psycopg.connect(dsn) as conn:
        return approvals.decide(conn, PLAN, request_id=request_id, decision="approve", by=by, via="cli",
                                reason="reviewed the 4B gate report")


def check(dsn: str, request_id: int, **kw) -> str:
    with psycopg.connect(dsn) as conn:
        return approvals.check(conn, PLAN, request_id, **kw)


def row(dsn: str, request_id: int) -> dict:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM operational.consolidation_approvals WHERE id = %s", (request_id,))
        return dict(zip([d.name for d in cur.description], cur.fetchone()))


def approval_ledger(dsn: str) -> list[dict]:
    with psycopg.connect(dsn) as conn:
        return ledger.rows(conn, PLAN, "kind = 'approval'")


# ------------------------------------------------------------------ CLI
def test_request_is_pending_until_approved_on_the_cli_with_who_and_why(db, migrated, cli):
    digest = migrated[1]
    req = ask(db, digest)
    # the fingerprint binds the plan file and the data's digest (computed here independently)
    assert req.fingerprint == hashlib.sha256((PLAN.sha256 + digest["digest"]).encode()).hexdigest()
    assert check(db, req.id) == "pending"

    out = cli("approve", "--by", "alice", "--reason", "reviewed the 4B gate report", dsn=db)
    assert out.returncode == 0, out.stderr
    assert f"request {req.id}" in out.stdout and req.fingerprint in out.stdout and "approved by alice" in out.stdout

    with psycopg.connect(db) as conn:
        role = conn.execute("SELECT current_user").fetchone()[0]
    r = row(db, req.id)
    assert (r["status"], r["decided_by"], r["decided_via"], r["os_user"], r["db_role"], r["reason"]) == \
        ("approved", "alice", "cli", getpass.getuser(), role, "reviewed the 4B gate report")
    assert r["fingerprint"] == req.fingerprint and r["decided_at"] is not None
    assert check(db, req.id) == "approved"  # recomputed from the data: unchanged

    names = [(e["name"], e["status"], e["triggered_by"]) for e in approval_ledger(db)]
    assert names == [("approval_request", "success", "operator"), ("approve", "success", "alice"),
                     ("approval_verified", "success", "alice")]
    assert all(e["details"]["fingerprint"] == req.fingerprint for e in approval_ledger(db))

    # a decided request cannot be decided again, and the refusal is one line with the reason
    again = cli("reject", "--by", "bob", "--reason", "changed my mind", "--request", str(req.id), dsn=db)
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "not pending" in again.stderr and "approved by alice" in again.stderr
    assert row(db, req.id)["status"] == "approved"


def test_rejection_refuses_with_the_reason_and_who(db, migrated, cli):
    req = ask(db, migrated[1])
    out = cli("reject", "--by", "bob", "--reason", "backup of public not verified yet",
                  "--request", str(req.id), dsn=db)
    assert out.returncode == 0, out.stderr
    with pytest.raises(ApprovalRefused) as exc:
        check(db, req.id)
    assert "rejected by bob" in str(exc.value) and "backup of public not verified yet" in str(exc.value)
    assert "nothing is dropped" in str(exc.value)
    r = row(db, req.id)
    assert (r["status"], r["decided_by"], r["reason"]) == ("rejected", "bob", "backup of public not verified yet")
    assert [(e["name"], e["status"]) for e in approval_ledger(db)][-1] == ("reject", "refused")


def test_cli_refusals_exit_non_zero_with_one_line(db, make_db, migrated, cli):
    # no approvals table yet (4D never asked)
    out = cli("approve", "--by", "alice", "--reason", "looks good", dsn=make_db())
    assert out.returncode == 1 and "no approval request exists yet" in out.stderr
    first = ask(db, migrated[1], run_id="4d-run-1")
    second = ask(db, migrated[1], run_id="4d-run-2")
    # a newer request supersedes the older one: a decision concerns the latest state only
    assert row(db, first.id)["status"] == "superseded"
    out = cli("approve", "--by", "alice", "--reason", "looks good", "--request", str(first.id), dsn=db)
    assert out.returncode == 1 and "not pending" in out.stderr and f"request {second.id}" in out.stderr
    with pytest.raises(ApprovalRefused, match="superseded"):
        check(db, first.id)
    out = cli("approve", "--by", "alice", "--reason", "ok", dsn=db)
    assert out.returncode == 1 and "reason" in out.stderr
    assert row(db, second.id)["status"] == "pending"
    assert cli("approve", "--by", "alice", "--reason", "looks good", dsn=db).returncode == 0
    out = cli("approve", "--by", "alice", "--reason", "looks good", dsn=db)
    assert out.returncode == 1 and "no pending approval request" in out.stderr
    out = cli("approve", "--by", "alice", "--reason", "looks good", "--request", "999", dsn=db)
    assert out.returncode == 1 and "no approval request 999" in out.stderr


def test_status_shows_gates_and_the_pending_request(db, migrated, cli):
    req = ask(db, migrated[1])
    out = cli("status", dsn=db)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    line_4a = next(line for line in lines if line.strip().startswith("4A"))
    assert "gate success (run setup-4a" in line_4a
    assert any(line.strip().startswith("4D") for line in lines)
    assert f"pending request {req.id}" in out.stdout and req.fingerprint in out.stdout and "ago" in out.stdout
    st = json.loads(cli("status", "--json", dsn=db).stdout)
    assert [p["phase"] for p in st["phases"]] == ["4A", "4B", "4C", "4D"]
    assert st["pending"][0]["fingerprint"] == req.fingerprint


# ------------------------------------------------------------------ refused approvals
def test_stale_approval_is_refused_naming_the_changed_step(db, migrated):
    req = ask(db, migrated[1])
    approve(db, req.id)
    changed = next(s for s in PLAN.steps if s.action == "delete" and (s.stated_rows or 0) > 0)
    with psycopg.connect(db) as conn:  # a legacy row written after the request
        conn.execute(f"DELETE FROM {changed.source} WHERE ctid = (SELECT min(ctid) FROM {changed.source})")
    with pytest.raises(ApprovalRefused) as exc:
        check(db, req.id)
    msg = str(exc.value)
    assert "stale" in msg and changed.name in msg and changed.source in msg
    others = [s.name for s in PLAN.steps if s.name != changed.name]
    assert not any(f"{n} " in msg for n in others)  # only the changed step is named
    r = row(db, req.id)
    assert r["status"] == "refused" and changed.name in r["refusal"]
    last = approval_ledger(db)[-1]
    assert (last["name"], last["status"], last["details"]["changed_steps"]) == \
        ("approval_refused", "refused", [changed.name])
    with pytest.raises(ApprovalRefused, match="refused"):  # and it stays refused
        check(db, req.id)


def test_expired_approval_is_refused(db, migrated):
    req = ask(db, migrated[1])
    approve(db, req.id)
    with psycopg.connect(db) as conn:
        conn.execute("UPDATE operational.consolidation_approvals SET decided_at = decided_at - interval '25 hours' "
                     "WHERE id = %s", (req.id,))
    with pytest.raises(ApprovalRefused, match=r"older than its validity of 24 h"):
        check(db, req.id)
    assert row(db, req.id)["status"] == "expired"
    assert approval_ledger(db)[-1]["name"] == "approval_expired"
    with pytest.raises(ApprovalRefused, match="expired"):  # a longer validity does not revive it
        check(db, req.id, validity_hours=48)


# ------------------------------------------------------------------ UI (approval DAG)
def test_ui_decision_records_the_triggering_user_not_a_name_in_the_conf(db, migrated, run_dag):
    req = ask(db, migrated[1])
    state = run_dag("phase4d_cleanup_approval", db,
                    conf={"decision": "approve", "reason": "looks good", "by": "mallory", "approver": "mallory"})
    assert state == "success"
    r = row(db, req.id)
    # dag.test() runs as the user "dag_test": the authenticated trigger, not the conf's name
    assert (r["status"], r["decided_by"], r["decided_via"], r["reason"]) == ("approved", "dag_test", "ui", "looks good")
    assert r["decided_in_run"]
    with psycopg.connect(db) as conn:
        everything = conn.execute("SELECT (SELECT json_agg(a)::text FROM operational.consolidation_approvals a) || "
                                  "(SELECT json_agg(l)::text FROM operational.consolidation_ledger l)").fetchone()[0]
    assert "mallory" not in everything
    assert check(db, req.id) == "approved"


def test_ui_rejection_and_refusal(db, migrated):
    """The approval DAG's task body, as its runs call it: a rejection is recorded as the triggering
    user; with nothing pending the task fails with the reason (recorded); no user, no decision."""
    from consolidation.airflow import tasks

    req = ask(db, migrated[1])
    run = {"dag_id": "phase4d_cleanup_approval", "user": "reviewer"}
    done = call_task(tasks.record_decision, db, run_id="manual__reject", params={
        "request": req.id, "decision": "reject", "reason": "wait for the 4C services"}, **run)
    assert (done["request_id"], done["status"], done["decided_by"]) == (req.id, "rejected", "reviewer")
    with pytest.raises(ApprovalRefused, match="rejected by reviewer.*wait for the 4C services"):
        check(db, req.id)
    # nothing pending any more: the task fails with the reason, nothing is recorded
    with pytest.raises(ApprovalRefused, match="no pending approval request"):
        call_task(tasks.record_decision, db, run_id="manual__again",
                  params={"decision": "approve", "reason": "looks good"}, **run)
    assert row(db, req.id)["status"] == "rejected"
    entries = approval_ledger(db)
    assert [e["name"] for e in entries] == ["approval_request", "reject", "decision_refused"]
    assert entries[-1]["triggered_by"] == "reviewer" and "no pending approval request" in entries[-1]["message"]
    # a run nobody triggered (no authenticated user) cannot decide anything
    second = ask(db, migrated[1], run_id="4d-run-2")
    with pytest.raises(ApprovalRefused, match="no triggering user"):
        call_task(tasks.record_decision, db, dag_id="phase4d_cleanup_approval", user=None,
                  params={"decision": "approve", "reason": "looks good"})
    assert row(db, second.id)["status"] == "pending"


# ------------------------------------------------------------------ sensor
class _TI:
    """The part of a task instance the sensor uses: the request task's XCom (and reschedule state)."""

    def __init__(self, value):
        self.value = value

    def xcom_pull(self, task_ids=None, **_):
        assert task_ids == "ask_for_approval"
        return self.value

    def get_first_reschedule_date(self, context):
        return None


def test_sensor_waits_for_the_table_only_and_fails_on_rejection(db, migrated, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException, AirflowSensorTimeout

    from consolidation.airflow.sensors import CleanupApprovalSensor

    monkeypatch.setenv("CONSOLIDATION_DB_URL", db)
    req = ask(db, migrated[1])
    sensor = CleanupApprovalSensor(task_id="wait_for_approval", request_task_id="ask_for_approval",
                                   timeout_hours="72")
    assert sensor.mode == "reschedule"
    # a run whose conf and params say "approve" is still waiting: only the table decides
    context = {"ti": _TI({"request_id": req.id}), "params": {"decision": "approve", "approved": True},
               "dag_run": type("Run", (), {"conf": {"decision": "approve", "by": "mallory"}})()}
    assert sensor.poke(context) is False
    with pytest.raises(AirflowRescheduleException):  # waiting holds no worker slot
        sensor.execute(context)
    assert sensor.timeout == 72 * 3600
    impatient = CleanupApprovalSensor(task_id="w", request_task_id="ask_for_approval", timeout_hours="0")
    with pytest.raises(AirflowSensorTimeout):
        impatient.execute(context)
    # the run gave up: its request is no longer pending, and cannot be approved any more
    assert row(db, req.id)["status"] == "expired"
    with psycopg.connect(db) as conn, pytest.raises(ApprovalRefused, match="not pending"):
        approvals.decide(conn, PLAN, request_id=req.id, decision="approve", by="alice", via="cli", reason="too late")

    req = ask(db, migrated[1], run_id="4d-run-2")
    approve(db, req.id)
    assert sensor.poke({"ti": _TI(req.id)}) is True

    rejected = ask(db, migrated[1], run_id="4d-run-3")
    with psycopg.connect(db) as conn:
        approvals.decide(conn, PLAN, request_id=rejected.id, decision="reject", by="bob", via="cli",
                         reason="the 4C services still read splits")
    with pytest.raises(AirflowFailException, match="rejected by bob.*the 4C services still read splits"):
        sensor.poke({"ti": _TI(rejected.id)})
    with pytest.raises(AirflowFailException, match="no approval request id"):
        sensor.poke({"ti": _TI(None)})
