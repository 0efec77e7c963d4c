"""`consolidation run --phase ...`: your own database and plan, phase by phase, through the DAGs
(`airflow dags test`), without a scheduler - here a database the project did not shape like its
demo (mixed-case and hostile names, a plan of three steps) from 4A to 4D, the approval given by
the plan's approver through Airflow's REST API while 4D waits. Runtime tier: each phase is an
Airflow process of its own."""
from __future__ import annotations

import psycopg
import pytest
import yaml
from psycopg import sql

from test_plan_identifiers import LEGACY_A, LEGACY_B, ODD, TARGET, build_legacy, hostile_plan

pytestmark = pytest.mark.runtime


def test_run_each_phase_of_an_own_plan_through_its_dag(db_dsn, run_cli, tmp_path):
    build_legacy(db_dsn)
    with psycopg.connect(db_dsn) as conn:  # the other test's injection canary: not part of this database
        conn.execute("DROP SCHEMA x CASCADE")
    smoke = tmp_path / "smoke"
    smoke.mkdir()
    (smoke / "teams.sql").write_text('-- the teams\nSELECT t."Team Id", t."Team Name" FROM {{"UPPER Case".Teams}} AS t\n',
                                     encoding="utf-8")
    raw = hostile_plan() | {"smoke_dir": "smoke", "approvers": ["alice"]}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    env = {"CONSOLIDATION_PLAN": str(path), "AIRFLOW_HOME": str(tmp_path / "airflow")}

    for phase in ("4a", "4b", "4c"):
        out = run_cli("run", "--phase", phase, dsn=db_dsn, env=env, timeout=600)
        assert out.returncode == 0, (phase, out.stdout[-3000:], out.stderr[-3000:])
        assert f"gate {phase.upper()}: success" in out.stdout, out.stdout
        # the metadata database is migrated once, then found as that migration left it
        assert ("Airflow metadata: migrated" if phase == "4a" else "Airflow metadata: up to date") in out.stdout

    refused = run_cli("run", "--phase", "4d", "--approve-as", "mallory", "--reason", "not an approver at all",
                      dsn=db_dsn, env=env)
    assert refused.returncode == 1 and "must be one of the plan's approvers (alice)" in refused.stderr

    out = run_cli("run", "--phase", "4d", "--conf", '{"approval_timeout_hours": 0.25}', "--approve-as", "alice",
                  "--reason", "reviewed the gates and the DROP list", dsn=db_dsn, env=env, timeout=900)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "waiting in Airflow's Required Actions" in out.stdout and "gate 4D: success" in out.stdout, out.stdout
    with psycopg.connect(db_dsn) as conn:
        decided = conn.execute("SELECT status, decided_by, decided_via FROM ops.c_approvals").fetchall()
        assert decided == [("approved", "alice", "airflow")]
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (LEGACY_B,)).fetchone()[0] == 0
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TARGET, ODD))).fetchone()[0] == 3
        # drop_schema: false keeps this one, emptied
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (LEGACY_A,)).fetchone()[0] == 1

