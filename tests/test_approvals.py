"""Cleanup approvals, against clones of the 4B stage: requests, the checks applied to Airflow's
human-in-the-loop response (engine tier: the response as execute_complete receives it, through
api.approval_response and CleanupApproval.execute_complete), and the CLI's refusals. The whole
path through Airflow's REST API (an api-server, the operator refused, the approver's
`consolidation approve --user`) runs in tests/test_hitl_approval.py and the 4D DAG tests.

What the owner of the data cares about: nothing is dropped without a recorded human
decision (who, how, when, why, on which fingerprint); a rejection stops the cleanup with
its reason; an approval is refused once the data changed or it is too old; and no
name typed into a run's conf can approve anything.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from consolidation.phases import approvals
from consolidation.core import ledger
from consolidation.phases.approvals import ApprovalRefused
from consolidation.core.plan import load_plan

from hitl_helpers import REASON, event, respond
from phase_helpers import task_context, task_db

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


def approve(dsn: str, request_id: int, **kw):
    """Airflow's response by the approver, checked and copied as the waiting task does."""
    out = respond(dsn, PLAN, request_id, **kw)
    assert out.ok, out.failure
    return out


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


# ------------------------------------------------------------------ Airflow's response, checked
def test_request_is_pending_until_airflow_records_an_approval_with_who_and_why(db, migrated):
    digest = migrated[1]
    req = ask(db, digest)
    # the fingerprint binds the plan file and the data's digest (computed here independently)
    assert req.fingerprint == hashlib.sha256((PLAN.sha256 + digest["digest"]).encode()).hexdigest()
    assert check(db, req.id) == "pending"

    out = approve(db, req.id)
    assert out.value["request_id"] == req.id and out.value["fingerprint"] == req.fingerprint
    assert any(f"request {req.id} approved by approver" in line for line in out.lines)
    with psycopg.connect(db) as conn:
        role = conn.execute("SELECT current_user").fetchone()[0]
    r = row(db, req.id)
    assert (r["status"], r["decided_by"], r["decided_via"], r["db_role"], r["reason"]) == \
        ("approved", "approver", "airflow", role, REASON)
    assert r["fingerprint"] == req.fingerprint and r["decided_at"] is not None
    assert check(db, req.id) == "approved"  # recomputed from the data: unchanged

    names = [(e["name"], e["status"], e["triggered_by"]) for e in approval_ledger(db)]
    assert names[:2] == [("approval_request", "success", "operator"), ("approve", "success", "approver")]
    assert all(e["details"]["fingerprint"] == req.fingerprint for e in approval_ledger(db))

    # a second response to a decided request is not a decision: refused with one line, invalidated
    again = respond(db, PLAN, req.id, option="Reject", reason="changed my mind after all")
    assert "already approved by approver" in str(again.failure) and "nothing is dropped" in str(again.failure)
    assert row(db, req.id)["status"] == "refused"


def test_rejection_refuses_with_the_reason_and_who(db, migrated):
    req = ask(db, migrated[1])
    out = respond(db, PLAN, req.id, option="Reject", reason="backup of public not verified yet")
    msg = str(out.failure)
    assert "rejected by approver" in msg and "backup of public not verified yet" in msg and "nothing is dropped" in msg
    r = row(db, req.id)
    assert (r["status"], r["decided_by"], r["reason"]) == ("rejected", "approver", "backup of public not verified yet")
    assert [(e["name"], e["status"]) for e in approval_ledger(db)][-1] == ("reject", "refused")
    with pytest.raises(ApprovalRefused, match="rejected by approver"):
        check(db, req.id)


def test_a_response_without_reason_or_from_the_trigger_is_refused_and_recorded(db, migrated):
    for kw, match in (({"reason": "ok"}, "has no reason"),
                      ({"triggered_by": "approver"}, "triggered this 4D run")):
        req = ask(db, migrated[1], run_id=f"4d-run-{match[:6]}")
        out = respond(db, PLAN, req.id, **kw)
        assert match in str(out.failure)
        assert row(db, req.id)["status"] == "refused" and match in row(db, req.id)["refusal"]
        last = approval_ledger(db)[-1]  # the refused attempt is in the ledger, with who tried
        assert (last["name"], last["status"]) == ("approval_refused", "refused") and match in last["message"]


def test_cli_refusals_exit_non_zero_with_one_line(cli):
    url = {"CONSOLIDATION_AIRFLOW_URL": "http://127.0.0.1:9"}  # nothing listens there
    for args, env, match in ((("approve", "--reason", "looks good"), url, "give --user NAME"),
                             (("reject", "--user", "approver", "--reason", "not yet"), url, "no password"),
                             (("approve", "--user", "approver", "--reason", "looks good"),
                              url | {"CONSOLIDATION_AIRFLOW_PASSWORD": "x"}, "is not reachable")):
        out = cli(*args, env=env)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert match in out.stderr and "Traceback" not in out.stderr


def test_cli_against_airflow_refuses_a_wrong_password_and_nothing_waiting(cli, core_api):
    from consolidation.dev import api_server

    url, home = core_api
    out = cli("approve", "--user", "approver", "--airflow-url", url, "--reason", "looks good",
              env={"CONSOLIDATION_AIRFLOW_PASSWORD": "not-the-password"})
    assert out.returncode == 1 and "HTTP 401" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = cli("approve", "--user", "approver", "--airflow-url", url, "--reason", "looks good", "--request", "999",
              env={"CONSOLIDATION_AIRFLOW_PASSWORD": api_server.passwords(home)["approver"]})
    assert out.returncode == 1 and "no 4D approval is waiting in Airflow for request 999" in out.stderr


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


def test_a_response_on_changed_data_is_refused_naming_the_step(db, migrated):
    req = ask(db, migrated[1])
    changed = next(s for s in PLAN.steps if s.action == "delete" and (s.stated_rows or 0) > 0)
    with psycopg.connect(db) as conn:  # the data changes while the request waits
        conn.execute(f"DELETE FROM {changed.source} WHERE ctid = (SELECT min(ctid) FROM {changed.source})")
    out = respond(db, PLAN, req.id)
    assert "stale" in str(out.failure) and changed.name in str(out.failure)
    assert row(db, req.id)["status"] == "refused"


def test_expired_approval_is_refused(db, migrated):
    req = ask(db, migrated[1])
    late = respond(db, PLAN, req.id, at=datetime.now(timezone.utc) - timedelta(hours=25))
    assert "older than its validity of 24 h" in str(late.failure)  # a response older than its validity
    assert row(db, req.id)["status"] == "expired"
    req = ask(db, migrated[1], run_id="4d-run-2")
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


# ------------------------------------------------------------------ the waiting task (CleanupApproval)
def _complete(db, req, event_, **kw):
    """CleanupApproval.execute_complete, as Airflow resumes the parked task with the response."""
    from consolidation.airflow.approval import CleanupApproval

    task = CleanupApproval(task_id="wait_for_approval", request_task_id="open_request")
    with task_db(db):
        return task.execute_complete(task_context("approval_test", "manual__4d", user="operator"), event_,
                                     request_id=req.id, fingerprint=req.fingerprint, assigned=["approver"],
                                     triggered_by="operator", **kw)


def test_the_waiting_task_fails_on_timeout_rejection_and_unassigned_and_continues_on_approval(db, migrated):
    from airflow.sdk.exceptions import AirflowFailException

    from consolidation.airflow.approval import CleanupApproval

    task = CleanupApproval(task_id="w", request_task_id="open_request")  # no default: a timeout never approves
    assert task.options == ["Approve", "Reject"] and not task.defaults and "reason" in task.params

    req = ask(db, migrated[1])  # nobody responded before the timeout: never an approval
    with pytest.raises(AirflowFailException, match="no decision before the approval timeout; nothing is dropped"):
        _complete(db, req, {"error": "timed out"})
    assert row(db, req.id)["status"] == "expired"
    late = respond(db, PLAN, req.id)  # the request cannot be approved any more
    assert late.failure is not None and row(db, req.id)["status"] != "approved"

    req = ask(db, migrated[1], run_id="4d-run-2")
    with pytest.raises(AirflowFailException, match="mallory responded but is not an assigned approver"):
        _complete(db, req, event(user="mallory"))
    assert row(db, req.id)["status"] == "refused"

    req = ask(db, migrated[1], run_id="4d-run-3")
    with pytest.raises(AirflowFailException, match="rejected by approver.*the 4C services still read splits"):
        _complete(db, req, event(option="Reject", reason="the 4C services still read splits"))

    req = ask(db, migrated[1], run_id="4d-run-4")
    decision = _complete(db, req, event())
    assert (decision["request_id"], decision["responded_by"]) == (req.id, "approver")
    assert row(db, req.id)["status"] == "approved"


def test_the_approval_form_asks_only_for_the_reason(dag_bag):
    """Every param of the HITL task is a field of the Required Actions form, and an empty one blocks
    its Approve/Reject buttons: the DAG's own params (backup_dir, ...) must not be among them."""
    wait = dag_bag.dags["phase4d_legacy_cleanup"].get_task("wait_for_approval")
    assert list(wait.params.keys()) == ["reason"]
    assert wait.options == ["Approve", "Reject"] and not wait.multiple
