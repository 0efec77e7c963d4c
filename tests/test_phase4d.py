"""Phase 4D against the real server: one full DAG run (approved by the approver with
`consolidation approve --user` through Airflow's REST API while the HITL task waits) whose
cleaned database several tests inspect - backups that restore to identical
checksums, the completion report - and the rollback DAG after it. Refusals (a failed 4C gate,
a stale fingerprint, a rejection, unplanned objects, late rows) go through the engine functions
and task bodies the DAG runs, on clones of the 4C stage.

Checksums here are computed test-side (table_md5), not by the engine.
"""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from consolidation.airflow import tasks
from consolidation.checks import gates as phases
from consolidation.core import ledger
from consolidation.phases import backup, cleanup

from conftest import REPO_ROOT, read_only, state_folder
from hitl_helpers import REASON, respond
from phase_helpers import EVERYTHING, PLAN, call_task, record_gate, snapshot, table_md5

DAG = "phase4d_legacy_cleanup"
FAST = {"approval_timeout_hours": 0.5}


def cli(*args: str, dsn: str):
    """`python -m consolidation ...` against `dsn`: a separate process, like a person at a shell
    while the DAG waits (usable from a thread and from module fixtures)."""
    env = dict(os.environ, CONSOLIDATION_DB_URL=dsn)
    return subprocess.run([sys.executable, "-m", "consolidation", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def request_rows(dsn):
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM operational.consolidation_approvals ORDER BY id")
        return [dict(zip([d.name for d in cur.description], r)) for r in cur.fetchall()]


def legacy_intact(dsn, before) -> None:
    assert snapshot(dsn, PLAN.legacy_schemas) == before
    with psycopg.connect(dsn) as conn:
        assert not ledger.rows(conn, PLAN, "phase = '4D' AND kind IN ('backup', 'ddl')")


def approvals_table(dsn) -> str | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass('operational.consolidation_approvals')").fetchone()[0]


# ------------------------------------------------------------------ the full run
@pytest.fixture(scope="module")
def cleaned(template_4c, make_session_db, clone_pool, run_dag, core_api, tmp_path_factory):
    """One full 4D run on a copy of the 4C stage, approved with the CLI through Airflow while it waits."""
    dsn = make_session_db(template=template_4c.name)
    before = snapshot(dsn, PLAN.legacy_schemas)
    targets_before = snapshot(dsn, PLAN.consolidated_schemas)
    out = tmp_path_factory.mktemp("4d")
    conf = FAST | {"backup_dir": str(out / "backup"), "report_dir": str(out / "report")}
    from test_hitl_approval import Responder  # the operator is refused, then the approver approves (HITL endpoint)

    with state_folder(out / "state"), Responder(*core_api, dsn) as decider:  # its own state folder (GX results)
        state = run_dag(DAG, dsn, conf)
    assert decider.error is None, decider.error
    assert decider.cli.returncode == 0, decider.cli.stderr
    with psycopg.connect(dsn) as conn:
        run_id = ledger.latest(conn, PLAN, phase="4D", kind="gate", name="gate_4D")["run_id"]
    for archive in (out / "backup").glob("*"):
        archive.chmod(0o444)  # the rollback's clones restore from them, read-only
    from conftest import dbname_of

    clone_pool.register(dbname_of(dsn))  # it no longer changes: tests get copies
    return {"dsn": dsn, "state": state, "before": before, "targets_before": targets_before, "out": out,
            "run_id": run_id, "operator_response": decider.operator}


def test_full_cleanup_drops_only_after_approval_and_backup(cleaned):
    assert cleaned["state"] == "success"
    dsn = cleaned["dsn"]
    with psycopg.connect(dsn) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
        for s, legacy in PLAN.legacy_schemas.items():
            assert (s in schemas) == (not legacy.drop_schema), s
        # public is kept (plan default) and empty
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone()[0] == 0
        # the approval: requested, waiting in Airflow's Required Actions, where the operator who
        # triggered the run is no respondent (the API refuses them); approved there by 'approver'
        # with a reason, verified, before the first backup
        operator = cleaned["operator_response"]
        assert "HTTP 403" in str(operator.failure) and "not a respondent" in str(operator.failure)
        req = request_rows(dsn)[-1]
        assert (req["status"], req["decided_by"], req["decided_via"], req["reason"]) == (
            "approved", "approver", "airflow", REASON)
        events = ledger.rows(conn, PLAN, "run_id = %s", (cleaned["run_id"],))
        order = [(r["kind"], r["name"]) for r in events]
        verified = order.index(("approval", "approval_verified"))  # the waiting task re-checked the data's fingerprint
        first_backup = next(i for i, (k, n) in enumerate(order) if k == "backup")
        first_drop = next(i for i, (k, _) in enumerate(order) if k == "ddl")
        approved_at = next(r["finished_at"] for r in ledger.rows(conn, PLAN, "kind = 'approval' AND name = 'approve'"))
        backup_rows = [r for r in events if r["kind"] == "backup"]
        assert all(r["started_at"] > approved_at for r in backup_rows)
        assert verified < first_backup < first_drop
        gates = {r["name"]: r["status"] for r in events if r["kind"] == "gate"}
        assert gates == {"reconcile_4D": "success", "gate_4D": "success"}
    # the consolidated tables are untouched by the drop, row for row
    assert snapshot(dsn, PLAN.consolidated_schemas) == cleaned["targets_before"]


def test_backup_archives_are_recorded_readable_and_complete(cleaned):
    dsn, before = cleaned["dsn"], cleaned["before"]
    with psycopg.connect(dsn) as conn:
        rows = backup.latest_backups(conn, PLAN, cleaned["run_id"])
    assert set(rows) == set(PLAN.legacy_schemas)
    for schema, row in rows.items():
        d = row["details"]
        path = Path(d["path"])
        assert path.parent == cleaned["out"] / "backup"  # the run's backup_dir param
        assert backup.sha256_of(path) == d["sha256"] and path.stat().st_size == d["bytes"]
        # checksums recorded per table = the test's own checksums before the cleanup (same row count)
        assert {t: v["rows"] for t, v in d["tables"].items()} == \
            {t: n for t, (_, n) in before.items() if t.startswith(schema + ".")}
    # the six test tables the plan deletes are in the public archive, with data
    entries = backup.toc(Path(rows["public"]["details"]["path"]), backup.pg_env(dsn))
    listed = {m.group(1) for line in entries if (m := re.search(r"TABLE DATA public (\S+) ", line))}
    deleted = {s.source_table for s in PLAN.steps if s.action == "delete"}
    assert len(deleted) == 6 and deleted <= listed
    manifest = json.loads((cleaned["out"] / "backup" / "manifest.json").read_text())
    assert {a["schema"]: a["sha256"] for a in manifest["archives"]} == {s: r["details"]["sha256"] for s, r in rows.items()}


def test_backup_restores_to_identical_checksums(cleaned, make_db):
    """The archives alone rebuild the legacy schemas in an empty database, equal to the fixture."""
    fresh = make_db()
    with psycopg.connect(cleaned["dsn"]) as conn:
        rows = backup.latest_backups(conn, PLAN, cleaned["run_id"])
    with psycopg.connect(fresh) as conn:
        ledger.ensure_tool_tables(conn, PLAN)
        conn.commit()
    backup.restore_schemas(fresh, PLAN, rows, run_id="restore-test", user="test")
    assert snapshot(fresh, PLAN.legacy_schemas) == cleaned["before"]
    with psycopg.connect(fresh) as conn:  # the cross-schema foreign key came back too
        fk = conn.execute("SELECT confrelid = 'public.game_outcomes'::regclass FROM pg_constraint WHERE contype = 'f' "
                          "AND conrelid = 'tracking.pre_game_recommendations'::regclass").fetchone()
        assert fk == (True,)


def test_report_lists_approval_gates_backups_and_is_self_contained(cleaned):
    folder = cleaned["out"] / "report"  # the run's report_dir param
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    for text in (md, page):
        assert "approver" in text and "reviewed the 4B and 4C gates and the DROP list" in text  # who and why
        for gate in ("gate_4A", "gate_4B", "reconcile_4D", "gate_4D"):
            assert gate in text
        assert "public.sbr_parsed_games" in text and "raw_data.sbr_parsed_games" in text
        assert "in the backup, dropped" in text  # the six test tables the plan deletes
        # the DROP statements the approver was shown, as shown (the schemas are gone by now)
        assert "DROP statements shown to the approver" in text
        assert 'DROP TABLE "public"."sbr_parsed_games" RESTRICT;' in html.unescape(text)
        assert 'DROP SCHEMA "splits" RESTRICT;' in html.unescape(text)
    with psycopg.connect(cleaned["dsn"]) as conn:
        for row in backup.latest_backups(conn, PLAN, cleaned["run_id"]).values():
            assert row["details"]["sha256"] in md and row["details"]["sha256"] in page
        rec = ledger.rows(conn, PLAN, "kind = 'report'")
        assert rec and rec[-1]["details"]["html"] == str(folder / "report.html")
    assert "<style>" in page
    assert not re.search(r"https?://", page)
    assert not re.search(r"<link\b|<script\b", page, re.I)


def test_report_cli_writes_the_same_report(cleaned, make_db, cli, tmp_path):
    from conftest import dbname_of

    dsn = make_db(template=dbname_of(cleaned["dsn"]))  # the command records the report in the ledger
    res = cli("report", "--out", str(tmp_path), dsn=dsn)
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").exists() and "gate_4D" in md and cleaned["run_id"] in md


def test_rollback_dag_after_cleanup_gives_back_the_pre_phase4_database(cleaned, fixture_template, make_db, run_dag):
    """phase4_rollback after a cleanup: the legacy schemas restored from the archives (each table
    equal to its backup checksum), then 4A/4B undone: the database equals the pre-Phase-4 fixture,
    table for table (the tool's own tables aside)."""
    from conftest import dbname_of

    dsn = make_db(template=dbname_of(cleaned["dsn"]))
    assert run_dag("phase4_rollback", dsn) == "success"
    fresh = make_db(template=fixture_template)
    assert snapshot(dsn, EVERYTHING) == snapshot(fresh, EVERYTHING)
    with psycopg.connect(dsn) as conn:
        restores = ledger.rows(conn, PLAN, "kind = 'backup' AND name LIKE 'restore:%%'")
        assert {r["target"]: r["status"] for r in restores} == {s: "success" for s in PLAN.legacy_schemas}
        backed = backup.latest_backups(conn, PLAN, cleaned["run_id"])
        for r in restores:  # checksums recorded after the restore = those recorded at backup time
            assert r["details"]["tables"] == backed[r["target"]]["details"]["tables"]
        row = ledger.rows(conn, PLAN, "kind = 'rollback'")[-1]
        assert row["status"] == "success" and row["run_id"].startswith("manual__")


def test_restore_only_keeps_the_consolidated_tables(cleaned, make_db):
    """The rollback's tasks with restore_only=true: legacy schemas back, equal to their backup,
    consolidated tables kept, 4A/4B not undone."""
    from conftest import dbname_of

    dsn = make_db(template=dbname_of(cleaned["dsn"]))
    params = {"restore_only": True}
    run = {"dag_id": "phase4_rollback", "run_id": "manual__restore_only", "params": params}
    assessed = call_task(tasks.assess, dsn, **run)
    assert set(assessed["needs_restore"]) == set(PLAN.legacy_schemas) and assessed["ddl"] > 0
    call_task(tasks.restore_legacy, dsn, **run)
    assert call_task(tasks.undo_migration, dsn, **run) == {"skipped": True}
    assert snapshot(dsn, PLAN.legacy_schemas) == cleaned["before"]
    assert snapshot(dsn, PLAN.consolidated_schemas) == cleaned["targets_before"]
    with psycopg.connect(dsn) as conn:
        restores = ledger.rows(conn, PLAN, "kind = 'backup' AND name LIKE 'restore:%%'")
        assert {r["target"]: r["status"] for r in restores} == {s: "success" for s in PLAN.legacy_schemas}
        backed = backup.latest_backups(conn, PLAN, cleaned["run_id"])
        for r in restores:
            assert r["details"]["tables"] == backed[r["target"]]["details"]["tables"]
        assert not ledger.rows(conn, PLAN, "kind = 'rollback'")  # 4A/4B not undone


# ------------------------------------------------------------------ refusals
def test_4d_refuses_unless_the_latest_4c_gate_passed(db_4c):
    record_gate(db_4c, "4C", "failed", run_id="r-4c-failed", message="gate 4C FAILED: 1 of 48 checks")
    before = snapshot(db_4c, PLAN.legacy_schemas)
    with pytest.raises(phases.PhaseRefused, match=r"latest 4C gate \(run r-4c-failed"):
        call_task(tasks.require_gate, db_4c, dag_id=DAG, phase="4D")  # the DAG's first task
    legacy_intact(db_4c, before)
    with psycopg.connect(db_4c) as conn:
        # refused before the inventory (the run's lease, issue 13, is all it left)
        assert not ledger.rows(conn, PLAN, "phase = '4D' AND name <> 'lease'")
    assert approvals_table(db_4c) is None


def test_stale_fingerprint_refuses_and_nothing_is_backed_up(db_4c):
    """The data changes after the request; the approval Airflow records on the old data is
    refused by the waiting task, and the backup task refuses the request too."""
    call_task(tasks.acquire_lease, db_4c, dag_id=DAG, run_id="manual__stale")  # as the DAG's first task does
    request_id = call_task(tasks.open_request, db_4c, dag_id=DAG, run_id="manual__stale")
    with psycopg.connect(db_4c) as conn:
        conn.execute("UPDATE backtesting.threshold_configurations SET threshold = threshold + 1 WHERE id = 3")
    out = respond(db_4c, PLAN, request_id, run_id="manual__stale")
    assert "copy__backtesting__threshold_configurations" in str(out.failure), out.failure
    req = request_rows(db_4c)[-1]
    assert req["status"] == "refused" and "copy__backtesting__threshold_configurations" in req["refusal"]
    with pytest.raises(RuntimeError, match="nothing is backed up or dropped"):
        call_task(tasks.backup, db_4c, dag_id=DAG, run_id="manual__stale", xcom={"open_request": request_id})
    with psycopg.connect(db_4c) as conn:
        assert conn.execute("SELECT count(*) FROM backtesting.threshold_configurations").fetchone()[0] == 12
        assert not ledger.rows(conn, PLAN, "phase = '4D' AND kind IN ('backup', 'ddl')")


def test_unplanned_table_blocks_only_its_schemas_drop_and_survives(db_4c):
    """An unplanned table is a warning: the preflight goes on, the approval preview shows that schema
    blocked with what to add to the plan, and its drop is refused (test_object_appearing_after...)."""
    from consolidation.phases.hitl.preview import drop_preview

    with psycopg.connect(db_4c) as conn:
        conn.execute("CREATE TABLE backtesting.keep_me (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO backtesting.keep_me VALUES (1, 'not in the plan')")
    before = snapshot(db_4c, PLAN.legacy_schemas)
    call_task(tasks.acquire_lease, db_4c, dag_id=DAG)
    call_task(tasks.preflight, db_4c, dag_id=DAG, params=FAST)
    legacy_intact(db_4c, before)
    with psycopg.connect(db_4c) as conn:
        assert conn.execute("SELECT note FROM backtesting.keep_me").fetchall() == [("not in the plan",)]
        inv = ledger.rows(conn, PLAN, "phase = '4D' AND name = 'inventory_4D'")[-1]
        assert inv["status"] == "success"
        assert [f["severity"] for f in inv["details"]["findings"] if f["object"] == "backtesting.keep_me"] == ["warning"]
        assert drop_preview(conn, PLAN)["backtesting"]["blockers"] == [
            "backtesting.keep_me (table) is not in the plan: add `objects: - {name: backtesting.keep_me, "
            "drop: reason}` or `recreate: schema`"]


def test_object_appearing_after_the_check_stops_the_drop(db_4c, tmp_path):
    """Between the backup and the drop: an unplanned table in the schema, then an unplanned view
    elsewhere reading a legacy table; each stops that schema's drop, named, nothing dropped."""
    dsn = db_4c
    with pytest.raises(backup.BackupFailed, match="changed since the cleanup was approved"):
        backup.take_backup(dsn, PLAN, tmp_path / "refused", run_id="race", user="test", expected_fingerprint="0" * 64)
    assert not list((tmp_path / "refused").glob("*.dump"))  # nothing dumped for data nobody approved
    backup.take_backup(dsn, PLAN, tmp_path, run_id="race", user="test")
    with psycopg.connect(dsn) as conn:
        row = backup.latest_backups(conn, PLAN, "race")["splits"]
        conn.execute("CREATE TABLE splits.newcomer (id int)")
        conn.commit()
        with pytest.raises(cleanup.CleanupBlocked, match="splits.newcomer"):
            cleanup.drop_schema_objects(conn, PLAN, "splits", run_id="race", user="test", backup_row=row)
        conn.execute("DROP TABLE splits.newcomer")
        conn.execute("CREATE VIEW analytics.games_report AS SELECT id, home FROM splits.games")
        conn.commit()
        with pytest.raises(cleanup.CleanupBlocked, match="analytics.games_report.*depends on splits.games"):
            cleanup.drop_schema_objects(conn, PLAN, "splits", run_id="race", user="test", backup_row=row)
        assert conn.execute("SELECT count(*) FROM splits.games").fetchone()[0] == 252
        assert conn.execute("SELECT count(*) FROM analytics.games_report").fetchone()[0] == 252
        # and a row written after the backup stops it too: the archive would not hold it
        conn.execute("DROP VIEW analytics.games_report")
        conn.execute("INSERT INTO splits.sharp_actions (game_id, market) VALUES ('late', 'ml')")
        conn.commit()
        with pytest.raises(cleanup.CleanupBlocked, match="changed since the backup.*splits.sharp_actions"):
            cleanup.drop_schema_objects(conn, PLAN, "splits", run_id="race", user="test", backup_row=row)
        assert not ledger.rows(conn, PLAN, "phase = '4D' AND kind = 'ddl'")
        assert conn.execute("SELECT count(*) FROM splits.sharp_actions").fetchone()[0] == 1


def test_public_is_kept_unless_the_plan_drops_it(template_4c, make_db, tmp_path):
    """legacy_schemas.public.drop_schema: false (default) keeps public, emptied; true drops it."""
    import yaml
    from consolidation.core import config
    from consolidation.core.plan import parse_plan

    raw = yaml.safe_load(open(config.DEFAULT_PLAN))
    raw["legacy_schemas"]["public"]["drop_schema"] = True
    dropping = parse_plan(raw)
    targets = snapshot(read_only(template_4c.dsn), PLAN.consolidated_schemas)
    for plan, kept in ((PLAN, True), (dropping, False)):
        dsn = make_db(template=template_4c.name)
        backup.take_backup(dsn, plan, tmp_path / str(kept), run_id="pub", user="test")
        with psycopg.connect(dsn) as conn:
            rows = backup.latest_backups(conn, plan, "pub")
            for schema in ("tracking", "public"):  # tracking.pre_game_recommendations -> public.game_outcomes
                cleanup.drop_schema_objects(conn, plan, schema, run_id="pub", user="test", backup_row=rows[schema])
            exists = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'").fetchone()[0] == 1
            assert exists is kept
            if kept:
                assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
                                    ).fetchone()[0] == 0
            assert conn.execute("SELECT to_regnamespace('tracking')").fetchone()[0] is None
        assert snapshot(dsn, PLAN.consolidated_schemas) == targets


LATE_ROW = ("INSERT INTO tracking.strategy_integration_log (strategy_name, action, logged_at) "
            "VALUES ('late_writer', 'still writing to the old name', now())")


def test_late_row_blocks_and_is_named(db_4c):
    with psycopg.connect(db_4c) as conn:
        conn.execute(LATE_ROW)
    before = snapshot(db_4c, PLAN.legacy_schemas)
    call_task(tasks.acquire_lease, db_4c, dag_id=DAG)
    with pytest.raises(cleanup.CleanupBlocked, match="resync_late_rows=true"):
        call_task(tasks.preflight, db_4c, dag_id=DAG, params=FAST)  # resync_late_rows defaults to false
    legacy_intact(db_4c, before)
    with psycopg.connect(db_4c) as conn:
        late = ledger.rows(conn, PLAN, "phase = '4D' AND name = 'late_rows'")[-1]
        assert late["status"] == "failed"
        assert "tracking.strategy_integration_log: 1 row(s) not in operational.strategy_integration_log" in late["message"]
        assert [r["step"] for r in late["details"]["late"]] == ["copy__tracking__strategy_integration_log"]
        assert conn.execute("SELECT count(*) FROM operational.strategy_integration_log").fetchone()[0] == 138
    assert approvals_table(db_4c) is None


def test_late_row_resynced_then_rejection_ends_the_wait(db_4c):
    """resync_late_rows=true: the 4B step runs again, the reconciliation is re-proven, and the
    request's fingerprint is the re-synced data's. Then the approver rejects in Airflow: the
    waiting task fails with the reason (long before any timeout) and the backup refuses; nothing
    is backed up or dropped."""
    from consolidation.checks.reconcile import digest
    from consolidation.phases.approvals import fingerprint

    with psycopg.connect(db_4c) as conn:
        conn.execute(LATE_ROW)
    before = snapshot(db_4c, PLAN.legacy_schemas)
    run = {"dag_id": DAG, "run_id": "manual__resync", "params": FAST | {"resync_late_rows": True}}
    call_task(tasks.acquire_lease, db_4c, **run)
    out = call_task(tasks.preflight, db_4c, **run)
    assert out["resynced"] == ["copy__tracking__strategy_integration_log"]
    request_id = call_task(tasks.open_request, db_4c, **run)
    assert request_rows(db_4c)[-1]["status"] == "pending"  # the waiting task waits
    out = respond(db_4c, PLAN, request_id, option="Reject", reason="the services team is not ready",
                  run_id="manual__resync")
    assert re.search("rejected by approver.*the services team is not ready", str(out.failure)), out.failure
    with pytest.raises(RuntimeError, match="nothing is backed up or dropped"):
        call_task(tasks.backup, db_4c, xcom={"open_request": request_id}, **run)
    legacy_intact(db_4c, before)
    with psycopg.connect(db_4c) as conn:
        assert table_md5(conn, "tracking.strategy_integration_log") == table_md5(conn, "operational.strategy_integration_log")
        step = ledger.rows(conn, PLAN, "phase = '4B' AND kind = 'step' AND name = 'copy__tracking__strategy_integration_log'")[-1]
        assert step["status"] == "success" and step["run_id"] == "manual__resync" and step["rows_inserted"] == 1
        assert ledger.latest(conn, PLAN, phase="4D", kind="gate", name="reconcile_4D")["status"] == "success"
        req = request_rows(db_4c)[-1]
        assert req["fingerprint"] == fingerprint(PLAN, digest(conn, PLAN))
        assert (req["status"], req["decided_by"], req["reason"]) == ("rejected", "approver", "the services team is not ready")
        states = dict(conn.execute(
            "SELECT name, status FROM operational.consolidation_ledger WHERE run_id = %s", (req["run_id"],)).fetchall())
        assert "gate_4D" not in states and "report" not in states


def test_the_dag_waits_for_the_approval_before_anything_destructive(dag_bag):
    """What makes a refusal above end the run: every destructive task is downstream of the approval
    and runs only when everything before it succeeded (default trigger rule), without retries."""
    dag = dag_bag.dags[DAG]
    assert dag.get_task("require_4C_gate").upstream_task_ids == {"acquire_lease"}  # the lease first (issue 13)
    assert dag.get_task("wait_for_approval").upstream_task_ids == {"open_request"}
    from consolidation.airflow.approval import CleanupApproval

    assert isinstance(dag.get_task("wait_for_approval"), CleanupApproval)  # parked in Required Actions
    destructive = [t for t in dag.tasks if t.task_id == "backup" or t.task_id.endswith(".drop")]
    assert len(destructive) == 1 + len(PLAN.legacy_schemas)
    for t in destructive:
        assert "wait_for_approval" in t.get_flat_relative_ids(upstream=True), t.task_id
        assert t.trigger_rule == "all_success" and t.retries == 0, t.task_id
    for t in dag.tasks:
        if t.task_id == "release_lease":  # the lease's teardown: runs after a failure too, decides nothing
            assert t.is_teardown and t.trigger_rule == "all_done_setup_success"
            continue
        assert t.trigger_rule == "all_success", t.task_id
