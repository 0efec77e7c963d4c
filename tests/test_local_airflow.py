"""`make airflow` for real, as people use it: api-server, scheduler, dag-processor and triggerer
as processes (the LocalExecutor), then a real browser on its UI.

One Airflow for the module, started by the same code as `python -m consolidation airflow-local
start` (consolidation.dev.local_airflow), on a free port, with its own AIRFLOW_HOME, a fresh
metadata database and a fresh copy of the legacy fixture as consolidation_db. (Starting one costs
tens of seconds of both CPUs; the REST and the browser scenario used to start one each.)

1. Through the REST API the UI uses: the two logins, the params forms rejecting bad input, and a
   4A run triggered by the operator that the scheduler and the LocalExecutor carry to success,
   recorded in the ledger under the operator's name.
2. In Debian's chromium (tests/browser_ui.py; skipped, naming why, where the browser or the
   `playwright` package is missing):
   a. the operator signs in and triggers 4B and 4C from their trigger forms; each run succeeds;
   b. the operator triggers 4D; it parks in its human-in-the-loop approval (Required Actions);
   c. both open Browse > Required Actions and the request's subject (the waiting task's Required
      Action tab: the fingerprint, every DROP statement, one field: Reason). The operator, who
      triggered the run, fills the reason and clicks Approve: Airflow answers 403 (not assigned),
      the UI says Access Denied. The approver clicks Approve: Airflow records them as responder;
      4D then backs up, drops and passes its gate;
   d. the approver opens the completion report from the UI's menu (Plugins > Consolidation).
   Afterwards the database says the same: the request approved by `approver` via Airflow with
   the reason typed in the browser, the legacy schemas gone. Timings are printed with -s.
3. Stop leaves nothing running.
"""
from __future__ import annotations

import re
import shutil
import time

import pytest
from psycopg import sql

from consolidation import api
from consolidation.core import ledger
from consolidation.core.db import connect
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import load_plan
from consolidation.dev import local_airflow

from browser_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHASE_TIMEOUT_MS, Ui, browser_missing


@pytest.fixture(scope="module")
def airflow(make_session_db, fixture_template, tmp_path_factory):
    """The module's running Airflow and its consolidation_db; stopped at the end (test 3 stops it first)."""
    home = tmp_path_factory.mktemp("local_airflow")
    target = make_session_db(template=fixture_template)
    af = local_airflow.LocalAirflow(
        home=home / "airflow", port=local_airflow.free_port(),
        meta_url=local_airflow.sqlalchemy_url(make_session_db()), target_dsn=target,
        log_server_ports=(local_airflow.free_port(), local_airflow.free_port()),
        # its own state folder (backups, the report the UI shows): never the session's, which other tests read
        extra_env={"CONSOLIDATION_STATE_DIR": str(home / "state")})
    try:
        af.start(timeout=400)
        yield af, target, af.running()
    finally:
        af.stop()


@pytest.fixture(scope="module")
def ran_4a(airflow):
    """4A triggered by the operator through the REST API, carried by the scheduler; its run."""
    af, _, _ = airflow
    token = af.token("operator")
    run_id = af.trigger("phase4a_schema_extension", token)
    return af.wait_run("phase4a_schema_extension", run_id, token, timeout=600)


def test_operator_runs_4a_through_the_scheduler(airflow, ran_4a):
    af, target, pids = airflow
    assert set(pids) == set(local_airflow.COMPONENTS)
    with pytest.raises(local_airflow.AirflowApiError) as wrong:
        af.token("operator", "not-the-password")
    assert wrong.value.status == 401
    token = af.token("operator")

    dags = {d["dag_id"]: d for d in af.api("GET", "/api/v2/dags?limit=100", token=token)["dags"]}
    assert set(local_airflow.dag_ids()) <= set(dags)
    assert not any(d["is_paused"] for d in dags.values())

    # the forms validate: a run with bad params is refused before anything runs
    with pytest.raises(local_airflow.AirflowApiError) as bad:
        af.trigger("phase4b_data_migration", token, {"dry_run": "yes"})
    assert bad.value.status == 400 and "dry_run" in bad.value.body
    with pytest.raises(local_airflow.AirflowApiError) as bad:
        af.trigger("phase4d_legacy_cleanup", token, {"approval_timeout_hours": -1})
    assert bad.value.status == 400 and "approval_timeout_hours" in bad.value.body

    assert ran_4a["state"] == "success", ran_4a
    assert ran_4a["triggering_user_name"] == "operator"
    with connect(target) as conn:
        gate = ledger.latest(conn, load_plan(), phase="4A", kind="gate")
    assert gate["status"] == ledger.SUCCESS and gate["run_id"] == ran_4a["dag_run_id"]
    assert gate["triggered_by"] == "operator"


@pytest.mark.skipif(browser_missing() is not None, reason=f"e2e browser test: {browser_missing()}")
def test_operator_and_approver_carry_4b_to_4d_through_the_ui(airflow, ran_4a):
    from playwright.sync_api import expect, sync_playwright

    af, target, _ = airflow
    assert ran_4a["state"] == "success", ran_4a
    plan = load_plan()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    shots: list[str] = []
    timings: dict[str, float] = {}
    started = time.monotonic()
    # a loaded CI machine renders pages in seconds, not milliseconds: no 5 s default waits
    expect.set_options(timeout=60_000)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                # a. the operator runs 4B, 4C from their forms
                op = Ui(browser, af, "operator", shots)
                op.sign_in()
                for name, dag_id in (("4b", "phase4b_data_migration"), ("4c", "phase4c_service_updates")):
                    t = time.monotonic()
                    run = op.submit(op.open_trigger_form(dag_id), name)
                    op.wait_run(dag_id, run["dag_run_id"], "Success", name)
                    timings[name] = time.monotonic() - t

                # b. 4D waits for a person: parked in Airflow's human-in-the-loop (Required Actions)
                t = time.monotonic()
                cleanup = op.submit(op.open_trigger_form("phase4d_legacy_cleanup"), "4d")
                run_4d = cleanup["dag_run_id"]
                passwords = af.passwords()
                approver_token = api.airflow_token(af.url, "approver", passwords["approver"])
                deadline = time.monotonic() + PHASE_TIMEOUT_MS / 1000
                while not (waiting := api.pending_approvals(af.url, approver_token)):
                    assert time.monotonic() < deadline, "4D never asked for an approval"
                    time.sleep(1)
                assert waiting[0]["task_instance"]["dag_run_id"] == run_4d
                # the run page renders slowly on a loaded machine: wait as long as for a phase's state
                expect(op.run_badge("phase4d_legacy_cleanup", run_4d)).to_have_text("Running", timeout=PHASE_TIMEOUT_MS)
                expect(op.task_badge("backup")).to_have_text("No Status", timeout=PHASE_TIMEOUT_MS)
                op.shot("4d-waiting-for-approval")
                timings["4d until waiting"] = time.monotonic() - t

                # c. Required Actions: both see the request (fingerprint, DROP list); the operator, who
                #    triggered the run, is not assigned: Airflow refuses their Approve; the approver's counts
                t = time.monotonic()
                with connect(target) as conn:
                    fingerprint = conn.execute(sql.SQL("SELECT fingerprint FROM {} WHERE run_id = %s").format(
                        tool_ident(plan, "approvals")), (run_4d,)).fetchone()[0]
                    drops = [s for e in api.drop_sql_preview(conn, plan).value.values() for s in e["statements"]]
                assert any(s.startswith('DROP SCHEMA "action"') for s in drops), drops
                op.open_required_action(run_4d)
                refused = op.respond("Approve", "operator approving their own run")
                assert refused.status == 403, refused.text()
                assert "User=operator (id=operator) is not a respondent" in refused.json()["detail"]
                expect(op.page.get_by_role("status").filter(has_text="Access Denied")).to_be_visible()
                op.shot("4d-operator-refused")

                ap = Ui(browser, af, "approver", shots)
                ap.sign_in()
                ap.open_required_action(run_4d)  # still waiting: "Approval Required"
                shown = ap.page.get_by_test_id("main-content").inner_text()
                assert fingerprint in shown
                assert [s for s in drops if s not in shown] == [], "DROP statements missing from the request"
                # the form asks for the reason only (the DAG's params are no fields of it)
                expect(ap.page.locator("input[name^='element_']")).to_have_count(1)
                reason = "e2e: 4A-4C gates passed; reconciliation reviewed"
                answer = ap.respond("Approve", reason)
                assert answer.status == 200, answer.text()
                assert answer.request.post_data_json == {"chosen_options": ["Approve"], "params_input": {"reason": reason}}
                assert answer.json()["responded_by"] == {"id": "approver", "name": "approver"}
                expect(ap.page.get_by_role("status").filter(has_text="wait_for_approval response successful")).to_be_visible()
                expect(ap.page.get_by_text(re.compile(r"^Response received at .+ from approver$"))).to_be_visible()
                ap.shot("4d-approved")
                ap.wait_run("phase4d_legacy_cleanup", run_4d, "Success", "4d")
                timings["4d after approval"] = time.monotonic() - t

                # d. the completion report, from the UI's menu
                ap.page.get_by_role("button", name="Plugins").click()
                ap.page.get_by_role("menuitem", name="Consolidation").click()
                ap.page.get_by_role("menuitem", name="Completion report").click()
                report = ap.page.frame_locator("iframe").first
                expect(report.locator("h1")).to_contain_text("Phase 4 completion report")
                expect(report.locator("body")).to_contain_text(run_4d)
                ap.shot("completion-report")
            finally:
                browser.close()
    finally:
        print(f"\ne2e timings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; "
              f"total {time.monotonic() - started:.0f}; screenshots in {ARTIFACTS}: {', '.join(shots)}")

    with connect(target) as conn:
        decided = conn.execute(sql.SQL("SELECT status, decided_by, decided_via, reason FROM {} WHERE run_id = %s").format(
            tool_ident(plan, "approvals")), (run_4d,)).fetchall()
        legacy_left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                                   ([s for s in plan.legacy_schemas if s != "public"],)).fetchall()
    # "airflow": Airflow's response does not tell the UI from the REST API (both PATCH hitlDetails)
    assert decided == [("approved", "approver", "airflow", "e2e: 4A-4C gates passed; reconciliation reviewed")]
    assert legacy_left == []


def test_stop_leaves_nothing_running(airflow):
    af, _, pids = airflow
    af.stop()
    assert af.running() == {}
    for pid in pids.values():  # each component's whole process group is gone
        assert not local_airflow.group_alive(pid)
    assert not list(af.run_dir.glob("*.pid"))
