"""The browser side of tests/test_local_airflow.py: Debian's chromium (/usr/bin/chromium),
driven by the `playwright` package (never `playwright install`), on the UI of a LocalAirflow.
Screenshots of every step go to artifacts/e2e/ (git-ignored). The test skips, with the reason,
when the `playwright` package or the browser is missing (.ci/run installs both)."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from urllib.parse import quote

from conftest import REPO_ROOT

CHROMIUM = os.environ.get("CONSOLIDATION_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-gpu"]
ARTIFACTS = REPO_ROOT / "artifacts" / "e2e"
PHASE_TIMEOUT_MS = 600_000


def browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install playwright==1.65.2, as .ci/run does)"
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no browser at {CHROMIUM} (apt-get install -y chromium)"
    return None



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
        """Until the run ends, then its page must show `state`. The wait polls the REST API with
        a blank page: the run page re-renders itself while the run is active, which kept a
        renderer busy at 40 % of a CPU for minutes (measured), starving the run it watched."""
        from playwright.sync_api import expect

        self.page.goto("about:blank")
        self.af.wait_run(dag_id, run_id, self.af.token(self.user), timeout=PHASE_TIMEOUT_MS / 1000)
        badge = self.run_badge(dag_id, run_id)
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
