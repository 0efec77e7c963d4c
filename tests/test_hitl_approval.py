"""The 4D approval through Airflow's human-in-the-loop, against the real server.

Engine tier: the verification the cleanup applies to Airflow's response (four eyes, assigned
users, a reason, a forged approvals row before or after the response). DAG tier: 4D run with
dag.test() while Airflow's core API (dev.api_server) serves Required Actions' endpoint on the
same metadata database; the operator's response is refused by Airflow (403), the approver's is
given with `consolidation approve` over HTTP; a forged table row leads to no drop.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest

from consolidation import api
from consolidation.checks import reconcile
from consolidation.core import ledger
from consolidation.dev import api_server
from consolidation.phases import approvals
from consolidation.phases.approvals import ApprovalRefused
from consolidation.phases.hitl import response

from conftest import REPO_ROOT
from hitl_helpers import REASON
from phase_helpers import PLAN, snapshot

DAG = "phase4d_legacy_cleanup"


def _open(dsn):
    with psycopg.connect(dsn) as conn:
        d = reconcile.digest(conn, PLAN)
        conn.commit()
        return approvals.open_request(conn, PLAN, run_id="4d-run", user="operator", digest=d)


def _event(user="approver", option="Approve", reason=REASON):
    return {"chosen_options": [option], "params_input": {"reason": reason},
            "responded_at": datetime.now(timezone.utc), "responded_by_user": {"id": user, "name": user}}


def _ledger_names(dsn):
    with psycopg.connect(dsn) as conn:
        return [r["name"] for r in ledger.rows(conn, PLAN, "kind = 'approval'")]


# ------------------------------------------------------------------ engine: the checks
def test_four_eyes_the_triggering_approver_is_never_assigned():
    assert response.assignees(["alice", "bob"], "alice") == [{"id": "bob", "name": "bob"}]
    with pytest.raises(ApprovalRefused, match="only approver alice triggered this 4D run"):
        response.assignees(["alice"], "alice")
    with pytest.raises(ApprovalRefused, match="names no approvers"):
        response.assignees([], "alice")


def test_self_approval_and_unassigned_responses_are_refused_and_invalidate(db_4b):
    for who, triggered, match in (("alice", "alice", "triggered this 4D run"),
                                  ("mallory", "alice", "not an assigned approver")):
        req = _open(db_4b)
        with psycopg.connect(db_4b) as conn, pytest.raises(ApprovalRefused, match=match):
            response.record_response(conn, PLAN, req.id, _event(who), fingerprint=req.fingerprint,
                                     assigned=["alice", "mallory"] if who == "alice" else ["alice"],
                                     triggered_by=triggered, run_id="4d-run")
        with psycopg.connect(db_4b) as conn:
            assert approvals.get(conn, PLAN, req.id).status == "refused"


def test_a_row_forged_before_the_response_is_refused(db_4b):
    req = _open(db_4b)
    with psycopg.connect(db_4b) as conn:  # the tool's own role writes the "approval" itself
        conn.execute("UPDATE operational.consolidation_approvals SET status = 'approved', decided_by = 'approver', "
                     "decided_via = 'ui', decided_at = now(), reason = 'looks fine to me' WHERE id = %s", (req.id,))
    with psycopg.connect(db_4b) as conn, pytest.raises(ApprovalRefused, match="which Airflow did not record"):
        response.record_response(conn, PLAN, req.id, _event(), fingerprint=req.fingerprint, assigned=["approver"],
                                 triggered_by="operator", run_id="4d-run")
    with psycopg.connect(db_4b) as conn:
        assert approvals.get(conn, PLAN, req.id).status == "refused"
    assert "approval_forged" in _ledger_names(db_4b)


def test_a_copy_changed_after_the_response_is_refused_by_backup(db_4b):
    req = _open(db_4b)
    event = _event()
    with psycopg.connect(db_4b) as conn:
        out = api.approval_response(conn, PLAN, req.id, event, fingerprint=req.fingerprint, assigned=["approver"],
                                    triggered_by="operator", run_id="4d-run", validity_hours=24)
    assert out.ok, out.failure
    decision = out.value
    with psycopg.connect(db_4b) as conn:
        assert response.verify_copy(conn, PLAN, req.id, decision).decided_by == "approver"
        conn.execute("UPDATE operational.consolidation_approvals SET decided_by = 'mallory' WHERE id = %s", (req.id,))
        conn.commit()
        out = api.cleanup_backup(conn, db_4b, PLAN, req.id, decision=decision, run_id="4d-run", user="operator")
    assert "differs from the approval Airflow recorded" in str(out.failure)
    with psycopg.connect(db_4b) as conn:
        assert approvals.get(conn, PLAN, req.id).status == "refused"
        assert not ledger.rows(conn, PLAN, "kind = 'backup'")


def test_a_rejection_and_a_missing_reason_stop_the_cleanup(db_4b):
    for event, match in ((_event(option="Reject", reason="the quarantine is too large"), "was rejected by approver"),
                         (_event(reason=None), "has no reason")):
        req = _open(db_4b)
        with psycopg.connect(db_4b) as conn, pytest.raises(ApprovalRefused, match=match):
            response.record_response(conn, PLAN, req.id, event, fingerprint=req.fingerprint, assigned=["approver"],
                                     triggered_by="operator", run_id="4d-run")


def test_sql_preview_4d_lists_the_drops_in_order(db_4c, cli):
    done = cli("sql", "--phase", "4d", dsn=db_4c)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert 'DROP SCHEMA "splits" RESTRICT;' in text
    assert "kept, emptied" in text  # public
    assert text.index("DROP VIEW") < text.index("DROP SCHEMA")
    done = cli("sql", "--phase", "rollback", dsn=db_4c)
    assert done.returncode == 0 and "nothing to restore" in done.stdout


# ------------------------------------------------------------------ DAG: Required Actions' endpoint
class Responder:
    """While dag.test() runs 4D: waits until Airflow lists the approval, responds as the operator
    (must be refused by Airflow), optionally forges the table row, then approves with the CLI as
    the approver over HTTP."""

    def __init__(self, url: str, home: Path, dsn: str, forge: bool = False):
        self.url, self.home, self.dsn, self.forge = url, home, dsn, forge
        self.operator = self.cli = self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(timeout=60)

    def _run(self):
        try:
            pw = api_server.passwords(self.home)
            token = api.airflow_token(self.url, "approver", pw["approver"])
            deadline = time.monotonic() + 600
            while not api.pending_approvals(self.url, token):
                if time.monotonic() > deadline:
                    raise TimeoutError("no approval appeared in Required Actions")
                time.sleep(1)
            op = api.airflow_token(self.url, "operator", pw["operator"])
            self.operator = api.respond(self.url, op, "approve", "operator approving own run")
            if self.forge:
                with psycopg.connect(self.dsn) as conn:
                    conn.execute("UPDATE operational.consolidation_approvals SET status = 'approved', "
                                 "decided_by = 'approver', decided_via = 'ui', decided_at = now(), "
                                 "reason = 'forged by the tool role' WHERE status = 'pending'")
            env = dict(os.environ, CONSOLIDATION_AIRFLOW_PASSWORD=pw["approver"])
            self.cli = subprocess.run([sys.executable, "-m", "consolidation", "approve", "--user", "approver",
                                       "--airflow-url", self.url, "--reason", REASON],
                                      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        except BaseException as exc:
            self.error = exc


def _run_4d(run_dag, core_api, dsn, tmp_path, forge=False):
    url, home = core_api
    conf = {"approval_timeout_hours": 1, "backup_dir": str(tmp_path / "backup"), "report_dir": str(tmp_path / "report")}
    with Responder(url, home, dsn, forge=forge) as r:
        state = run_dag(DAG, dsn, conf)
    assert r.error is None, r.error
    return state, r


# The whole 4D run that waits in Required Actions, refuses the operator and is approved by the
# assigned approver is test_phase4d's `cleaned` run (test_full_cleanup_drops_only_after_approval_and_backup).


def test_a_forged_row_does_not_lead_to_a_drop(run_dag, core_api, db_4c, tmp_path):
    before = snapshot(db_4c, PLAN.legacy_schemas)
    state, r = _run_4d(run_dag, core_api, db_4c, tmp_path, forge=True)
    assert r.cli.returncode == 0, r.cli.stderr  # Airflow accepted the approver's response...
    assert state == "failed"                     # ...but the cleanup refused the forged row
    assert snapshot(db_4c, PLAN.legacy_schemas) == before
    with psycopg.connect(db_4c) as conn:
        status, refusal = conn.execute("SELECT status, refusal FROM operational.consolidation_approvals "
                                       "ORDER BY id DESC LIMIT 1").fetchone()
        assert not ledger.rows(conn, PLAN, "kind = 'backup'")
    assert status == "refused" and "Airflow did not record" in refusal
