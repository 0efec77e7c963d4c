"""Any name PostgreSQL accepts works end to end: a database whose legacy and consolidated schemas,
tables and columns have mixed-case and hostile names (quotes, `;`, `--`, spaces) runs 4A, 4B, 4C
(with a service smoke query naming them quoted), 4D (backup, drops) and the nightly validation
through the engine and passes every gate (real GX checkpoints), nothing is injected, and the DAG
files parse for its plan with stable task ids (the real names shown as display names)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest
import yaml
from psycopg import sql

from conftest import REPO_ROOT

LEGACY_A = 'Leg"acy; --x'
LEGACY_B = "UPPER Case"
TARGET = "Mixed Case"
TOOL = "ops"
ODD = 'odd"; DROP TABLE x; --'


def build_legacy(dsn: str) -> None:
    I = sql.Identifier
    with psycopg.connect(dsn) as conn:
        for schema in (LEGACY_A, LEGACY_B, "x"):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(I(schema)))
        conn.execute(sql.SQL("CREATE TABLE {}.{} (x int)").format(I("x"), I("x")))  # what an injection would drop
        conn.execute(sql.SQL('CREATE TABLE {} ("Team Id" int PRIMARY KEY, "Team Name" text NOT NULL)').format(
            I(LEGACY_B, "Teams")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'Ants'), (2, 'Bees'), (3, 'Cats')").format(I(LEGACY_B, "Teams")))
        conn.execute(sql.SQL('CREATE TABLE {} (id int PRIMARY KEY, "UPPER Case" int, "Name; --" text, '
                             '"Team Id" int REFERENCES {} ("Team Id"))').format(I(LEGACY_A, ODD), I(LEGACY_B, "Teams")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 10, 'o''ne', 1), (2, NULL, 'two', 2), (3, 30, NULL, NULL)").format(
            I(LEGACY_A, ODD)))
        conn.execute(sql.SQL('CREATE VIEW {} AS SELECT id, "Name; --" FROM {}').format(
            I(LEGACY_A, "V iew"), I(LEGACY_A, ODD)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(I(LEGACY_A, "Scratch")))
        conn.commit()


def hostile_plan() -> dict:
    return {
        "plan": "hostile names",
        "consolidated_schemas": {TARGET: "targets", TOOL: "the tool"},
        "legacy_schemas": {LEGACY_B: {"stated_tables": 1}, LEGACY_A: {"stated_tables": 3, "drop_schema": False}},
        "tool": {"schema": TOOL, "prefix": "c_"},
        "steps": [
            {"source": f"{LEGACY_B}.Teams", "action": "copy", "target": f"{TARGET}.Teams", "rows": 3},
            {"source": f"{LEGACY_A}.{ODD}", "action": "copy", "target": f"{TARGET}.{ODD}", "rows": 3,
             "columns": {"Renamed Col": "UPPER Case"}},
            {"source": f"{LEGACY_A}.V iew", "object": "view", "view_mode": "recreate", "action": "copy",
             "target": f"{TARGET}.V iew",
             "definition": f'SELECT id, "Name; --" FROM "{TARGET}"."{ODD.replace(chr(34), chr(34) * 2)}"'},
            {"source": f"{LEGACY_A}.Scratch", "action": "delete", "rows": 0},
        ],
    }


@pytest.fixture
def hostile(tmp_path, db_dsn):
    build_legacy(db_dsn)
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(hostile_plan(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, db_dsn


def test_hostile_names_run_4a_and_4b_and_pass_their_gates(hostile, cli):
    import phase_helpers as ph
    from consolidation.core.plan import load_plan

    path, dsn = hostile
    assert cli("plan", "--file", str(path)).returncode == 0
    inv = cli("inventory", dsn=dsn, env={"CONSOLIDATION_PLAN": str(path)})
    assert inv.returncode == 0, inv.stdout[-2000:] + inv.stderr
    plan = load_plan(path)
    ph.engine_4a(dsn, plan)  # gate_4A must pass (raises GateFailed otherwise)
    failed = ph.engine_4b(dsn, plan)  # gate_4B must pass
    assert failed == {}
    I = sql.Identifier
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL('SELECT id, "Renamed Col", "Name; --", "Team Id" FROM {} ORDER BY id').format(
            I(TARGET, ODD))).fetchall()
        assert rows == [(1, 10, "o'ne", 1), (2, None, "two", 2), (3, 30, None, None)]
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(I(TARGET, "Teams"))).fetchone()[0] == 3
        assert conn.execute(sql.SQL('SELECT array_agg("Name; --" ORDER BY id) FROM {}').format(
            I(TARGET, "V iew"))).fetchone()[0] == ["o'ne", "two", None]
        # the foreign key was re-pointed between the targets, by name
        fk = conn.execute("SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                          "AND conrelid = to_regclass(%s)", (sql.Identifier(TARGET, ODD).as_string(conn),)).fetchone()
        assert fk == ('"Mixed Case"."Teams"',)
        # nothing was injected: the table the names try to drop is there, the legacy rows too
        assert conn.execute("SELECT to_regclass('x.x') IS NOT NULL").fetchone()[0]
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(I(LEGACY_A, ODD))).fetchone()[0] == 3
        gates = conn.execute(sql.SQL("SELECT name, status FROM {} WHERE kind = 'gate' ORDER BY id").format(
            I(TOOL, "c_ledger"))).fetchall()
        assert gates[-2:] == [("gate_4A", "success"), ("gate_4B", "success")], gates
    out = cli("sql", "--phase", "4b", dsn=dsn, env={"CONSOLIDATION_PLAN": str(path)})
    assert out.returncode == 0 and '"Mixed Case"."odd""; DROP TABLE x; --"' in out.stdout


PROBE = r"""
import json, sys
from airflow.models.dagbag import DagBag
bag = DagBag(sys.argv[1])
out = {"errors": {k: str(v)[-800:] for k, v in bag.import_errors.items()}, "dags": {}}
for d in bag.dags.values():
    out["dags"][d.dag_id] = {t.task_id: t.task_display_name for t in d.tasks}
    out["groups_" + d.dag_id] = {g: d.task_group.children[g].label if hasattr(d.task_group.children[g], "label")
                                 else g for g in d.task_group.children}
print(json.dumps(out))
"""


def test_dag_files_parse_for_a_plan_with_hostile_names(tmp_path):
    from consolidation.airflow.dags import airflow_id

    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(hostile_plan(), allow_unicode=True, sort_keys=False), encoding="utf-8")
    env = dict(os.environ, CONSOLIDATION_PLAN=str(path), CONSOLIDATION_DB_URL="postgresql://nobody@127.0.0.1:1/none")
    env.pop("AIRFLOW_CONN_CONSOLIDATION_DB", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO_ROOT / "dags")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["errors"] == {}
    tasks_4b = data["dags"]["phase4b_data_migration"]
    step = f"copy__{LEGACY_A}__{ODD}"
    task_id = f"{airflow_id(LEGACY_A)}.{airflow_id(step)}"
    assert tasks_4b[task_id] == step  # the real name is what the UI shows
    grouped = [t for t in tasks_4b if "." in t]  # the step tasks, inside their schema's group
    assert len(grouped) == 3 and all(part.replace("_", "").isalnum() and part.isascii() and part == part.lower()
                                     for t in grouped for part in t.split(".")), grouped
    assert airflow_id(LEGACY_A) in data["groups_phase4a_schema_extension"]
    assert "public" == airflow_id("public") and airflow_id("UPPER Case") != airflow_id("upper_case")


def test_hostile_names_run_4c_4d_and_the_nightly_validation(hostile, tmp_path):
    """The same database through 4C (registry + gate), 4D (request, Airflow's response as the HITL
    task hands it over, backup, drops, gate) and the nightly validation: every phase passes its
    gate, the legacy rows are in the backups, `x.x` (what an injection would drop) is still there."""
    import phase_helpers as ph
    from hitl_helpers import respond
    from consolidation import api
    from consolidation.core.plan import load_plan
    from consolidation.phases import nightly

    path, dsn = hostile
    # a service query naming the hostile tables, quoted as in SQL (the 4C gate runs it both ways)
    smoke = path.parent / "smoke"
    smoke.mkdir()
    q = lambda name: '"' + name.replace('"', '""') + '"'
    (smoke / "odd_by_team.sql").write_text(
        f"-- rows of the odd table with their team\nSELECT o.id, o.\"Name; --\", t.\"Team Name\"\n"
        f"  FROM {{{{{q(LEGACY_A)}.{q(ODD)}}}}} AS o LEFT JOIN {{{{{q(LEGACY_B)}.Teams}}}} AS t "
        f'ON t."Team Id" = o."Team Id"\n', encoding="utf-8")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["smoke_dir"] = "smoke"
    raw["approvers"] = ["approver"]
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    plan = load_plan(path)
    ph.engine_4a(dsn, plan)
    assert ph.engine_4b(dsn, plan) == {}
    ph.engine_4c(dsn, tmp_path / "export", plan)
    run = {"run_id": "4d-run", "user": "operator"}
    I = sql.Identifier
    with psycopg.connect(dsn) as conn:
        resolved = api.registry_resolve(conn, f"{LEGACY_A}.{ODD}", plan=plan)
        assert resolved.ok and (resolved.data.schema, resolved.data.table) == (TARGET, ODD), resolved.lines
        ph.done(api.cleanup_preflight(conn, dsn, plan, resync_late_rows=False, **run))
        request_id = ph.done(api.cleanup_open_request(conn, plan, **run))
        body = ph.done(api.approval_body(conn, plan, request_id, backup_dir=str(tmp_path / "backup"), run_id="4d-run"))
        assert sql.Identifier(LEGACY_A, ODD).as_string(conn) in body  # the DROP list names it as quoted
    decision = ph.done(respond(dsn, plan, request_id))
    with psycopg.connect(dsn) as conn:
        backup = ph.done(api.cleanup_backup(conn, dsn, plan, request_id, decision=decision,
                                            folder=tmp_path / "backup", **run))
        assert set(backup["archives"]) == {LEGACY_A, LEGACY_B}
        for schema in plan.legacy_schemas:
            ph.done(api.cleanup_drop(conn, dsn, plan, schema, request_id, decision=decision, **run))
        # nothing was injected: what the names try to drop is still there; then out of the way of
        # the 4D gate (which wants no schema outside the plan's)
        assert conn.execute("SELECT to_regclass('x.x') IS NOT NULL").fetchone()[0]
        conn.execute("DROP SCHEMA x CASCADE")
        conn.commit()
        ph.done(api.gate(conn, dsn, plan, "4D", **run))
        kept = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname IN (%s, %s)", (LEGACY_A, LEGACY_B)).fetchall()
        assert kept == [(LEGACY_A,)]  # drop_schema: false keeps it, emptied
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = %s::regnamespace",
                            (I(LEGACY_A).as_string(conn),)).fetchone()[0] == 0
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(I(TARGET, ODD))).fetchone()[0] == 3
    verdict = nightly.validate(dsn, plan, run_id="nightly-hostile", user="scheduler")
    assert verdict.passed, verdict.summary()
    assert len(verdict.rows) > 5
