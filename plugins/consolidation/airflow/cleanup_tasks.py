"""Task bodies of phase4d_legacy_cleanup and phase4_rollback: thin calls into the engine
(cleanup, backup, report, rollback). Cheap to import: everything heavy is imported inside.
Each returns something small for XCom and raises, with the objects named, to fail its task."""
from __future__ import annotations

from pathlib import Path

from consolidation.airflow.runtime import run_info, task_connection

APPROVE_HOW = ("decide in the Airflow UI: trigger the DAG phase4d_cleanup_approval (decision approve|reject, "
               "reason), or on a shell: `python -m consolidation approve --by NAME --reason TEXT --request {id}` "
               "(reject: `python -m consolidation reject ...`); `python -m consolidation status` shows it")


def _plan():
    from consolidation.core.plan import load_plan

    return load_plan()


def _params(context) -> dict:
    return dict(context.get("params") or {})


# ------------------------------------------------------------------ 4D
def preflight_task(**context) -> dict:
    from consolidation.phases.cleanup import preflight

    info, params = run_info(context), _params(context)
    with task_connection() as (dsn, conn):
        out = preflight(conn, dsn, _plan(), resync_late_rows=bool(params.get("resync_late_rows")),
                        run_id=info.run_id, user=info.user)
    if out["resynced"]:
        for r in out["resynced"]:
            print(f"re-synced late rows: {r}")
    print(f"inventory clean, no late rows left, reconciliation re-proven ({out['checks']} checks)")
    return {"late": len(out["late"]), "resynced": [r["step"] for r in out["resynced"]]}


def open_request_task(**context) -> int:
    from consolidation.phases import approvals
    from consolidation.checks.reconcile import digest

    info = run_info(context)
    plan = _plan()
    with task_connection() as (_, conn):
        d = digest(conn, plan)
        conn.commit()
        req = approvals.open_request(conn, plan, run_id=info.run_id, user=info.user, digest=d)
    print(f"cleanup approval request {req.id} is pending, bound to fingerprint {req.fingerprint} "
          f"(plan sha256 {plan.sha256[:12]}, reconciliation digest {d['digest'][:12]})")
    print("HOW TO APPROVE: " + APPROVE_HOW.format(id=req.id))
    return req.id


def backup_task(**context) -> dict:
    from consolidation.phases import approvals
    from consolidation.phases.backup import default_folder, take_backup

    info, params = run_info(context), _params(context)
    plan = _plan()
    request_id = context["ti"].xcom_pull(task_ids="open_request")
    folder = Path(params["backup_dir"]) if params.get("backup_dir") else default_folder(info.run_id)
    with task_connection() as (dsn, conn):
        req = approvals.get(conn, plan, int(request_id))
        conn.commit()
    if req is None or req.status != "approved":
        raise RuntimeError(f"approval request {request_id} is {req.status if req else 'missing'}, not approved; "
                           "nothing is backed up or dropped")
    manifest = take_backup(dsn, plan, folder, run_id=info.run_id, user=info.user,
                           expected_fingerprint=req.fingerprint)
    for a in manifest["archives"]:
        print(f"{a['schema']}: {a['path']} {a['bytes']:,} bytes sha256 {a['sha256']} "
              f"({len(a['tables'])} tables, {a['toc_entries']} TOC entries, readable)")
    return {"folder": str(folder), "archives": {a["schema"]: a["sha256"] for a in manifest["archives"]}}


def drop_task(schema: str, **context) -> list[str]:
    from pathlib import Path as _P

    from consolidation.phases.backup import latest_backups, pg_env, verify_archive
    from consolidation.phases.cleanup import drop_schema_objects

    info = run_info(context)
    plan = _plan()
    with task_connection() as (dsn, conn):
        row = latest_backups(conn, plan, info.run_id).get(schema)
        conn.commit()
        if row is not None:  # the archive is still there, unchanged and readable, right before the drop
            d = row["details"]
            verify_archive(_P(d["path"]), sha256=d["sha256"], tables=d["tables"], env=pg_env(dsn))
        done = drop_schema_objects(conn, plan, schema, run_id=info.run_id, user=info.user, backup_row=row)
    for line in done:
        print(line)
    return done


def gate_4d_task(**context) -> dict:
    from consolidation.phases.cleanup import run_gate_4d

    info = run_info(context)
    with task_connection() as (dsn, conn):
        result = run_gate_4d(conn, dsn, _plan(), run_id=info.run_id, user=info.user)
    print(result.summary())
    return {"gate": "4D", "passed": result.passed, "checks": len(result.results)}


def report_task(**context) -> dict:
    from consolidation.phases.report import write_report

    info, params = run_info(context), _params(context)
    with task_connection() as (_, conn):
        out = write_report(conn, _plan(), run_id=info.run_id, folder=params.get("report_dir") or None,
                           user=info.user)
    print(f"report: {out['markdown']}\nreport: {out['html']}")
    return out


# ------------------------------------------------------------------ rollback
def assess_task(**context) -> dict:
    from consolidation.phases.rollback import assess

    with task_connection() as (_, conn):
        state = assess(conn, _plan())
        conn.commit()
    print(f"legacy schemas to restore from their backup: {state['needs_restore'] or 'none'}")
    print(f"4A changes to undo: {len(state['ddl'])}; undo-log rows: {state['undo_rows']}")
    return {"needs_restore": state["needs_restore"], "ddl": len(state["ddl"]), "undo_rows": state["undo_rows"]}


def restore_task(**context) -> dict:
    from consolidation.phases.rollback import restore_legacy

    info = run_info(context)
    from consolidation.airflow.runtime import task_dsn

    out = restore_legacy(task_dsn(), _plan(), run_id=info.run_id, user=info.user)
    print(out.get("note") or f"restored {', '.join(out['restored'])} from {out['archives']}; "
                             "every table equals its backup checksum")
    return out


def undo_task(**context) -> dict:
    from consolidation.phases.rollback import undo_migration

    info, params = run_info(context), _params(context)
    if params.get("restore_only"):
        print("restore_only: the consolidated tables are kept (4A/4B not undone)")
        return {"skipped": True}
    with task_connection() as (_, conn):
        out = undo_migration(conn, _plan(), run_id=info.run_id, user=info.user)
    for line in out.get("undone", []):
        print(line)
    if out.get("note"):
        print(out["note"])
    return {"undone": len(out.get("undone", []))}
