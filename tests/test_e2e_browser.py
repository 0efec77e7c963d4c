"""End to end, as people use it: a real browser on the Airflow UI of `make airflow`.

Airflow is started by the same code as `make airflow` (consolidation.dev.local_airflow: api-server,
scheduler, dag-processor, triggerer; LocalExecutor) on a free port, with a fresh metadata
database and a fresh copy of the legacy fixture as consolidation_db. Debian's chromium
(/usr/bin/chromium), driven by the `playwright` package (never `playwright install`):

1. the operator signs in and triggers 4A, 4B and 4C from their trigger forms; each run succeeds;
2. the operator triggers 4D; it parks in its human-in-the-loop approval (Required Actions);
3. both open Browse > Required Actions and the request's subject (the waiting task's Required Action
   tab: the fingerprint, every DROP statement, one field: Reason). The operator, who triggered the
   run, fills the reason and clicks Approve: Airflow answers 403 (not assigned), the UI says Access
   Denied. The approver clicks Approve: Airflow records them as responder; 4D then backs up, drops
   and passes its gate;
4. the approver opens the completion report from the UI's menu (Plugins > Consolidation).

Screenshots of every step go to artifacts/e2e/ (git-ignored). Afterwards the database says the
same: the request approved by `approver` via Airflow with the reason typed in the browser, the
legacy schemas gone. Timings (about 8 min on a loaded machine) are printed with -s.

Skipped, with the reason, when the `playwright` package or /usr/bin/chromium is missing
(.ci/run installs both).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from conftest import REPO_ROOT

CHROMIUM = os.environ.get("CONSOLIDATION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-gpu"]
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
PHASE_TIMEOUT_MS = 600_000


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright==1.65.2, as .ci/run does)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no browser at {CHROMIUM} (apt-get install -y chromium)"
    return None


pytestmark = pytest.mark.skipif(_browser_missing() is not None, reason=f"e2e browser test: {_browser_missing()}")


class Ui:
    """One signed-in browser context, and the few gestures the scenario needs."""

    def __init__(self, browser, af, user: str, shots: list[str]):
        self.af, self.user, self.shots = af, user, shots
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)

    def shot(self, name: str) -> None:
        path = ARTIFACTS / f"{len(self.shots) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path.name)

    def sign_in(self) -> None:
        from playwright.sync_api import expect

        page = self.page
        page.goto(self.af.url + "/")
        expect(page).to_have_url(re.compile(r"/auth/login"))
        page.get_by_label("Username").fill(self.user)
        page.get_by_label("Password").fill(self.af.passwords()[self.user])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(self.af.url + "/")
        expect(page.get_by_role("button", name="Plugins")).to_be_visible()
        self.shot(f"{self.user}-signed-in")

    def open_trigger_form(self, dag_id: str):
        self.page.goto(f"{self.af.url}/dags/{dag_id}")
        self.page.get_by_role("button", name="Trigger").first.click()
        return self.page.get_by_role("dialog")

    def submit(self, dialog, name: str) -> dict:
        """Click the form's Trigger; the run the API created (as the UI received it)."""
        self.shot(f"{name}-form")
        with self.page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as resp:
            dialog.get_by_test_id("trigger-dag-submit").click()
        assert resp.value.status == 200, resp.value.text()
        run = resp.value.json()
        assert run["triggering_user_name"] == self.user
        return run

    def run_badge(self, dag_id: str, run_id: str):
        self.page.goto(f"{self.af.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}")
        return self.page.locator("h2", has_text=run_id).locator("xpath=..").get_by_test_id("state-badge")

    def wait_run(self, dag_id: str, run_id: str, state: str, name: str) -> None:
        from playwright.sync_api import expect

        badge = self.run_badge(dag_id, run_id)  # the run page refreshes itself while the run is active
        expect(badge).to_have_text(re.compile(f"^(?:{state}|Failed)$"), timeout=PHASE_TIMEOUT_MS)
        self.shot(f"{name}-{badge.inner_text().lower()}")
        assert badge.inner_text() == state, f"{dag_id} run {run_id} ended {badge.inner_text()}"

    def task_badge(self, task_id: str):
        row = self.page.get_by_role("row").filter(has=self.page.get_by_role("link", name=task_id, exact=True))
        return row.get_by_test_id("state-badge")

    def open_required_action(self, run_id: str) -> None:
        """Browse > Required Actions, the row of `run_id`'s request, its subject: the waiting task's
        Required Action tab (the body, the Reason field, Approve / Reject)."""
        from playwright.sync_api import expect

        page = self.page
        page.goto(self.af.url + "/")
        page.get_by_role("button", name="Browse").click()
        page.get_by_role("menuitem", name="Required Actions").click()
        row = page.get_by_role("row").filter(has_text=run_id)
        expect(row.get_by_text("Approval Required")).to_be_visible()
        self.shot(f"{self.user}-required-actions")
        row.get_by_role("link", name=re.compile(r"^Approve the legacy cleanup: request \d+")).click()
        expect(page.get_by_test_id("hitl-option-Approve")).to_be_visible()

    def respond(self, option: str, reason: str):
        """Fill the Reason, click `option`: Airflow's answer to the request the UI sends (PATCH hitlDetails)."""
        from playwright.sync_api import expect

        page = self.page
        # the form's labels are not bound to their inputs (Airflow 3.3 UI): the field group holding the label
        field = page.get_by_role("group").filter(has=page.get_by_text("Reason", exact=True)).get_by_role("textbox")
        field.fill(reason)
        button = page.get_by_test_id(f"hitl-option-{option}")
        expect(button).to_be_enabled()
        with page.expect_response(lambda r: r.url.endswith("/hitlDetails") and r.request.method == "PATCH") as resp:
            button.click()
        return resp.value


def test_operator_and_approver_carry_phase_4_through_the_ui(make_db, legacy_db, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from psycopg import sql

    from consolidation import api
    from consolidation.dev import local_airflow
    from consolidation.core.ledger import tool_ident
    from consolidation.core.db import connect
    from consolidation.core.plan import load_plan

    plan = load_plan()
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    shots: list[str] = []
    af = local_airflow.LocalAirflow(
        home=tmp_path / "airflow", port=local_airflow.free_port(),
        meta_url=local_airflow.sqlalchemy_url(make_db()), target_dsn=legacy_db,
        log_server_ports=(local_airflow.free_port(), local_airflow.free_port()),
        # its own state folder (backups, the report the UI shows): never the session's, which other tests read
        extra_env={"CONSOLIDATION_STATE_DIR": str(tmp_path / "state")})
    timings: dict[str, float] = {}
    started = time.monotonic()
    try:
        af.start(timeout=400)
        timings["airflow ready"] = time.monotonic() - started
        # a loaded CI machine renders pages in seconds, not milliseconds: no 5 s default waits
        expect.set_options(timeout=60_000)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                # 1. the operator runs 4A, 4B, 4C from their forms
                op = Ui(browser, af, "operator", shots)
                op.sign_in()
                for name, dag_id in (("4a", "phase4a_schema_extension"), ("4b", "phase4b_data_migration"),
                                     ("4c", "phase4c_service_updates")):
                    t = time.monotonic()
                    run = op.submit(op.open_trigger_form(dag_id), name)
                    op.wait_run(dag_id, run["dag_run_id"], "Success", name)
                    timings[name] = time.monotonic() - t

                # 2. 4D waits for a person: parked in Airflow's human-in-the-loop (Required Actions)
                t = time.monotonic()
                cleanup = op.submit(op.open_trigger_form("phase4d_legacy_cleanup"), "4d")
                run_4d = cleanup["dag_run_id"]
                passwords = af.passwords()
                approver_token = api.airflow_token(af.url, "approver", passwords["approver"])
                deadline = time.monotonic() + PHASE_TIMEOUT_MS / 1000
                while not (waiting := api.pending_approvals(af.url, approver_token)):
                    assert time.monotonic() < deadline, "4D never asked for an approval"
                    time.sleep(2)
                assert waiting[0]["task_instance"]["dag_run_id"] == run_4d
                # the run page renders slowly on a loaded machine: wait as long as for a phase's state
                expect(op.run_badge("phase4d_legacy_cleanup", run_4d)).to_have_text("Running", timeout=PHASE_TIMEOUT_MS)
                expect(op.task_badge("backup")).to_have_text("No Status", timeout=PHASE_TIMEOUT_MS)
                op.shot("4d-waiting-for-approval")
                timings["4d until waiting"] = time.monotonic() - t

                # 3. Required Actions: both see the request (fingerprint, DROP list); the operator, who
                #    triggered the run, is not assigned: Airflow refuses their Approve; the approver's counts
                t = time.monotonic()
                with connect(legacy_db) as conn:
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

                # 4. the completion report, from the UI's menu
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
        af.stop()
        print(f"\ne2e timings (s): {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}; "
              f"total {time.monotonic() - started:.0f}; screenshots in {ARTIFACTS}: {', '.join(shots)}")

    with connect(legacy_db) as conn:
        decided = conn.execute(sql.SQL("SELECT status, decided_by, decided_via, reason FROM {} WHERE run_id = %s").format(
            tool_ident(plan, "approvals")), (run_4d,)).fetchall()
        legacy_left = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                                   ([s for s in plan.legacy_schemas if s != "public"],)).fetchall()
    # "airflow": Airflow's response does not tell the UI from the REST API (both PATCH hitlDetails)
    assert decided == [("approved", "approver", "airflow", "e2e: 4A-4C gates passed; reconciliation reviewed")]
    assert legacy_left == []
