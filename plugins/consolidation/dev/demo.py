"""`python -m consolidation demo`: the whole job on one database, through the real DAGs.

Builds the legacy fixture when the database is empty, prints the inventory, then runs
each phase DAG with dag.test() (the same code path as `airflow dags test`), printing a
short summary per phase; Airflow's own log goes to a file in the state folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from consolidation.core import config, db

PHASE_DAGS = [
    ("4A", "phase4a_schema_extension"),
    ("4B", "phase4b_data_migration"),
    ("4C", "phase4c_service_updates"),
]


def _airflow_env(dsn: str) -> None:
    os.environ.setdefault("AIRFLOW_HOME", str(config.state_dir() / "airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(config.REPO_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(config.REPO_ROOT / "plugins"))
    os.environ["AIRFLOW_CONN_CONSOLIDATION_DB"] = db.dsn_to_airflow_uri(dsn)
    os.environ.pop("CONSOLIDATION_DB_URL", None)  # tasks use the Airflow connection, like in production
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


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

    _airflow_env(dsn)
    log_path = config.state_dir() / "demo-airflow.log"
    print(f"\nAirflow: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}; `airflow dags test` output in {log_path}")
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    for phase, dag_id in PHASE_DAGS:
        if not (config.REPO_ROOT / "dags" / f"{dag_id}.py").exists():
            print(f"\n== {phase}: {dag_id} is not available yet, stopping here")
            break
        state = _run_dag(dag_id, log_path)
        _summarise(dsn, phase, dag_id, state)
        if state != "success":
            print(f"\n{dag_id} ended {state}: see {log_path}; nothing after it was run")
            return 1
    else:
        if (config.REPO_ROOT / "dags" / "phase4d_legacy_cleanup.py").exists():
            state = _run_cleanup_with_cli_approval(dsn, log_path)
            _summarise(dsn, "4D", "phase4d_legacy_cleanup", state)
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
    import json

    from consolidation import api
    from consolidation.dev import api_server

    dag_id = "phase4d_legacy_cleanup"
    home = Path(os.environ["AIRFLOW_HOME"])
    # the API's per-request access lines (the demo polls every 2 s) would bury the demo's own output
    os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "http.access=WARNING")
    print(f"\n== airflow dags test {dag_id} (destructive: waits for an approval) ...", flush=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id, "--conf",
           json.dumps({"approval_timeout_hours": 0.25})]
    with api_server.serve(home) as url, open(log_path, "a", encoding="utf-8") as log:
        password = api_server.passwords(home)["approver"]
        log.write(f"\n\n===== {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        token = api.airflow_token(url, "approver", password)
        waiting = []
        while proc.poll() is None and not waiting:
            time.sleep(2)
            waiting = api.pending_approvals(url, token)
        if waiting:
            print(f"   waiting in Airflow's Required Actions: {waiting[0]['subject']}")
            approve = [sys.executable, "-m", "consolidation", "approve", "--user", "approver", "--airflow-url", url,
                       "--reason", "make demo: backups verified by the DAG, reconciliation digest unchanged"]
            print(f"   approving as the approver through Airflow's REST API while it waits:\n     consolidation "
                  f"approve --user approver --airflow-url {url} --reason \"make demo: ...\"")
            env = dict(os.environ, CONSOLIDATION_AIRFLOW_PASSWORD=password)
            done = subprocess.run(approve, env=env, capture_output=True, text=True)
            print("   " + (done.stdout.strip() or done.stderr.strip()).replace("\n", "\n   "))
        proc.wait()
    text = log_path.read_text(encoding="utf-8", errors="replace")
    tail = text[text.rfind("===== "):]
    state = "success" if proc.returncode == 0 and "state=success" in tail else "failed"
    print(f"   {dag_id}: {state} in {time.monotonic() - started:.0f} s")
    return state


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


def _run_dag(dag_id: str, log_path: Path, conf: str | None = None) -> str:
    """`airflow dags test DAG_ID`: one real DAG run, executed in-process by Airflow."""
    print(f"\n== airflow dags test {dag_id} ...", flush=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id] + (["--conf", conf] if conf else [])
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n\n===== {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    tail = text[text.rfind("===== "):]
    state = "success" if done.returncode == 0 and "state=success" in tail else "failed"
    print(f"   {dag_id}: {state} in {time.monotonic() - started:.0f} s")
    return state


def _summarise(dsn: str, phase: str, dag_id: str, state: str) -> None:
    from consolidation.core import ledger

    plan = _plan()
    with db.connect(dsn) as conn:
        gate = ledger.latest(conn, plan, phase=phase, kind="gate")
        if phase == "4B":
            for r in ledger.latest_run_rows(conn, plan, phase="4B", kind="step"):
                print(f"   {r['source']:<42} -> {r['target']:<45} read {r['rows_read'] or 0:>6}  "
                      f"inserted {r['rows_inserted'] or 0:>6}  merged {r['rows_merged'] or 0:>3}  "
                      f"quarantined {r['rows_quarantined'] or 0}")
    if gate is not None:
        d = gate["details"]
        print(f"   gate {phase}: {gate['status']}, {d.get('checks', '?')} checks, {d.get('failed', '?')} failed, "
              f"at {gate['finished_at']:%Y-%m-%d %H:%M:%S}")
