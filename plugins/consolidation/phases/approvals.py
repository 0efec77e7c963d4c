"""Human approval before anything is dropped: requests, decisions, and their checks.

Phase 4D asks (open_request) with the reconciliation digest of the data it would act
on; a person decides (decide) from the Airflow UI or the command line; the 4D run
waits until check() says 'approved'. An approval is bound to the data, not to a run:
it is refused when the data (or the plan) changed since the request, when it is older
than its validity, and a rejection ends the wait with its reason. Every request and
decision is a row of the approvals table (who, when, why, fingerprint) and a ledger
row of kind 'approval'. Nothing here reads a DAG run's conf or params.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core import ledger
from consolidation.core.catalog import relation_exists
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan

PHASE = "4D"
STATUSES = ("pending", "approved", "rejected", "refused", "superseded", "expired")
VIAS = ("ui", "cli", "api", "airflow")  # airflow: a HITL response Airflow authenticated
DECISIONS = {"approve": "approved", "reject": "rejected"}
DEFAULT_VALIDITY_HOURS = 24.0
REASON_MIN_LENGTH = 5  # a reason says what was reviewed; "ok" is not one
CLEANUP_DAG = "phase4d_legacy_cleanup"


class ApprovalRefused(Refusal):
    """A decision or an approval that must not be used; the message names why and the fix."""


@dataclass
class Request:
    id: int
    run_id: str
    fingerprint: str
    plan_sha256: str
    digest: str
    status: str
    requested_at: datetime | None = None
    requested_by: str | None = None
    decided_by: str | None = None
    decided_via: str | None = None
    os_user: str | None = None
    db_role: str | None = None
    reason: str | None = None
    decided_at: datetime | None = None
    valid_until: datetime | None = None
    decided_in_run: str | None = None  # the approval DAG run that carried a UI decision
    refusal: str | None = None  # why it was refused / expired / superseded
    steps: dict = field(default_factory=dict, repr=False)  # per-step digest at request time

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("steps")
        return d


_COLUMNS = [f.name for f in fields(Request)]


def fingerprint(plan: Plan, digest: dict) -> str:
    """What an approval is bound to: this plan file and the data's reconciliation digest."""
    return hashlib.sha256((plan.sha256 + digest["digest"]).encode()).hexdigest()


def _t(plan: Plan) -> sql.Composed:
    return tool_ident(plan, "approvals")


def ensure_table(conn, plan: Plan) -> None:
    """Create the approvals table (and the ledger, if missing); idempotent, additive only."""
    if not ledger.tool_tables_exist(conn, plan):
        ledger.ensure_tool_tables(conn, plan)
    _, table = plan.tool_table("approvals")
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {t} (
            id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id         text NOT NULL,
            fingerprint    text NOT NULL,
            plan_sha256    text NOT NULL,
            digest         text NOT NULL,
            steps          jsonb NOT NULL,
            status         text NOT NULL DEFAULT 'pending' CHECK (status IN ({statuses})),
            requested_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
            requested_by   text,
            decided_by     text,
            decided_via    text,
            os_user        text,
            db_role        text,
            reason         text,
            decided_at     timestamptz,
            valid_until    timestamptz,
            decided_in_run text,
            refusal        text,
            -- a decision without who, how, when and why is not a decision
            CONSTRAINT {decided_check} CHECK (status NOT IN ('approved', 'rejected') OR
                (decided_by IS NOT NULL AND decided_via IS NOT NULL AND decided_at IS NOT NULL
                 AND length(btrim(reason)) >= {minlen}))
        )""").format(t=_t(plan), statuses=sql.SQL(", ").join(map(sql.Literal, STATUSES)),
                     decided_check=sql.Identifier(f"{table}_decided"), minlen=sql.Literal(REASON_MIN_LENGTH)))
    # the channels, as a named constraint (older tables had ui/cli only: replaced, additive)
    via_check = f"{table}_decided_via_check"
    found = conn.execute("SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c WHERE c.conname = %s "
                         "AND c.conrelid = to_regclass(%s)", (via_check, _t(plan).as_string(conn))).fetchone()
    if found is None or "airflow" not in found[0]:
        conn.execute(sql.SQL("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {c}, ADD CONSTRAINT {c} "
                             "CHECK (decided_via IN ({vias}))").format(
            t=_t(plan), c=sql.Identifier(via_check), vias=sql.SQL(", ").join(map(sql.Literal, VIAS))))
    # at most one request waits for a decision, so "the pending request" is never ambiguous
    conn.execute(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ((status)) WHERE status = 'pending'").format(
        sql.Identifier(f"{table}_one_pending"), _t(plan)))


def table_exists(conn, plan: Plan) -> bool:
    return relation_exists(conn, *plan.tool_table("approvals"))


def _lock(conn, plan: Plan) -> None:
    # serialises writers (requests, decisions); readers are not blocked
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(_t(plan)))


def _select(conn, plan: Plan, where: sql.Composable, params: tuple = (), lock: bool = False) -> list[Request]:
    cur = conn.execute(sql.SQL("SELECT {cols} FROM {t} WHERE {w} ORDER BY id{lock}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, _COLUMNS)), t=_t(plan), w=where,
        lock=sql.SQL(" FOR UPDATE") if lock else sql.SQL("")), params)
    return [Request(**dict(zip(_COLUMNS, r))) for r in cur.fetchall()]


def get(conn, plan: Plan, request_id: int) -> Request | None:
    if not table_exists(conn, plan):
        return None
    found = _select(conn, plan, sql.SQL("id = %s"), (request_id,))
    return found[0] if found else None


def pending(conn, plan: Plan) -> list[Request]:
    if not table_exists(conn, plan):
        return []
    return _select(conn, plan, sql.SQL("status = 'pending'"))


def _ledger(conn, plan: Plan, req: Request, *, name: str, status: str, by: str | None, message: str,
            **details: Any) -> None:
    ledger.record(conn, plan, status=status, message=message, run_id=req.run_id, phase=PHASE,
                  kind="approval", name=name, triggered_by=by,
                  details={"request_id": req.id, "fingerprint": req.fingerprint,
                           "plan_sha256": req.plan_sha256, **details})


# ------------------------------------------------------------------ request
def open_request(conn, plan: Plan, *, run_id: str, user: str | None, digest: dict) -> Request:
    """Ask for a decision on the data as `digest` (reconcile.digest) describes it.

    Older pending requests are superseded: a decision always concerns the latest state.
    Committed, so a person can decide while the asking run waits.
    """
    ensure_table(conn, plan)
    _lock(conn, plan)
    fp = fingerprint(plan, digest)
    # supersede first (the unique pending index allows one), then insert
    old = _select(conn, plan, sql.SQL("status = 'pending'"), lock=True)
    for req in old:
        conn.execute(sql.SQL("UPDATE {} SET status = 'superseded', refusal = %s WHERE id = %s").format(_t(plan)),
                     (f"superseded by a newer request of run {run_id}", req.id))
    row = conn.execute(sql.SQL("""
        INSERT INTO {t} (run_id, fingerprint, plan_sha256, digest, steps, requested_by)
        VALUES (%s, %s, %s, %s, %s::jsonb, %s) RETURNING id""").format(t=_t(plan)),
        (run_id, fp, plan.sha256, digest["digest"], json.dumps(digest.get("steps", {}), default=str), user)
    ).fetchone()
    req = _select(conn, plan, sql.SQL("id = %s"), (row[0],))[0]
    for o in old:
        conn.execute(sql.SQL("UPDATE {} SET refusal = %s WHERE id = %s").format(_t(plan)),
                     (f"superseded by request {req.id} (run {run_id}); decide on that one", o.id))
        o.status = "superseded"
        _ledger(conn, plan, o, name="approval_superseded", status=ledger.REFUSED, by=user,
                message=f"request {o.id} superseded by request {req.id}", superseded_by=req.id)
    from consolidation.checks import quarantine  # the approval covers the quarantined rows, stated per step

    held = quarantine.summary(conn, plan)
    _ledger(conn, plan, req, name="approval_request", status=ledger.SUCCESS, by=user,
            message=f"request {req.id}: cleanup waits for a decision on fingerprint {fp[:12]}"
                    + "".join(f"; {line}" for line in quarantine.lines(held)),
            superseded=[o.id for o in old], quarantine=held)
    conn.commit()
    return req


# ------------------------------------------------------------------ decide
def decide(conn, plan: Plan, *, request_id: int | None, decision: str, by: str, via: str, reason: str,
           os_user: str | None = None, db_role: str | None = None,
           decision_run_id: str | None = None) -> Request:
    """Record a person's decision on a pending request (None = the single pending one).

    `by` is who decided as the channel authenticated them (4D's approvals come from Airflow's
    HITL response through hitl.response; this path remains for the rollback's own rejection).
    db_role defaults to the session's current_user. A refused attempt raises
    ApprovalRefused and is itself recorded in the ledger (decision_refused).
    """
    try:
        return _decide(conn, plan, request_id=request_id, decision=decision, by=by, via=via, reason=reason,
                       os_user=os_user, db_role=db_role, decision_run_id=decision_run_id)
    except ApprovalRefused as exc:
        conn.rollback()
        if ledger.tool_tables_exist(conn, plan):
            ledger.record(conn, plan, status=ledger.REFUSED, message=str(exc),
                          run_id=decision_run_id or f"{via}:{os_user or ledger.operator_name()}", phase=PHASE,
                          kind="approval", name="decision_refused", triggered_by=by or None,
                          details={"request_id": request_id, "decision": decision, "via": via,
                                   "os_user": os_user, "reason_given": reason})
            conn.commit()
        raise


def _decide(conn, plan: Plan, *, request_id, decision, by, via, reason, os_user, db_role,
            decision_run_id) -> Request:
    if decision not in DECISIONS:
        raise ApprovalRefused(f"unknown decision {decision!r}; use approve or reject")
    if via not in VIAS:
        raise ApprovalRefused(f"unknown channel {via!r}; use one of {VIAS}")
    if not by or not str(by).strip():
        raise ApprovalRefused("a decision needs the name of who decided")
    reason = (reason or "").strip()
    if len(reason) < REASON_MIN_LENGTH:
        raise ApprovalRefused(f"a decision needs a reason (at least {REASON_MIN_LENGTH} characters): "
                              "say what was reviewed")
    if not table_exists(conn, plan):
        raise ApprovalRefused(f"no approval request exists yet ({_t(plan).as_string(conn)} is missing); "
                              f"trigger {CLEANUP_DAG}, which asks for one")
    _lock(conn, plan)
    if request_id is None:
        found = _select(conn, plan, sql.SQL("status = 'pending'"), lock=True)
        if not found:
            conn.rollback()
            raise ApprovalRefused(f"no pending approval request; trigger {CLEANUP_DAG}, which asks for one "
                                  "(`python -m consolidation status` lists requests)")
        if len(found) > 1:  # not reachable with the one-pending index; kept for safety
            conn.rollback()
            raise ApprovalRefused(f"{len(found)} requests are pending ({', '.join(str(r.id) for r in found)}); "
                                  "name one with --request")
        req = found[0]
    else:
        found = _select(conn, plan, sql.SQL("id = %s"), (request_id,), lock=True)
        if not found:
            conn.rollback()
            raise ApprovalRefused(f"no approval request {request_id}; `python -m consolidation status` "
                                  "lists the pending one")
        req = found[0]
    if req.status != "pending":
        conn.rollback()
        already = (f"{req.status} by {req.decided_by} ({req.decided_via}) at {req.decided_at:%Y-%m-%d %H:%M:%S %Z}"
                   if req.decided_at else req.status)
        extra = f": {req.refusal}" if req.refusal else ""
        raise ApprovalRefused(f"request {req.id} is not pending (already {already}{extra}); "
                              f"a decision concerns a pending request - trigger {CLEANUP_DAG} for a new one")
    status = DECISIONS[decision]
    row = conn.execute(sql.SQL("""
        UPDATE {t} SET status = %s, decided_by = %s, decided_via = %s, os_user = %s,
               db_role = coalesce(%s::text, current_user::text), reason = %s, decided_at = clock_timestamp(),
               valid_until = CASE WHEN %s = 'approved'
                                  THEN clock_timestamp() + make_interval(secs => %s) END,
               decided_in_run = %s
         WHERE id = %s AND status = 'pending' RETURNING id""").format(t=_t(plan)),
        (status, by, via, os_user, db_role, reason, status, DEFAULT_VALIDITY_HOURS * 3600,
         decision_run_id, req.id)).fetchone()
    if row is None:  # lost a race despite the lock: never record a decision twice
        conn.rollback()
        raise ApprovalRefused(f"request {req.id} was decided concurrently; run `python -m consolidation status`")
    req = _select(conn, plan, sql.SQL("id = %s"), (req.id,))[0]
    _ledger(conn, plan, req, name=decision, status=ledger.SUCCESS if status == "approved" else ledger.REFUSED,
            by=by, message=f"request {req.id} {status} by {by} via {via}: {reason}",
            decided_via=via, os_user=req.os_user, db_role=req.db_role, reason=reason,
            decided_in_run=decision_run_id)
    conn.commit()
    return req


# ------------------------------------------------------------------ check
def check(conn, plan: Plan, request_id: int, *, validity_hours: float = DEFAULT_VALIDITY_HOURS) -> str:
    """'approved' (verified against the data now) or 'pending'; otherwise ApprovalRefused.

    Refused: rejected (with the reason and who), superseded, expired (approved longer
    ago than validity_hours) or stale (the fingerprint recomputed from the data or the
    plan differs from the request's; the changed steps are named). Expired and stale
    requests are marked so in the table and the ledger.
    """
    req = get(conn, plan, request_id)
    if req is None:
        raise ApprovalRefused(f"no approval request {request_id} in {_t(plan).as_string(conn)}; "
                              f"trigger {CLEANUP_DAG} again for a new request")
    if req.status == "pending":
        return "pending"
    if req.status == "rejected":
        raise ApprovalRefused(
            f"request {req.id} was rejected by {req.decided_by} via {req.decided_via} at "
            f"{req.decided_at:%Y-%m-%d %H:%M:%S %Z}: {req.reason}; nothing is dropped. "
            f"Address the reason, then trigger {CLEANUP_DAG} again for a new request")
    if req.status != "approved":
        raise ApprovalRefused(f"request {req.id} is {req.status}: {req.refusal or 'no longer usable'}; "
                              f"trigger {CLEANUP_DAG} again for a new request")

    age_h, = conn.execute(sql.SQL("SELECT extract(epoch FROM clock_timestamp() - decided_at) / 3600 "
                                  "FROM {} WHERE id = %s").format(_t(plan)), (req.id,)).fetchone()
    if float(age_h) > validity_hours:
        msg = (f"approval of request {req.id} by {req.decided_by} at {req.decided_at:%Y-%m-%d %H:%M:%S %Z} "
               f"is {float(age_h):.1f} h old, older than its validity of {validity_hours:g} h; "
               f"trigger {CLEANUP_DAG} again and decide on the new request")
        _refuse(conn, plan, req, "expired", msg, name="approval_expired", age_hours=float(age_h))
        raise ApprovalRefused(msg)

    if req.plan_sha256 != plan.sha256:
        msg = (f"approval of request {req.id} was given for plan sha256 {req.plan_sha256[:12]}, "
               f"the plan is now {plan.sha256[:12]}; trigger {CLEANUP_DAG} again so the change is reviewed")
        _refuse(conn, plan, req, "refused", msg, name="approval_refused")
        raise ApprovalRefused(msg)

    from consolidation.checks.reconcile import digest as compute_digest

    now = compute_digest(conn, plan)
    now_fp = fingerprint(plan, now)
    if now_fp != req.fingerprint:
        changed = changed_steps(req.steps, now["steps"])
        labels = []
        for name in changed:
            step = next((s for s in plan.steps if s.name == name), None)
            labels.append(f"{name} ({step.source}{' -> ' + step.target if step and step.target else ''})"
                          if step else name)
        msg = (f"approval of request {req.id} is stale: the data changed since it was requested "
               f"(fingerprint {req.fingerprint[:12]} approved, {now_fp[:12]} now); changed: "
               f"{', '.join(labels) or 'digest differs'}. Re-run the 4B gate if needed, then trigger "
               f"{CLEANUP_DAG} again and decide on the new request")
        _refuse(conn, plan, req, "refused", msg, name="approval_refused", changed_steps=changed,
                fingerprint_now=now_fp)
        raise ApprovalRefused(msg)

    _ledger(conn, plan, req, name="approval_verified", status=ledger.SUCCESS, by=req.decided_by,
            message=f"approval of request {req.id} by {req.decided_by} verified: the data still has "
                    f"fingerprint {now_fp[:12]}, approved {float(age_h):.1f} h ago (validity {validity_hours:g} h)")
    conn.commit()
    return "approved"


def changed_steps(before: dict, after: dict) -> list[str]:
    """Step names whose digest entry differs (or appears / disappears)."""
    norm = json.loads(json.dumps(after, default=str))  # same JSON types as the stored jsonb
    return sorted(n for n in set(before) | set(norm) if before.get(n) != norm.get(n))


def _refuse(conn, plan: Plan, req: Request, status: str, msg: str, *, name: str, **details) -> None:
    conn.execute(sql.SQL("UPDATE {} SET status = %s, refusal = %s WHERE id = %s AND status = 'approved'").format(
        _t(plan)), (status, msg, req.id))
    req.status, req.refusal = status, msg
    _ledger(conn, plan, req, name=name, status=ledger.REFUSED, by=req.decided_by, message=msg, **details)
    conn.commit()


def expire(conn, plan: Plan, request_id: int, message: str) -> bool:
    """Mark a still-pending request expired (its run stopped waiting); False if it was not pending."""
    if not table_exists(conn, plan):
        return False
    found = conn.execute(sql.SQL("UPDATE {} SET status = 'expired', refusal = %s WHERE id = %s AND status = 'pending' "
                                 "RETURNING id").format(_t(plan)), (message, request_id)).fetchone()
    if found:
        req = _select(conn, plan, sql.SQL("id = %s"), (request_id,))[0]
        _ledger(conn, plan, req, name="approval_expired", status=ledger.REFUSED, by=None, message=message)
    conn.commit()
    return bool(found)


# ------------------------------------------------------------------ status
PHASES = ("4A", "4B", "4C", "4D")


def status(conn, plan: Plan) -> dict:
    """Phases with their latest gate and latest ledger activity; pending and latest requests."""
    from consolidation.checks.gates import DAG_OF

    out: dict[str, Any] = {"plan": plan.name, "plan_sha256": plan.sha256, "phases": [], "pending": [],
                           "latest_request": None}
    has_ledger = ledger.tool_tables_exist(conn, plan)
    for phase in PHASES:
        entry: dict[str, Any] = {"phase": phase, "dag": DAG_OF.get(phase), "gate": None, "last": None}
        if has_ledger:
            gate = ledger.latest(conn, plan, phase=phase, kind="gate")
            if gate:
                entry["gate"] = {k: gate[k] for k in ("status", "run_id", "finished_at", "message", "triggered_by")}
            cur = conn.execute(sql.SQL(
                "SELECT kind, name, status, run_id, coalesce(finished_at, started_at) AS at FROM {} "
                "WHERE phase = %s ORDER BY id DESC LIMIT 1").format(tool_ident(plan, "ledger")), (phase,))
            row = cur.fetchone()
            if row:
                entry["last"] = dict(zip([d.name for d in cur.description], row))
        out["phases"].append(entry)
    if table_exists(conn, plan):
        cur = conn.execute(sql.SQL(
            "SELECT id, extract(epoch FROM clock_timestamp() - requested_at) FROM {} "
            "WHERE status = 'pending' ORDER BY id").format(_t(plan)))
        ages = dict(cur.fetchall())
        for req in pending(conn, plan):
            out["pending"].append(req.as_dict() | {"age_seconds": float(ages.get(req.id, 0))})
        latest = _select(conn, plan, sql.SQL("id = (SELECT max(id) FROM {})").format(_t(plan)))
        if latest:
            out["latest_request"] = latest[0].as_dict()
    return out
