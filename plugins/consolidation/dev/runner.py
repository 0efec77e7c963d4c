"""`consolidation run --phase 4a|4b|4c|4d|rollback|nightly`: one phase's DAG on your database,
without a scheduler - what `make demo` does per phase, for any DSN and plan.

The DAG runs with `airflow dags test` (the code path of a real run: the DAG file parsed with
your plan, every task through Airflow) against the database commands use (CONSOLIDATION_DB_URL,
else the embedded server), given to the tasks as the Airflow connection consolidation_db.
Airflow's own log goes to a file in the state folder; the phase's gate and (4B) its steps
are summarised from the ledger.

4D waits for a person: Airflow's core API is served from this process on the same metadata
database (dev.api_server) with a login per plan approver (and `operator`), and the command
prints how to approve from another shell (`consolidation approve --user APPROVER
--airflow-url URL --reason ...`), Airflow checking that the user is assigned. `--approve-as`
gives that approval from this process instead, through the same REST call.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from consolidation.core import config, db
from consolidation.core.files import atomic_write

DAGS = {"4a": ("4A", "phase4a_schema_extension"), "4b": ("4B", "phase4b_data_migration"),
        "4c": ("4C", "phase4c_service_updates"), "4d": ("4D", "phase4d_legacy_cleanup"),
        "rollback": ("rollback", "phase4_rollback"), "nightly": ("nightly", "consolidation_nightly_validation")}
CLEANUP_DAG = DAGS["4d"][1]


def airflow_env(dsn: str) -> None:
    """This process's environment for `airflow dags test` against `dsn` (state folder's AIRFLOW_HOME)."""
    os.environ.setdefault("AIRFLOW_HOME", str(config.state_dir() / "airflow"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(config.REPO_ROOT / "dags"))
    os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(config.REPO_ROOT / "plugins"))
    os.environ["AIRFLOW_CONN_CONSOLIDATION_DB"] = db.dsn_to_airflow_uri(dsn)
    os.environ.pop("CONSOLIDATION_DB_URL", None)  # tasks use the Airflow connection, like in production
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)


# After `airflow db migrate` succeeded on Airflow's default SQLite metadata database: the
# Airflow version and the database's alembic revision then. `consolidation run` migrates before
# every phase; when both still match, the migration (a process importing Airflow: about 4 s of
# a CPU) is skipped. Any other metadata database is migrated every time.
MIGRATED = "consolidation-migrated.json"


def _default_sqlite(home: Path) -> Path | None:
    """AIRFLOW_HOME/airflow.db when it is the metadata database (Airflow's default), else None."""
    import configparser

    if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        return None
    cfg = configparser.ConfigParser(interpolation=None)
    try:
        cfg.read(home / "airflow.cfg", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    path = home / "airflow.db"
    return path if cfg.get("database", "sql_alchemy_conn", fallback=None) == f"sqlite:///{path}" else None


def _metadata_state(home: Path) -> dict | None:
    """{"airflow": version, "revision": alembic revision} of the default SQLite metadata, or None."""
    import sqlite3
    from importlib.metadata import version

    path = _default_sqlite(home)
    if path is None or not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return {"airflow": version("apache-airflow-core"), "revision": row[0]} if row else None


def migrate_metadata() -> bool:
    """`airflow db migrate`, unless the default SQLite metadata is where the last one left it;
    True when it ran."""
    home = Path(os.environ["AIRFLOW_HOME"])
    marker = home / MIGRATED
    state = _metadata_state(home)
    try:
        if state is not None and json.loads(marker.read_text(encoding="utf-8")) == state:
            return False
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    state = _metadata_state(home)
    if state is not None:
        atomic_write(marker, json.dumps(state) + "\n")
    return True


def dag_state(log_path: Path, returncode: int) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace")
    tail = text[text.rfind("===== "):]
    return "success" if returncode == 0 and "state=success" in tail else "failed"


def run_dag(dag_id: str, log_path: Path, conf: str | None = None) -> str:
    """`airflow dags test DAG_ID`: one real DAG run, executed in-process by Airflow."""
    print(f"\n== airflow dags test {dag_id} ...", flush=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "airflow", "dags", "test", dag_id] + (["--conf", conf] if conf else [])
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n\n===== {' '.join(cmd)}\n")
        log.flush()
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    state = dag_state(log_path, done.returncode)
    print(f"   {dag_id}: {state} in {time.monotonic() - started:.0f} s")
    return state


def run_cleanup(log_path: Path, conf: dict, *, approvers: list[str], approve_as: str | None = None,
                reason: str | None = None) -> str:
    """4D with `airflow dags test`, Airflow's core API served here while it waits for approval:
    prints how to approve from another shell, or approves as `approve_as` (a plan approver) with
    `consolidation approve` - the command a person runs - over that API."""
    from consolidation import api
    from consolidation.dev import api_server

    home = Path(os.environ["AIRFLOW_HOME"])
    users = dict(api_server.USERS) | {a: "admin" for a in approvers}
    # the API's per-request access lines (polled every 2 s) would bury the command's own output
    os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", "http.access=WARNING")
    print(f"\n== airflow dags test {CLEANUP_DAG} (destructive: waits for an approval) ...", flush=True)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "airflow", "dags", "test", CLEANUP_DAG, "--conf", json.dumps(conf)]
    with api_server.serve(home, users=users) as url, open(log_path, "a", encoding="utf-8") as log:
        passwords = api_server.passwords(home)
        log.write(f"\n\n===== {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        watcher = approve_as or next((a for a in approvers), "approver")
        token = api.airflow_token(url, watcher, passwords[watcher])
        waiting = []
        while proc.poll() is None and not waiting:
            time.sleep(2)
            waiting = api.pending_approvals(url, token)
        if waiting:
            print(f"   waiting in Airflow's Required Actions: {waiting[0]['subject']}")
            if approve_as:
                print(f"   approving as {approve_as} through Airflow's REST API while it waits:\n     consolidation "
                      f"approve --user {approve_as} --airflow-url {url} --reason \"{reason}\"")
                done = subprocess.run([sys.executable, "-m", "consolidation", "approve", "--user", approve_as,
                                       "--airflow-url", url, "--reason", reason or ""],
                                      env=dict(os.environ, CONSOLIDATION_AIRFLOW_PASSWORD=passwords[approve_as]),
                                      capture_output=True, text=True)
                print("   " + (done.stdout.strip() or done.stderr.strip()).replace("\n", "\n   "))
            else:
                pw_file = home / api_server.PASSWORDS_FILE
                print(f"   approve from another shell (as one of {', '.join(approvers) or 'approver'}; passwords in "
                      f"{pw_file}):\n     CONSOLIDATION_AIRFLOW_PASSWORD=... consolidation approve --user "
                      f"{watcher} --airflow-url {url} --reason \"...\"\n   (or `consolidation reject ...`); "
                      "waiting until the run ends", flush=True)
        proc.wait()
    state = dag_state(log_path, proc.returncode)
    print(f"   {CLEANUP_DAG}: {state} in {time.monotonic() - started:.0f} s")
    return state


def summarise(dsn: str, phase: str, plan) -> None:
    """The phase's latest gate from the ledger (4B: each step's rows too)."""
    from consolidation.core import ledger

    with db.connect(dsn) as conn:
        if not ledger.tool_tables_exist(conn, plan):
            return
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


def run_phase(phase: str, *, conf: dict | None = None, approve_as: str | None = None,
              reason: str | None = None) -> int:
    """Run one phase's DAG (exit 0 when its run succeeded, 1 otherwise)."""
    from consolidation.core.plan import load_plan

    plan = load_plan()  # a refused plan: one line, before Airflow is touched
    label, dag_id = DAGS[phase]
    if approve_as is not None:
        if phase != "4d":
            print(f"--approve-as applies to 4d only, not {phase}", file=sys.stderr)
            return 1
        if approve_as not in plan.approvers or not (reason and len(reason.strip()) >= 10):
            print(f"--approve-as {approve_as}: must be one of the plan's approvers ({', '.join(plan.approvers) or 'none'})"
                  " and come with --reason of at least 10 characters", file=sys.stderr)
            return 1
    dsn = db.resolve_dsn()
    print(f"database: {db.redact(dsn)}\nplan: {plan.path} ({plan.name})")
    airflow_env(dsn)
    log_path = config.state_dir() / "run-airflow.log"
    print(f"Airflow: AIRFLOW_HOME={os.environ['AIRFLOW_HOME']}; `airflow dags test` output in {log_path}")
    print("Airflow metadata: " + ("migrated (airflow db migrate)" if migrate_metadata() else
                                  "up to date (as the last `airflow db migrate` left it)"))
    if phase == "4d":
        state = run_cleanup(log_path, conf or {}, approvers=plan.approvers, approve_as=approve_as, reason=reason)
    else:
        state = run_dag(dag_id, log_path, json.dumps(conf) if conf else None)
    if label in ("4A", "4B", "4C", "4D"):
        summarise(dsn, label, plan)
    if state != "success":
        print(f"{dag_id} ended {state}: see {log_path} (`consolidation status` shows the ledger)")
        return 1
    return 0
