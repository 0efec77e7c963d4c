"""The nightly validation DAG, its history, the notifier, the CLI and the UI plugin, against
clones of the 4B stage. Two DAG runs (a passing night, then a failing one that notifies); the
other checks call the engine (nightly.validate) and the CLI in-process.

What the owner of the data cares about: a passing night proves keys, foreign keys, registry,
row counts and freshness against the data; a row that silently disappears fails the night
(and the next ones) naming the table, the expectation and the count, until it is restored
or the ledger records why; a duplicated key or a dangling registry entry fails it; someone
is told when a notifier is configured; and the result is one click away in the Airflow UI,
readable offline.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from airflow.sdk import BaseNotifier

from consolidation.core import ledger
from consolidation.phases import nightly
from consolidation.core.plan import load_plan

from conftest import REPO_ROOT, task_states

PLAN = load_plan()
DAG_ID = nightly.DAG_ID
HIST = sql.Identifier(*PLAN.tool_table("validation_history"))


class FileNotifier(BaseNotifier):
    """A real Airflow notifier (templated, called by on_failure_callback) that appends to a file."""

    template_fields = ("message",)

    def __init__(self, path: str, message: str):
        super().__init__()
        self.path = path
        self.message = message

    def notify(self, context):
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(f"{context.get('run_id')}\n{self.message}\n----\n")


@pytest.fixture
def db(db_4b) -> str:
    """A clone of the 4B stage (migrated through 4A and 4B)."""
    return db_4b


@pytest.fixture
def no_notifier(monkeypatch):
    monkeypatch.delenv("CONSOLIDATION_NOTIFIER", raising=False)
    monkeypatch.delenv("CONSOLIDATION_NOTIFIER_KWARGS", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_CONSOLIDATION_NOTIFIER", "")


def last_run() -> tuple[str, dict[str, str]]:
    """(run_id, {task_id: state}) of the latest run of the nightly DAG, from Airflow's metadata."""
    return task_states(DAG_ID)


def history(dsn: str, run_id: str) -> dict[tuple[str, str, str | None], dict]:
    """{(table, check, columns): row} of one run (table = schema.table, or the schema)."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql.SQL("SELECT * FROM {} WHERE run_id = %s").format(HIST), (run_id,))
        cols = [d.name for d in cur.description]
        out = {}
        for r in cur.fetchall():
            row = dict(zip(cols, r))
            table = f"{row['schema_name']}.{row['table_name']}" if row["table_name"] else row["schema_name"]
            key = (table, row["check_name"], row["column_names"])
            assert key not in out, f"check recorded twice: {key}"
            out[key] = row
        return out


def counts(dsn: str, tables) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*t.split(".")))).fetchone()[0]
                for t in tables}


def result_json(run_id: str) -> dict:
    return json.loads((nightly.nightly_dir() / nightly.safe_run(run_id) / "result.json").read_text())


# ---------------------------------------------------------------------------- the DAG
def test_dag_shape_schedule_and_cheap_import(dag_bag, monkeypatch):
    from airflow.sdk import CronTriggerTimetable

    from consolidation.airflow.notify import NightlyFailureNotifier

    dag = dag_bag.dags[DAG_ID]
    assert isinstance(dag.timetable, CronTriggerTimetable)
    assert dag.timetable.expression == "0 3 * * *" and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.task_group.children) == set(PLAN.consolidated_schemas) | {"prepare", "report"}
    for schema in PLAN.consolidated_schemas:
        assert dag.get_task(f"{schema}.validate").upstream_task_ids == {"prepare"}
    assert dag.get_task("report").trigger_rule == "all_done"
    assert dag.get_task("report").upstream_task_ids == {f"{s}.validate" for s in PLAN.consolidated_schemas}
    callbacks = dag.on_failure_callback if isinstance(dag.on_failure_callback, list) else [dag.on_failure_callback]
    assert any(isinstance(c, NightlyFailureNotifier) for c in callbacks)

    # cron and time zone come from the environment at parse time; parsing touches no database
    # and imports neither Great Expectations nor a notifier provider
    dag_file = REPO_ROOT / "dags" / "consolidation_nightly_validation.py"
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('nightly_dag', {str(dag_file)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "t = m.dag.timetable\n"
        "print(t.expression, t.timezone, m.dag.start_date.isoformat(), 'great_expectations' in sys.modules)\n")
    env = {"CONSOLIDATION_NIGHTLY_CRON": "30 1 * * 1-5", "CONSOLIDATION_TIMEZONE": "Europe/Berlin",
           "CONSOLIDATION_DB_URL": "postgresql://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    # start_date: midnight 2026-01-01 in Berlin (Airflow stores it in UTC)
    assert line == "30 1 * * 1-5 Europe/Berlin 2025-12-31T23:00:00+00:00 False", line
    for name, value in (("CONSOLIDATION_TIMEZONE", "Mars/Olympus"), ("CONSOLIDATION_NIGHTLY_CRON", "every night")):
        monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location("nightly_dag_probe", dag_file)
        with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")):
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        monkeypatch.delenv(name)


def test_a_night_passes_then_a_silent_loss_fails_every_night_until_the_ledger_says_why(
        db, run_dag, cli, tmp_path, monkeypatch, no_notifier):
    targets = nightly.migrated_tables(PLAN)
    # -- night 1: everything holds; counts are stored as the baseline
    assert run_dag(DAG_ID, db) == "success"
    run1, states = last_run()
    assert set(states.values()) == {"success"}
    h1 = history(db, run1)
    assert h1 and all(r["passed"] for r in h1.values())
    actual = counts(db, [t for t in targets if t != "operational.recent_config_changes"])
    for table, n in actual.items():  # every migrated table, its true count stored
        row = h1[(table, nightly.COUNT_CHECK, None)]
        assert row["rows"] == n and row["details"]["baseline"] is None, table
    with psycopg.connect(db) as conn:  # every table with a primary key is key-checked, on that key
        pks = conn.execute(
            "SELECT n.nspname || '.' || c.relname, string_agg(a.attname, ',' ORDER BY k.ord) "
            "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            "WHERE con.contype = 'p' AND n.nspname = ANY(%s) AND c.relname NOT LIKE 'consolidation\\_%%' "
            "GROUP BY 1", (list(PLAN.consolidated_schemas),)).fetchall()
        fks = conn.execute("SELECT count(*) FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace "
                           "WHERE con.contype = 'f' AND n.nspname = ANY(%s)", (list(PLAN.consolidated_schemas),)).fetchone()[0]
    assert len(pks) >= 25
    for table, key in pks:
        assert h1[(table, "key_unique", key)]["passed"], table
        assert h1[(table, "key_not_null", key)]["passed"], table
    assert sum(1 for k in h1 if k[1] == "foreign_key_resolves") == fks >= 6
    fresh = h1[("raw_data.sbr_raw_html", "freshness", "fetched_at")]
    assert fresh["passed"] and fresh["expectation"] == "unexpected_rows_expectation"
    page = (nightly.nightly_dir() / nightly.safe_run(run1) / "index.html").read_text()
    assert "PASSED" in page and "raw_data" in page
    with psycopg.connect(db) as conn:
        verdict = ledger.rows(conn, PLAN, "phase = 'nightly' AND kind = 'gate'")
    assert [(v["run_id"], v["status"]) for v in verdict] == [(run1, "success")]

    # -- one row disappears between two nights; a notifier is configured
    with psycopg.connect(db) as conn:
        gone = conn.execute("DELETE FROM raw_data.sbr_parsed_games WHERE id = "
                            "(SELECT max(id) FROM raw_data.sbr_parsed_games) RETURNING id").fetchone()
    assert gone
    sent = tmp_path / "sent.txt"
    monkeypatch.setenv("CONSOLIDATION_NOTIFIER", f"{FileNotifier.__module__}.FileNotifier")
    monkeypatch.setenv("CONSOLIDATION_NOTIFIER_KWARGS", json.dumps(
        {"path": str(sent), "message": "NIGHTLY FAILED: {{ consolidation_summary }} (see {{ consolidation_page }})"}))
    assert run_dag(DAG_ID, db) == "failed"
    run2, states = last_run()
    assert states["raw_data.validate"] == "failed" and states["report"] == "failed"
    assert {states[f"{s}.validate"] for s in PLAN.consolidated_schemas if s != "raw_data"} == {"success"}
    h2 = history(db, run2)
    failed = {k: r for k, r in h2.items() if not r["passed"]}
    # the count, and the row by its key (phases.validation.migrated_rows: the legacy row is not in the target)
    assert sorted(failed) == [("raw_data.sbr_parsed_games", "migrated_rows_intact", "id"),
                              ("raw_data.sbr_parsed_games", nightly.COUNT_CHECK, None)]
    assert failed[("raw_data.sbr_parsed_games", "migrated_rows_intact", "id")]["details"]["sample"] == [
        {"step": "copy__public__sbr_parsed_games", "row_key": f'{{"id": {gone[0]}}}', "problem": "missing from the target"}]
    row = failed[("raw_data.sbr_parsed_games", nightly.COUNT_CHECK, None)]
    assert row["rows"] == actual["raw_data.sbr_parsed_games"] - 1
    assert row["details"]["sample"][0]["current_rows"] == actual["raw_data.sbr_parsed_games"] - 1
    assert row["details"]["sample"][0]["baseline_rows"] == actual["raw_data.sbr_parsed_games"]
    assert row["details"]["sample"][0]["baseline_run"] == run1
    for table in actual:  # every table compared with night 1's stored count
        assert h2[(table, nightly.COUNT_CHECK, None)]["details"]["baseline"]["run_id"] == run1, table
    summary = result_json(run2)["summary"]
    n = actual["raw_data.sbr_parsed_games"]
    assert "raw_data.sbr_parsed_games" in summary and "rows_not_dropped" in summary
    assert "unexpected_rows_expectation" in summary and f"observed {n - 1} rows, {n} at" in summary
    text = sent.read_text()
    assert text.count("----") == 1 and text.startswith(run2)
    assert f"NIGHTLY FAILED: {summary}" in text and f"/consolidation/validation/{nightly.safe_run(run2)}" in text
    page = (nightly.nightly_dir() / nightly.safe_run(run2) / "index.html").read_text()
    assert "FAILED" in page and "sbr_parsed_games" in page

    # -- the CLI runs the same checks: still failing (the baseline is the last PASSING count)
    out = cli("validate", "--schema", "raw_data", dsn=db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"raw_data\s+sbr_parsed_games\s+rows_not_dropped\s+FAILED\s+1\s+%d" % (n - 1), out.stdout), out.stdout
    assert f"{n} at the last passing validation (run {run1}" in out.stdout

    # -- a human records why; the next validation passes and makes the new count the baseline
    out = cli("validate", "--accept-drop", "raw_data.sbr_parsed_games", dsn=db)
    assert out.returncode == 2 and "--reason" in out.stderr
    out = cli("validate", "--accept-drop", "raw_data.sbr_parsed_games", "--reason", "duplicate scrape removed",
                  dsn=db)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(db) as conn:
        accepted = ledger.rows(conn, PLAN, "phase = 'nightly' AND kind = 'approval'")
    assert [(a["target"], a["message"], a["details"]["min_rows"]) for a in accepted] == \
        [("raw_data.sbr_parsed_games", "duplicate scrape removed", n - 1)]
    verdict = nightly.validate(db, PLAN, run_id="after-acceptance", user="test", schemas=["raw_data"])
    assert verdict.passed, verdict.summary()

    # -- the acceptance covered that drop, not the next one
    with psycopg.connect(db) as conn:
        conn.execute("DELETE FROM raw_data.sbr_parsed_games WHERE id = (SELECT max(id) FROM raw_data.sbr_parsed_games)")
    verdict = nightly.validate(db, PLAN, run_id="second-drop", user="test", schemas=["raw_data"])
    assert f"observed {n - 2} rows, {n - 1} at the last passing validation (run after-acceptance" in verdict.summary()


def test_duplicated_key_fails_naming_table_and_key_and_nobody_is_notified_without_configuration(
        db, dag_bag, tmp_path, no_notifier):
    from consolidation.airflow.notify import NightlyFailureNotifier

    with psycopg.connect(db) as conn:
        conn.execute("ALTER TABLE operational.strategy_integration_log DROP CONSTRAINT strategy_integration_log_pkey")
        dup = conn.execute("INSERT INTO operational.strategy_integration_log "
                           "SELECT * FROM operational.strategy_integration_log WHERE id = 7 RETURNING id").fetchone()
    assert dup == (7,)
    run_id = "manual__duplicated"
    verdict = nightly.validate(db, PLAN, run_id=run_id, user="test")
    assert not verdict.passed
    failed = {k: r for k, r in history(db, run_id).items() if not r["passed"]}
    # no primary key any more: the key comes from the plan (first night), and is checked
    assert list(failed) == [("operational.strategy_integration_log", "key_unique", "id")]
    row = failed[("operational.strategy_integration_log", "key_unique", "id")]
    assert row["expectation"] == "expect_column_values_to_be_unique"
    assert row["observed"] == 2 and row["details"]["sample"] == [7, 7] and row["details"]["key_source"] == "plan"
    summary = result_json(run_id)["summary"]
    assert "operational.strategy_integration_log: key_unique on id (expect_column_values_to_be_unique): " \
           "observed 2 rows with a duplicated key" in summary
    # the DAG's failure callback, with nothing configured: nothing is sent, and it does not raise
    callbacks = dag_bag.dags[DAG_ID].on_failure_callback
    callback = next(c for c in (callbacks if isinstance(callbacks, list) else [callbacks])
                    if isinstance(c, NightlyFailureNotifier))
    assert callback({"run_id": run_id, "dag": dag_bag.dags[DAG_ID]}) is None
    assert not list(tmp_path.iterdir())  # nothing configured: nothing sent


def test_broken_registry_entry_fails_and_an_unreadable_registry_is_not_a_pass(db):
    plan = PLAN
    reg = sql.Identifier(*plan.tool_table("registry"))
    with psycopg.connect(db) as conn:
        try:  # the 4C registry, through its own API when it is there
            from consolidation.phases import registry

            registry.ensure_registry(conn, plan)
            registry.upsert(conn, plan, registry.planned_entries(conn, plan), run_id="test-4c", user="test")
            conn.execute(sql.SQL("UPDATE {} SET physical_table = 'no_such_table' "
                                 "WHERE logical_name = 'splits.games'").format(reg))
            entry = "splits.games -> core_betting.no_such_table"
        except ImportError:
            conn.execute(sql.SQL("CREATE TABLE {} (logical_name text PRIMARY KEY, physical_schema text, "
                                 "physical_table text)").format(reg))
            for s in plan.migrating_steps():
                conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(reg),
                             (s.source, s.target_schema, "no_such_table" if s.source == "splits.games" else s.target_table))
            entry = "splits.games -> core_betting.no_such_table"
        conn.commit()
    verdict = nightly.validate(db, plan, run_id="t-registry-1", user="test", schemas=["operational"])
    assert not verdict.passed
    assert [(r["table_name"], r["check_name"], r["observed"]) for r in verdict.rows if not r["passed"]] == \
        [("consolidation_registry", "registry_resolves", 1)]
    assert f"{entry}: relation does not exist" in verdict.summary()

    with psycopg.connect(db) as conn:  # repaired: passes
        conn.execute(sql.SQL("UPDATE {} SET physical_table = 'supplementary_games' "
                             "WHERE logical_name = 'splits.games'").format(reg))
    assert nightly.validate(db, plan, run_id="t-registry-2", user="test", schemas=["operational"]).passed

    with psycopg.connect(db) as conn:  # columns nobody understands: fails, saying which columns it has
        conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN physical_table TO where_it_went").format(reg))
    verdict = nightly.validate(db, plan, run_id="t-registry-3", user="test", schemas=["operational"])
    assert not verdict.passed and "no column naming the target relation" in verdict.summary()
    assert "where_it_went" in verdict.summary()


def test_freshness_counts_from_the_migration_and_fails_when_nothing_new_arrives(db):
    plan = PLAN
    assert nightly.validate(db, plan, run_id="t-fresh-1", user="test", schemas=["raw_data"]).passed
    with psycopg.connect(db) as conn:  # as if 4B had run 40 days ago, and nothing arrived since
        conn.execute(sql.SQL("UPDATE {} SET started_at = started_at - interval '40 days', "
                             "finished_at = finished_at - interval '40 days' WHERE phase = '4B' AND kind = 'step'")
                     .format(ledger.tool_ident(plan, "ledger")))
    verdict = nightly.validate(db, plan, run_id="t-fresh-2", user="test", schemas=["raw_data"])
    failed = [r for r in verdict.rows if not r["passed"]]
    assert [(r["table_name"], r["check_name"], r["column_names"]) for r in failed] == \
        [("sbr_raw_html", "freshness", "fetched_at")]
    assert "raw_data.sbr_raw_html: freshness on fetched_at" in verdict.summary()
    assert "> 720 h" in verdict.summary()
    with psycopg.connect(db) as conn:  # new data arrives in the consolidated table
        conn.execute("INSERT INTO raw_data.sbr_raw_html (url, html, status_code, fetched_at) "
                     "VALUES ('https://example.invalid/x', '<html></html>', 200, now())")
    assert nightly.validate(db, plan, run_id="t-fresh-3", user="test", schemas=["raw_data"]).passed


def test_after_4d_dropped_the_legacy_tables_the_night_still_checks_every_key(db):
    """The checks come from the catalog and the history, not from the legacy sources (gone after 4D)."""
    plan = PLAN
    assert nightly.validate(db, plan, run_id="t-4d-1", user="test").passed
    with psycopg.connect(db) as conn:
        for schema, settings in plan.legacy_schemas.items():
            if settings.drop_schema:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
            else:
                for step in plan.steps_for_schema(schema):
                    conn.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                        sql.SQL("VIEW" if step.object == "view" else "TABLE"),
                        sql.Identifier(step.source_schema, step.source_table)))
        conn.execute("ALTER TABLE operational.threshold_configurations DROP CONSTRAINT threshold_configurations_pkey")
        conn.execute("INSERT INTO operational.threshold_configurations "
                     "SELECT * FROM operational.threshold_configurations WHERE id = 3")
    verdict = nightly.validate(db, plan, run_id="t-4d-2", user="test")
    failed = [r for r in verdict.rows if not r["passed"]]
    assert [(r["table_name"], r["check_name"], r["details"]["key_source"], r["observed"]) for r in failed] == \
        [("threshold_configurations", "key_unique", "remembered", 2)]
    checked = {(r["schema_name"], r["table_name"]) for r in verdict.rows}
    with psycopg.connect(db) as conn:
        before = nightly.run_rows(conn, plan, "t-4d-1")
    assert len(checked) >= 30 and len(verdict.rows) == len(before)


# ---------------------------------------------------------------------------- the UI plugin
OFFLINE_VIOLATIONS = re.compile(
    r"""(?:\b(?:href|src)\s*=\s*["']?\s*(?:https?:)?//)|(?:url\(\s*["']?\s*(?:https?:)?//)|(?:@import\s+["']?(?:https?:)?//)""",
    re.IGNORECASE)


def test_ui_plugin_serves_the_latest_validation_and_report_offline(db):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import consolidation_ui
    from consolidation.core import config

    unreferenced = ("DELETE FROM core_betting.game_outcomes WHERE id = (SELECT max(id) FROM core_betting.game_outcomes g "
                    "WHERE NOT EXISTS (SELECT 1 FROM operational.pre_game_recommendations p WHERE p.game_outcome_id = g.id))")
    assert nightly.validate(db, PLAN, run_id="ui-run-1", user="test", schemas=["core_betting"]).passed
    with psycopg.connect(db) as conn:
        conn.execute(unreferenced)
    verdict = nightly.validate(db, PLAN, run_id="ui-run-<2>", user="test", schemas=["core_betting"])
    assert [(r["table_name"], r["check_name"]) for r in verdict.rows if not r["passed"]] == [
        ("game_outcomes", "migrated_rows_intact"), ("game_outcomes", "rows_not_dropped")]

    app = consolidation_ui.create_app()
    # Signed-out callers are refused (real Airflow security dependency, no token)
    assert TestClient(app).get("/validation/latest").status_code == 401
    app.dependency_overrides[consolidation_ui.require_reader] = lambda: None
    client = TestClient(app)

    latest = client.get("/validation/latest")
    assert latest.status_code == 200 and latest.headers["content-type"].startswith("text/html")
    assert "ui-run-&lt;2&gt;" in latest.text and "FAILED" in latest.text  # escaped, the newest run
    assert "default-src 'self'" in latest.headers["content-security-policy"]
    assert not OFFLINE_VIOLATIONS.search(latest.text)
    assert "<style>" in latest.text
    first = client.get("/validation/ui-run-1")
    assert first.status_code == 200 and "PASSED" in first.text
    assert client.get("/validation/..%2F..%2Fetc").status_code == 404
    index = client.get("/")
    assert index.status_code == 200 and "/consolidation/validation/ui-run-1" in index.text
    assert not OFFLINE_VIOLATIONS.search(index.text)

    # the latest completion report (written by the reporting phase) is served as it is
    assert client.get("/report/latest").status_code == 404
    older, newer = config.report_dir() / "run-a", config.report_dir() / "run-b"
    for folder, title in ((older, "older"), (newer, "newer")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.html").write_text(f"<html><body><h1>{title} report</h1></body></html>")
    os.utime(older / "report.html", (1, 1))
    report = client.get("/report/latest")
    assert report.status_code == 200 and "newer report" in report.text
    assert client.get("/report/run-a/report.html").text.count("older report") == 1
    assert client.get("/report/run-a/..%2F..%2Fnightly").status_code == 404

    # Airflow loads the plugin from the plugins folder and mounts the app, with menu entries
    from airflow import plugins_manager
    from airflow.api_fastapi.app import init_plugins

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "Consolidation pages"] == ["/consolidation"]
    api = FastAPI()
    init_plugins(api)
    assert any(getattr(r, "path", None) == "/consolidation" for r in api.routes)
    views = [v for p in plugins_manager._get_plugins()[0] for v in p.external_views]
    assert {v["href"] for v in views} >= {"/consolidation/validation/latest", "/consolidation/report/latest"}
