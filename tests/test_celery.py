"""The CeleryExecutor for real, without Docker: 4A and 4B run by a Celery worker.

Processes (consolidation.dev.local_airflow, as `make airflow` starts them): api-server (the
execution API the worker's task runners call), scheduler, dag-processor and
`airflow celery worker`; the machine's Redis as the broker; a fresh PostgreSQL metadata
database (embedded server, or CONSOLIDATION_DB_URL's) that is also Celery's result backend.
4A and 4B are triggered through the REST API as the operator (each `airflow dags` command was a
process importing Airflow: about 5 s of a CPU each), and the REST API is polled until each run
ends. Then: both runs succeeded, every task instance went through the
Celery queue of this test and has its Celery result stored in the result backend, and the
consolidated data passed the 4B gate.

Skipped, with the reason printed, when no Redis answers (CONSOLIDATION_TEST_REDIS_URL, default
redis://127.0.0.1:6379/13). The queue name is unique per run, so a shared Redis is safe.
"""
from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from consolidation.core import ledger
from consolidation.dev import local_airflow
from consolidation.core.db import connect
from consolidation.core.plan import load_plan

REDIS_URL = os.environ.get("CONSOLIDATION_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
DAGS = ("phase4a_schema_extension", "phase4b_data_migration")


def _redis_answers() -> str | None:
    """None when Redis answers PING, else why not."""
    try:
        import redis
    except ImportError as exc:
        return f"the redis client is not installed ({exc})"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
    except Exception as exc:  # connection refused, timeout, auth...
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="module")
def redis_broker() -> str:
    why = _redis_answers()
    if why:
        print(f"\ntest_celery skipped: no Redis answers at {REDIS_URL} ({why})")
        pytest.skip(f"no Redis answers at {REDIS_URL}: {why}")
    return REDIS_URL


def test_4a_and_4b_run_on_a_celery_worker(redis_broker, make_db, legacy_db, tmp_path):
    meta_dsn = make_db()
    meta_url = local_airflow.sqlalchemy_url(meta_dsn)
    queue = f"ctest_{uuid.uuid4().hex[:12]}"
    af = local_airflow.LocalAirflow(
        home=tmp_path / "airflow", port=local_airflow.free_port(), executor="CeleryExecutor",
        meta_url=meta_url, target_dsn=legacy_db,
        components=("api-server", "scheduler", "dag-processor", "celery-worker"),
        log_server_ports=(local_airflow.free_port(), local_airflow.free_port()),
        extra_env={
            "AIRFLOW__CELERY__BROKER_URL": redis_broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + local_airflow.libpq_url(meta_url),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,  # the worker serves this queue only
            "CONSOLIDATION_STATE_DIR": str(tmp_path / "state"),  # not the session's state folder
        })
    runs = {}
    try:
        af.start(timeout=400)
        token = af.token("operator")
        for dag_id in DAGS:
            run_id = runs[dag_id] = f"celery_{uuid.uuid4().hex[:12]}"
            af.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"dag_run_id": run_id, "logical_date": None, "conf": {}},
                   token=token)
            state = af.wait_run(dag_id, run_id, token, timeout=900)["state"]
            assert state == "success", (dag_id, state, af.log_file("celery-worker").read_text()[-3000:])
        worker_log = af.log_file("celery-worker").read_text()
    finally:
        af.stop()

    with psycopg.connect(meta_dsn) as conn:
        tis = conn.execute(
            "SELECT dag_id, task_id, state, queue, external_executor_id FROM task_instance "
            "WHERE (dag_id, run_id) IN ((%s, %s), (%s, %s))",
            (DAGS[0], runs[DAGS[0]], DAGS[1], runs[DAGS[1]])).fetchall()
        results = dict(conn.execute("SELECT task_id, status FROM celery_taskmeta").fetchall())
    assert {d for d, *_ in tis} == set(DAGS)
    assert all(state == "success" for _, _, state, _, _ in tis), tis
    assert {q for *_, q, _ in tis} == {queue}
    # every task instance was a Celery task, and its result is in the PostgreSQL result backend
    celery_ids = {ext for *_, ext in tis}
    assert None not in celery_ids and len(celery_ids) == len(tis)
    assert {results.get(ext) for ext in celery_ids} == {"SUCCESS"}
    assert "celery@" in worker_log and queue in worker_log

    with connect(legacy_db) as conn:
        plan = load_plan()
        gate_4a = ledger.latest(conn, plan, phase="4A", kind="gate")
        gate_4b = ledger.latest(conn, plan, phase="4B", kind="gate")
    assert (gate_4a["status"], gate_4a["run_id"]) == (ledger.SUCCESS, runs[DAGS[0]])
    assert (gate_4b["status"], gate_4b["run_id"]) == (ledger.SUCCESS, runs[DAGS[1]])
