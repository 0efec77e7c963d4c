"""`make airflow` for real: api-server, scheduler, dag-processor and triggerer as processes.

The same code as `python -m consolidation airflow-local start`, on a free port, with its own
AIRFLOW_HOME, a fresh metadata database and a fresh copy of the legacy fixture as
consolidation_db. Through the REST API the UI uses: the two logins, the params forms rejecting
bad input, and a 4A run triggered by the operator that the scheduler and the LocalExecutor carry
to success, recorded in the ledger under the operator's name. Then stop leaves nothing running.
"""
from __future__ import annotations

import pytest

from consolidation.core import ledger
from consolidation.dev import local_airflow
from consolidation.core.db import connect
from consolidation.core.plan import load_plan


def test_operator_runs_4a_through_the_scheduler_then_stop_leaves_nothing(make_db, legacy_db, tmp_path):
    af = local_airflow.LocalAirflow(
        home=tmp_path / "airflow", port=local_airflow.free_port(),
        meta_url=local_airflow.sqlalchemy_url(make_db()), target_dsn=legacy_db,
        log_server_ports=(local_airflow.free_port(), local_airflow.free_port()),
        extra_env={"CONSOLIDATION_STATE_DIR": str(tmp_path / "state")})  # not the session's state folder
    try:
        af.start(timeout=400)
        pids = af.running()
        assert set(pids) == set(local_airflow.COMPONENTS)
        _operator_runs_4a(af, legacy_db)
    finally:
        af.stop()
    assert af.running() == {}
    for pid in pids.values():  # each component's whole process group is gone
        assert not local_airflow.group_alive(pid)
    assert not list(af.run_dir.glob("*.pid"))


def _operator_runs_4a(af, legacy_db):
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

    run_id = af.trigger("phase4a_schema_extension", token)
    run = af.wait_run("phase4a_schema_extension", run_id, token, timeout=600)
    assert run["state"] == "success", run
    assert run["triggering_user_name"] == "operator"
    with connect(legacy_db) as conn:
        gate = ledger.latest(conn, load_plan(), phase="4A", kind="gate")
    assert gate["status"] == ledger.SUCCESS and gate["run_id"] == run_id
    assert gate["triggered_by"] == "operator"

