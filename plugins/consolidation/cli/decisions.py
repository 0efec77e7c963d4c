"""The two ways a person gives a cleanup decision, and the status they decide from.

* Airflow UI: trigger the DAG phase4d_cleanup_approval with its form (request,
  decision, reason). The approver is the authenticated user who triggered that run,
  never a name typed into the form or the conf.
* Command line: `python -m consolidation approve|reject --by NAME --reason TEXT
  [--request ID]`, recorded with the operating-system user and the database role.

`python -m consolidation status` shows the phases, their latest gates and any pending
request with its fingerprint and age.
"""
from __future__ import annotations

import json
import sys

FORM_KEYS = ("request", "decision", "reason")


# ------------------------------------------------------------------ UI (task body)
def ui_decision_task(**context) -> dict:
    """Body of phase4d_cleanup_approval's task: record the form's decision as its triggering user."""
    from consolidation.phases.approvals import ApprovalRefused, decide
    from consolidation.core.ledger import operator_name
    from consolidation.core.plan import load_plan
    from consolidation.airflow.runtime import run_info, task_connection

    info = run_info(context)
    dag_run = context["dag_run"]
    user = getattr(dag_run, "triggering_user_name", None)
    conf = getattr(dag_run, "conf", None) or {}
    ignored = sorted(k for k in conf if k not in FORM_KEYS)
    if ignored:
        # e.g. {"by": "mallory"}: who decides is who triggered, as Airflow authenticated them
        print(f"ignored conf keys {ignored}: the approver recorded is the user who triggered this run "
              f"({user or 'nobody'}), not a name given in the conf")
    if not user:
        raise ApprovalRefused(f"run {info.run_id} has no triggering user, so nobody can be recorded as the "
                              "approver; trigger it from the Airflow UI/API as an authenticated user, or use "
                              "`python -m consolidation approve|reject --by NAME --reason TEXT`")
    form = context.get("params") or {}
    request = form.get("request")
    try:
        request_id = int(request) if request not in (None, "") else None
    except (TypeError, ValueError):
        raise ApprovalRefused(f"request {request!r} is not a request id; leave it empty for the pending one") from None
    print(f"decision {form.get('decision')!r} on request {request_id or 'pending'} by {user}: {form.get('reason')!r}")
    with task_connection() as (_, conn):
        req = decide(conn, load_plan(), request_id=request_id, decision=form.get("decision"), by=user, via="ui",
                     reason=form.get("reason") or "", os_user=operator_name(), decision_run_id=info.run_id)
    print(_decided_line(req))
    return {"request_id": req.id, "status": req.status, "fingerprint": req.fingerprint, "decided_by": req.decided_by}


def _decided_line(req) -> str:
    return (f"request {req.id} (4D run {req.run_id}) {req.status} by {req.decided_by} via {req.decided_via} "
            f"(os user {req.os_user or '-'}, db role {req.db_role or '-'}); fingerprint {req.fingerprint}; "
            f"reason: {req.reason}")


# ------------------------------------------------------------------ CLI
def _add_decision_parser(subparsers, name: str, verb: str) -> None:
    p = subparsers.add_parser(
        name, help=f"{verb} the pending cleanup request",
        description=f"{verb.capitalize()} a Phase 4D cleanup request. Recorded with --by, the operating-system "
                    "user and the database role; exits 1 with the reason when refused.")
    p.add_argument("--by", required=True, help="who decides (recorded beside the OS user and database role)")
    p.add_argument("--reason", required=True, help="why (at least 5 characters): what was reviewed")
    p.add_argument("--request", type=int, default=None, help="request id (default: the single pending request)")
    p.set_defaults(func=lambda args: _decide(args, name))


def register_approve(subparsers) -> None:
    _add_decision_parser(subparsers, "approve", "approve")


def register_reject(subparsers) -> None:
    _add_decision_parser(subparsers, "reject", "reject")


def _decide(args, decision: str) -> int:
    from consolidation.core import db
    from consolidation.phases.approvals import ApprovalRefused, decide
    from consolidation.core.ledger import operator_name
    from consolidation.core.plan import load_plan

    plan = load_plan()
    with db.connect() as conn:
        try:
            req = decide(conn, plan, request_id=args.request, decision=decision, by=args.by, via="cli",
                         reason=args.reason, os_user=operator_name())
        except ApprovalRefused as exc:
            print(f"{decision} refused: {' '.join(str(exc).split())}", file=sys.stderr)
            return 1
    print(_decided_line(req))
    if req.status == "approved":
        print(f"valid until {req.valid_until:%Y-%m-%d %H:%M:%S %Z}, as long as the data keeps this fingerprint")
    return 0


def register_status(subparsers) -> None:
    p = subparsers.add_parser("status", help="phases, their latest gates, and pending cleanup approvals")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_status)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _status(args) -> int:
    from consolidation.core import db
    from consolidation.phases.approvals import status
    from consolidation.core.plan import load_plan

    plan = load_plan()
    with db.connect() as conn:
        conn.read_only = True
        st = status(conn, plan)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    print(f"plan {st['plan']} (sha256 {st['plan_sha256'][:12]})")
    for ph in st["phases"]:
        gate = ph["gate"]
        g = (f"gate {gate['status']} (run {gate['run_id']}, {gate['finished_at']:%Y-%m-%d %H:%M:%S %Z})"
             if gate else "no gate yet")
        if gate and gate["status"] != "success" and gate.get("message"):
            g += f": {' '.join(str(gate['message']).split())[:200]}"
        last = ph["last"]
        tail = (f"; last: {last['kind']} {last['name']} {last['status']} (run {last['run_id']})"
                if last and not (gate and last["kind"] == "gate") else "")
        print(f"  {ph['phase']}  {ph['dag'] or '-':<28} {g}{tail}")
    if st["pending"]:
        for r in st["pending"]:
            print(f"pending request {r['id']} (4D run {r['run_id']}, asked by {r['requested_by'] or '-'}, "
                  f"{_age(r['age_seconds'])} ago): fingerprint {r['fingerprint']}")
        print("decide: python -m consolidation approve|reject --by NAME --reason TEXT "
              "(or trigger phase4d_cleanup_approval in the Airflow UI)")
    else:
        latest = st["latest_request"]
        tail = ""
        if latest:
            tail = f" (latest: request {latest['id']} {latest['status']}"
            if latest["decided_by"]:
                tail += f" by {latest['decided_by']} via {latest['decided_via']}"
            tail += ")"
        print(f"no pending approval request{tail}")
    return 0
