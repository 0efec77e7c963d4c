"""The realapp fixture to the end: a plan whose steps quarantine within their thresholds
reaches 4D. Quarantined rows are accounted for, not migrated: the 4C gate compares the
legacy rows minus the quarantined ones and lists the quarantine, the approval request states
it per step and its fingerprint covers it, the backup holds the rows, the completion report
lists them with their reasons and where they are kept.

Through the engine (the functions the DAG tasks call), on the whole realapp fixture (its plan
recreates the trigger's function and drops the leftover table; test_realapp_objects.py).
"""
from __future__ import annotations

import psycopg
import pytest

from consolidation.dev import realapp

from phase_helpers import call_task, engine_4a, engine_4b, engine_4c

PLAN_FILE = str(realapp.PLAN_FILE)
DAG = "phase4d_legacy_cleanup"


@pytest.fixture
def realapp_plan(monkeypatch):
    from consolidation.core.plan import load_plan

    monkeypatch.setenv("CONSOLIDATION_PLAN", PLAN_FILE)  # task bodies read the plan from it
    return load_plan(PLAN_FILE)


@pytest.fixture
def realapp_4c(make_db, realapp_plan, tmp_path) -> str:
    """A realapp database carried through 4A, 4B (6 bets quarantined, within the threshold) and 4C."""
    dsn = make_db()
    realapp.build(dsn)
    engine_4a(dsn, realapp_plan)
    engine_4b(dsn, realapp_plan)
    engine_4c(dsn, tmp_path / "export", realapp_plan)
    return dsn


def _latest(conn, kind: str, name: str):
    return conn.execute("SELECT status, message, details FROM ops.consolidation_ledger WHERE kind = %s AND name = %s "
                        "ORDER BY id DESC LIMIT 1", (kind, name)).fetchone()


def test_quarantine_within_threshold_reaches_4d_accounted_for(realapp_4c, realapp_plan, tmp_path):
    from consolidation.airflow import tasks
    from consolidation.checks import quarantine
    from consolidation.phases import approvals
    from consolidation.core import db

    dsn, plan = realapp_4c, realapp_plan
    with psycopg.connect(dsn) as conn:
        status, _, details = _latest(conn, "gate", "gate_4C")
        assert status == "success"
        listed = conn.execute("SELECT details::text FROM ops.consolidation_ledger WHERE kind = 'gate' "
                              "AND name = 'gate_4C' ORDER BY id DESC LIMIT 1").fetchone()[0]
        # the 4C gate states the quarantine: rows, step, where they are kept
        assert "6 row(s) quarantined" in listed and "ops.consolidation_quarantine" in listed, listed[:2000]
        held = quarantine.summary(conn, plan)
        assert [(d["step"], d["rows"]) for d in held] == [("copy__wagers__bets", len(realapp.UNSTORABLE_BETS))]
        assert sum(r["rows"] for r in held[0]["reasons"]) == 6

    run = dict(dag_id=DAG, run_id="manual__realapp", user="alice")
    params = {"backup_dir": str(tmp_path / "backup"), "report_dir": str(tmp_path / "report")}
    call_task(tasks.acquire_lease, dsn, **run)
    call_task(tasks.require_gate, dsn, phase="4D", **run)
    call_task(tasks.preflight, dsn, params=params, **run)
    request_id = call_task(tasks.open_request, dsn, **run)
    with db.connect(dsn) as conn:
        # the request states the quarantined rows per step; its digest covers them
        _, message, details = _latest(conn, "approval", "approval_request")
        assert "wagers.bets -> betting.wagers: 6 row(s) quarantined" in message, message
        assert [q["step"] for q in details["quarantine"]] == ["copy__wagers__bets"]
        steps = conn.execute("SELECT steps FROM ops.consolidation_approvals WHERE id = %s", (request_id,)).fetchone()[0]
        assert steps["copy__wagers__bets"]["quarantined"] == 6
        assert steps["copy__wagers__bets"]["quarantine_checksum"].startswith("6:")
        approvals.decide(conn, plan, request_id=request_id, decision="approve", by="owner", via="cli",
                         reason="6 unstorable bets stay in quarantine")
    # backup and drops through the phase functions the tasks call (the task bodies now also want the
    # Airflow HITL response of the wait_for_approval task, issue 11; the DAG test covers that path)
    from consolidation.phases import backup as backups, cleanup

    backups.take_backup(dsn, plan, tmp_path / "backup", run_id="manual__realapp", user="alice")
    with psycopg.connect(dsn) as conn:
        rows = backups.latest_backups(conn, plan, "manual__realapp")
        for schema in plan.legacy_schemas:
            cleanup.drop_schema_objects(conn, plan, schema, run_id="manual__realapp", user="alice",
                                        backup_row=rows[schema])
    call_task(tasks.gate, dsn, phase="4D", **run)
    call_task(tasks.report, dsn, params=params, **run)
    call_task(tasks.release_lease, dsn, **run)

    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('scraper', 'wagers')").fetchone()[0] == 0
        assert _latest(conn, "gate", "gate_4D")[0] == "success"
        # the quarantine outlives the legacy schemas: the rows, their reasons, their original values
        kept = {int(r[0]): r[1] for r in conn.execute(
            "SELECT original->>'bet_id', reason FROM ops.consolidation_quarantine WHERE step = 'copy__wagers__bets'")}
        assert set(kept) == set(realapp.UNSTORABLE_BETS)
        assert all(kept.values())
    # the application role writes to its targets after the cleanup, pre-existing ones included
    with psycopg.connect(dsn) as conn:
        conn.execute("SET ROLE realapp_writer")
        conn.execute("INSERT INTO betting.wagers (wager_id, game_id, stake, american_odds, placed_at) "
                     "VALUES (99001, 1, 5, -110, now())")  # existed before the plan
        run_id = conn.execute("INSERT INTO ingest.scrape_runs (started_at) VALUES (now()) RETURNING run_id").fetchone()[0]
        assert run_id > 40  # 4A created it; its sequence moved past the migrated ids, and the role may use it
        conn.execute("UPDATE betting.games SET status = 'final' WHERE source_game_ref = 'sbr-2024-0001'")
        conn.execute("RESET ROLE")
    # the backup holds them: restored into an empty database, wagers.bets has every legacy row
    from consolidation.phases import backup

    with psycopg.connect(dsn) as conn:
        archive = backup.latest_backups(conn, plan, "manual__realapp")["wagers"]["details"]
        assert archive["tables"]["wagers.bets"]["rows"] == realapp.LEGACY_ROWS["wagers.bets"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Quarantine (accounted for, not migrated)" in report
    assert "copy__wagers__bets" in report and "ops.consolidation_quarantine (step = 'copy__wagers__bets')" in report
    for reason in {r["reason"] for r in held[0]["reasons"]}:
        assert reason.split("\n")[0][:40] in report


def test_privileges_on_legacy_tables_follow_to_pre_existing_targets(make_db, realapp_plan):
    """4A grants every role's legacy privileges on the targets; the list of what is missing (the 4C
    gate's privileges_carried check) is empty after 4A and names role, privilege and target otherwise."""
    from consolidation.phases.objects import privileges

    dsn = make_db()
    realapp.build(dsn)
    with psycopg.connect(dsn) as conn:
        before = {(k, f"{s}.{n}", r, p) for k, s, n, r, p, _ in privileges.missing(conn, realapp_plan)}
        # the application could only read its consolidated tables before
        assert ("table", "betting.wagers", realapp.APP_ROLE, "INSERT") in before
        assert ("table", "betting.games", realapp.APP_ROLE, "UPDATE") in before
    engine_4a(dsn, realapp_plan)
    with psycopg.connect(dsn) as conn:
        assert privileges.missing(conn, realapp_plan) == []
        assert conn.execute("SELECT has_table_privilege(%s, 'betting.wagers', 'INSERT'), "
                            "has_sequence_privilege(%s, pg_get_serial_sequence('ingest.scrape_runs', 'run_id'), 'USAGE')",
                            (realapp.APP_ROLE, realapp.APP_ROLE)).fetchone() == (True, True)
        conn.execute("REVOKE INSERT ON betting.wagers FROM realapp_writer")
        assert [(k, s, n, r, p) for k, s, n, r, p, _ in privileges.missing(conn, realapp_plan)] == [
            ("table", "betting", "wagers", realapp.APP_ROLE, "INSERT")]


def test_foreign_key_onto_a_pre_existing_target_with_a_unique_index_is_carried(db_dsn):
    """The referenced target existed before the plan and is unique through a unique index (no
    constraint): the legacy foreign key is re-pointed, not refused as 'not unique'."""
    from consolidation.core.plan import parse_plan
    from consolidation.core.session import load_specs

    with psycopg.connect(db_dsn) as conn:
        conn.execute("""
            CREATE SCHEMA lg; CREATE SCHEMA cs;
            CREATE TABLE lg.parent (code text PRIMARY KEY, label text);
            CREATE TABLE lg.child (id integer PRIMARY KEY, parent_code text REFERENCES lg.parent (code));
            CREATE TABLE cs.parents (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, code text NOT NULL,
                                     label text, extra text);
            CREATE UNIQUE INDEX parents_code_ux ON cs.parents (code) INCLUDE (extra);""")
        plan = parse_plan({
            "consolidated_schemas": {"cs": "", "ops": ""}, "legacy_schemas": {"lg": {}},
            "tool": {"schema": "ops"},
            "steps": [{"source": "lg.parent", "action": "merge", "target": "cs.parents", "key": {"code": "code"},
                       "columns": {"label": "label"}, "enrich": ["label"]},
                      {"source": "lg.child", "action": "copy", "target": "cs.children"}]})
        _, specs = load_specs(conn, plan)
        child = specs["cs.children"]
        assert [(fk.ref_schema, fk.ref_table, fk.ref_columns) for fk in child.foreign_keys] == [
            ("cs", "parents", ["code"])], child.notes
        assert not any("not unique" in n for n in child.notes), child.notes


def test_realapp_4a_to_4d_through_the_dags(run_dag, core_api, make_db, monkeypatch, tmp_path):
    """The Done-when of issue 10: the second fixture runs 4A to 4D through the DAGs, lost = 0, the
    quarantined rows listed (approved by the approver through Airflow's REST API while 4D waits)."""
    from test_realapp import FOUND, account

    monkeypatch.setenv("CONSOLIDATION_PLAN", PLAN_FILE)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(realapp.PLAN_FILE.parents[2] / "dags"))
    assert not bag.import_errors, bag.import_errors
    dsn = make_db()
    realapp.build(dsn)
    for dag in ("phase4a_schema_extension", "phase4b_data_migration"):
        assert run_dag(dag, dsn, dags=bag.dags) == "success", dag
    with psycopg.connect(dsn) as conn:
        books = account(conn)  # the test's own accounting, before the legacy tables go
    assert {t: b["lost"] for t, b in books.items()} == {t: 0 for t in FOUND}, books
    assert run_dag("phase4c_service_updates", dsn, {"export_dir": str(tmp_path / "export")}, dags=bag.dags) == "success"
    from test_hitl_approval import Responder  # the operator is refused (403), the approver's CLI approves

    conf = {"approval_timeout_hours": 0.25, "backup_dir": str(tmp_path / "backup"), "report_dir": str(tmp_path / "report")}
    with Responder(*core_api, dsn) as r:
        state = run_dag("phase4d_legacy_cleanup", dsn, conf, dags=bag.dags)
    assert r.error is None, r.error
    assert r.cli.returncode == 0, r.cli.stderr
    assert state == "success"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('scraper', 'wagers')").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ops.consolidation_quarantine").fetchone()[0] == 6
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ops.consolidation_quarantine (step = 'copy__wagers__bets')" in report
    # the nightly after the cleanup, with no night between 4B and 4D: 4D recorded the baseline
    # itself, so every migrated row is still compared (none "not compared"), and passes
    from consolidation.core.plan import load_plan
    from consolidation.phases import nightly

    verdict = nightly.validate(dsn, load_plan(PLAN_FILE), run_id="nightly-after-4d", user="scheduler")
    assert verdict.passed, verdict.summary()
    compared = {f"{r['schema_name']}.{r['table_name']}" for r in verdict.rows if r["check_name"] == "migrated_rows_intact"}
    assert {"betting.wagers", "betting.games"} <= compared, compared
    assert "rows not compared" not in verdict.summary()
