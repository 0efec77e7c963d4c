"""`python -m consolidation demo`: the whole job on one database, through the real DAGs.

Builds the legacy fixture when the database is empty, prints the inventory, then runs
each phase DAG with dag.test() (the same code path as `airflow dags test`), printing a
short summary per phase; Airflow's own log goes to a file in the state folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from consolidation.core import config, db
from consolidation.dev.runner import airflow_env, migrate_metadata, run_cleanup, run_dag, summarise

PHASE_DAGS = [
    ("4A", "phase4a_schema_extension"),
    ("4B", "phase4b_data_migration"),
    ("4C", "phase4c_service_updates"),
]


def run(args) -> int:
    from consolidation.dev import fixture
    from consolidation.checks.inventory import render, take_inventory

    from consolidation.core import ledger

    dsn = db.resolve_dsn()
    print(f"database: {db.redact(dsn)}")
    with db.connect(dsn) as conn:
        done = ledger.latest(conn, _plan(), phase="4D", kind="gate", name="gate_4D")
        if done is not None and done["status"] == ledger.SUCCESS:
            print(f"Phase 4 was completed here: the 4D gate passed in run {done['run_id']} at "
                  f"{done['finished_at']:%Y-%m-%d %H:%M:%S %Z}; the legacy schemas are gone.")
            _print_report(dsn)
            print("to run the demo again from scratch: make clean && make demo")
            return 0
        if fixture.is_empty(conn):
            counts = fixture.build(conn, scale=args.scale)
            conn.commit()
            print(f"built the legacy fixture (scale {args.scale}): {sum(counts.values()):,} rows")
        else:
            print("the database is not empty: using it as it is (no fixture built)")
    inv = take_inventory(dsn=dsn)
    print(render(inv))
    if not inv.ok:
        print("the inventory blocks the migration: fix the findings above, then run `make demo` again")
        return 1

    airflow_env(dsn)
    log_path = config.state_dir() / "demo-airflow.log"
    print(f"\nAirflow: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}; `airflow dags test` output in {log_path}")
    migrate_metadata()
    for phase, dag_id in PHASE_DAGS:
        if not (config.REPO_ROOT / "dags" / f"{dag_id}.py").exists():
            print(f"\n== {phase}: {dag_id} is not available yet, stopping here")
            break
        state = run_dag(dag_id, log_path)
        summarise(dsn, phase, _plan())
        if state != "success":
            print(f"\n{dag_id} ended {state}: see {log_path}; nothing after it was run")
            return 1
    else:
        if (config.REPO_ROOT / "dags" / "phase4d_legacy_cleanup.py").exists():
            state = _run_cleanup_with_cli_approval(dsn, log_path)
            summarise(dsn, "4D", _plan())
            if state != "success":
                print(f"\nphase4d_legacy_cleanup ended {state}: see {log_path}")
                return 1
            _print_report(dsn)
    print(f"\nledger: {'.'.join(_plan().tool_table('ledger'))} in {db.redact(dsn)}")
    return 0


def _run_cleanup_with_cli_approval(dsn: str, log_path: Path) -> str:
    """4D parks in its human-in-the-loop approval; Airflow's core API is served from this process
    on the same metadata database (dev.api_server), and the demo approves as a person would:
    `consolidation approve --user approver` over HTTP, Airflow checking that approver is assigned."""
    return run_cleanup(log_path, {"approval_timeout_hours": 0.25}, approvers=_plan().approvers or ["approver"],
                       approve_as="approver",
                       reason="make demo: backups verified by the DAG, reconciliation digest unchanged")


def _print_report(dsn: str) -> None:
    from consolidation.core import ledger

    plan = _plan()
    with db.connect(dsn) as conn:
        row = ledger.latest(conn, plan, phase="4D", kind="report")
    if row is None:
        print("\nno completion report was recorded")
        return
    files = {k: v for k, v in (row.get("details") or {}).items() if "path" in k or k in ("markdown", "html")}
    print("\ncompletion report:")
    for key, value in files.items():
        print(f"   {key}: {value}")


def _plan():
    from consolidation.core.plan import load_plan

    return load_plan()
