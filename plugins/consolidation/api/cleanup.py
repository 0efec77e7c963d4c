"""Operations of Phase 4D and after: preflight, the approval request and the decisions on it,
backup, drop, the completion report, rollback, and the status people decide from."""
from __future__ import annotations

from pathlib import Path

from consolidation.api.outcome import Outcome
from consolidation.checks.reconcile import digest
from consolidation.core.runs import lease as leases
from consolidation.core.runs.dropped import dropped_schemas
from consolidation.core.runs.interrupted import describe, interruptions
from consolidation.core import ledger
from consolidation.core.plan import Plan
from consolidation.phases import approvals, cleanup, rollback
from consolidation.phases.approvals import ApprovalRefused
from consolidation.phases.hitl.response import verify_copy
from consolidation.phases.validation import migrated_rows
from consolidation.phases.backup import default_folder, latest_backups, pg_env, take_backup, verify_archive
from consolidation.phases.report import collect, write_report

APPROVE_HOW = ("an approver responds in the Airflow UI (Browse > Required Actions, task wait_for_approval of this "
               "run), or on a shell: `consolidation approve --user NAME --reason TEXT --request {id}` (the Airflow "
               "REST API as that user; reject: `consolidation reject ...`); `consolidation status` shows it")


# ------------------------------------------------------------------ 4D
def cleanup_preflight(conn, dsn: str, plan: Plan, *, resync_late_rows: bool, run_id: str, user: str | None) -> Outcome:
    """Inventory and 4B reconciliation again; late rows block unless re-synced (CleanupBlocked)."""
    out = cleanup.preflight(conn, dsn, plan, resync_late_rows=resync_late_rows, run_id=run_id, user=user)
    lines = [f"already dropped by interrupted run {v['dropped_by']}: {schema} ({v['tables']} tables, {v['rows']:,} "
             f"rows; backup {v['archive']} verified: sha256 {v['sha256'][:12]}, data entries, checksums)"
             for schema, v in out.get("resumed", {}).items()]
    lines += [f"re-synced late rows: {r}" for r in out["resynced"]]
    lines.append(f"inventory clean, no late rows left, reconciliation re-proven ({out['checks']} checks)")
    return Outcome(value={"late": len(out["late"]), "resynced": [r["step"] for r in out["resynced"]],
                          "resumed": sorted(out.get("resumed", {}))}, lines=lines, data=out)


def cleanup_open_request(conn, plan: Plan, *, run_id: str, user: str | None) -> Outcome:
    """An approval request bound to the data's fingerprint; value = its id."""
    d = digest(conn, plan)
    conn.commit()
    req = approvals.open_request(conn, plan, run_id=run_id, user=user, digest=d)
    return Outcome(value=req.id, data=req, lines=[
        f"cleanup approval request {req.id} is pending, bound to fingerprint {req.fingerprint} "
        f"(plan sha256 {plan.sha256[:12]}, reconciliation digest {d['digest'][:12]})",
        "HOW TO APPROVE: " + APPROVE_HOW.format(id=req.id)])


def cleanup_backup(conn, dsn: str, plan: Plan, request_id, *, decision: dict | None, folder: str | Path | None = None,
                   run_id: str, user: str | None) -> Outcome:
    """pg_dump of every legacy schema into `folder` (default: CONSOLIDATION_BACKUP_DIR/<run id>),
    only for an approved request whose audit copy equals the approval Airflow recorded
    (`decision`: the HITL task's XCom) and whose fingerprint the data still has."""
    folder = Path(folder) if folder else default_folder(run_id)
    try:
        req = verify_copy(conn, plan, int(request_id), decision)
    except ApprovalRefused as exc:
        return Outcome(failure=exc)
    if req is None or req.status != "approved":
        return Outcome(failure=ApprovalRefused(f"approval request {request_id} is {req.status if req else 'missing'}, "
                                               "not approved; nothing is backed up or dropped"))
    manifest = take_backup(dsn, plan, folder, run_id=run_id, user=user, expected_fingerprint=req.fingerprint)
    # what the legacy rows say, for the nightly validation once they are gone
    baselined = migrated_rows.record_baselines(conn, plan, run_id=run_id)
    lines = [f"{a['schema']}: {a['path']} {a['bytes']:,} bytes sha256 {a['sha256']} "
             f"({len(a['tables'])} tables, {a['toc_entries']} TOC entries, readable)" for a in manifest["archives"]]
    lines.append(f"{manifest['format']} archives {manifest['pg_dump_note']}")
    lines.append(f"nightly validation baseline recorded for {baselined} step(s) (compared after the drop)")
    return Outcome(value={"folder": str(folder), "archives": {a["schema"]: a["sha256"] for a in manifest["archives"]}},
                   lines=lines, data=manifest)


def cleanup_drop(conn, dsn: str, plan: Plan, schema: str, request_id=None, *, decision: dict | None, run_id: str,
                 user: str | None) -> Outcome:
    """Drop the planned objects of one legacy schema, in one transaction, after the approval's
    audit copy is checked against Airflow's response again and its archive is checked again
    (still there, unchanged, readable)."""
    try:
        verify_copy(conn, plan, int(request_id) if request_id is not None else -1, decision)
    except ApprovalRefused as exc:
        return Outcome(failure=exc)
    row = latest_backups(conn, plan, run_id).get(schema)
    earlier = dropped_schemas(conn, plan).get(schema)
    conn.commit()
    if row is None and earlier is not None and earlier["run_id"] != run_id:
        # resumed after an interruption: preflight verified that drop's backup
        return Outcome(value=[], lines=[f"schema {schema}: already done by run {earlier['run_id']} "
                                        f"({earlier['message']}); its backup was verified by preflight"])
    if row is not None:
        d = row["details"]
        verify_archive(Path(d["path"]), sha256=d["sha256"], tables=d["tables"], env=pg_env(dsn))
    done = cleanup.drop_schema_objects(conn, plan, schema, run_id=run_id, user=user, backup_row=row)
    return Outcome(value=done, lines=done)


def report(conn, plan: Plan, *, run_id: str | None = None, folder: str | Path | None = None,
           user: str | None = None) -> Outcome:
    """report.md and report.html (default folder: CONSOLIDATION_REPORT_DIR/<run id>), recorded in
    the ledger; value = their paths."""
    out = write_report(conn, plan, run_id=run_id, folder=folder or None, user=user)
    return Outcome(value=out, lines=[f"report: {out['markdown']}\nreport: {out['html']}"])


def report_data(conn, plan: Plan, run_id: str | None = None) -> dict:
    """What the completion report shows, as data."""
    return collect(conn, plan, run_id)


# ------------------------------------------------------------------ decisions
def decided_line(req) -> str:
    return (f"request {req.id} (4D run {req.run_id}) {req.status} by {req.decided_by} via {req.decided_via} "
            f"(os user {req.os_user or '-'}, db role {req.db_role or '-'}); fingerprint {req.fingerprint}; "
            f"reason: {req.reason}")


def approval_state(conn, plan: Plan, request_id: int, *, validity_hours: float) -> str:
    """'approved' (verified against the data now) or 'pending'; ApprovalRefused otherwise."""
    return approvals.check(conn, plan, request_id, validity_hours=validity_hours)


def expire_request(conn, plan: Plan, request_id: int, message: str) -> bool:
    return approvals.expire(conn, plan, request_id, message)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def status(conn, plan: Plan) -> Outcome:
    """The phases with their latest gates, and any pending approval request with its age."""
    st = approvals.status(conn, plan)
    lines = [f"plan {st['plan']} (sha256 {st['plan_sha256'][:12]})"]
    for ph in st["phases"]:
        gate = ph["gate"]
        g = (f"gate {gate['status']} (run {gate['run_id']}, {gate['finished_at']:%Y-%m-%d %H:%M:%S %Z})"
             if gate else "no gate yet")
        if gate and gate["status"] != "success" and gate.get("message"):
            g += f": {' '.join(str(gate['message']).split())[:200]}"
        last = ph["last"]
        tail = (f"; last: {last['kind']} {last['name']} {last['status']} (run {last['run_id']})"
                if last and not (gate and last["kind"] == "gate") else "")
        lines.append(f"  {ph['phase']}  {ph['dag'] or '-':<28} {g}{tail}")
    if st["pending"]:
        for r in st["pending"]:
            lines.append(f"pending request {r['id']} (4D run {r['run_id']}, asked by {r['requested_by'] or '-'}, "
                         f"{_age(r['age_seconds'])} ago): fingerprint {r['fingerprint']}")
        lines.append("decide: Browse > Required Actions in the Airflow UI, or consolidation approve|reject "
                     "--user NAME --reason TEXT (as an assigned approver, through Airflow's REST API)")
    else:
        latest = st["latest_request"]
        tail = ""
        if latest:
            tail = f" (latest: request {latest['id']} {latest['status']}"
            if latest["decided_by"]:
                tail += f" by {latest['decided_by']} via {latest['decided_via']}"
            tail += ")"
        lines.append(f"no pending approval request{tail}")
    rolled = ledger.rows(conn, plan, "kind = 'rollback' AND status = 'success'") if ledger.tool_tables_exist(
        conn, plan) else []
    st["rollback"] = rolled[-1] if rolled else None
    if rolled:
        r = rolled[-1]
        repointed = [d for d in (r["details"] or {}).get("undone", []) if d.startswith("registry: ")]
        lines.append(f"rolled back by run {r['run_id']} ({r['triggered_by'] or '-'}) at "
                     f"{r['finished_at']:%Y-%m-%d %H:%M:%S %Z}: {r['message']}"
                     + (f"; {repointed[0]}" if repointed else ""))
    held = leases.current(conn, plan)
    st["lease"] = held.as_dict() if held else None
    lines.append(f"lease: {held.holder()}, last heartbeat {held.heartbeat_age:.0f} s ago"
                 + (", a task of it is running" if held.connected else "") if held else "lease: free (no phase running)")
    st["interrupted"] = interruptions(conn, plan)
    for r in st["interrupted"][-10:]:
        lines.append(f"interrupted: {describe(r)}")
    return Outcome(lines=lines, data=st)


# ------------------------------------------------------------------ rollback
def rollback_assess(conn, plan: Plan) -> Outcome:
    state = rollback.assess(conn, plan)
    conn.commit()
    return Outcome(value={"needs_restore": state["needs_restore"], "ddl": len(state["ddl"]),
                          "undo_rows": state["undo_rows"]}, data=state,
                   lines=[f"legacy schemas to restore from their backup: {state['needs_restore'] or 'none'}",
                          f"4A changes to undo: {len(state['ddl'])}; undo-log rows: {state['undo_rows']}"])


def rollback_restore(dsn: str, plan: Plan, *, run_id: str, user: str | None) -> Outcome:
    out = rollback.restore_legacy(dsn, plan, run_id=run_id, user=user)
    return Outcome(value=out, lines=[out.get("note") or f"restored {', '.join(out['restored'])} from "
                                                        f"{out['archives']}; every table equals its backup checksum"])


def rollback_undo(conn, plan: Plan, *, run_id: str, user: str | None, restore_only: bool = False) -> Outcome:
    """Remove what 4A/4B created; `restore_only`: nothing (the consolidated tables are kept)."""
    if restore_only:
        return Outcome(value={"skipped": True},
                       lines=["restore_only: the consolidated tables are kept (4A/4B not undone)"])
    out = rollback.undo_migration(conn, plan, run_id=run_id, user=user)
    lines = list(out.get("undone", [])) + ([out["note"]] if out.get("note") else [])
    return Outcome(value={"undone": len(out.get("undone", []))}, lines=lines, data=out)
