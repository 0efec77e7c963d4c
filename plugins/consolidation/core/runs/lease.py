"""The run lease: one phase that changes the database (4A, 4B, 4C, 4D, rollback) at a time.

A lease spans every task of one DAG run (4D's across the approval wait), so it cannot be
one session's advisory lock. It is a ledger row (kind 'run', name 'lease', status running
while held) naming the holder (phase, DAG, run id, user, since) with a heartbeat, plus an
advisory lock that each task of the holding run keeps while it works (`hold`). The holder
is alive while a backend holds that lock, or while its heartbeat is younger than the
bound (CONSOLIDATION_LEASE_STALE_SECONDS, default 600): between two tasks nobody is
connected, and a waiting sensor renews the heartbeat at each poke. A 4D run parked on its
approval (Airflow's human-in-the-loop: no task connected, no heartbeat) is alive while its
cleanup request is pending, until the wait's deadline the approval task recorded
(`renew(waiting_for=, until=)`; none: until the request is decided or expired). The approvals
table is read here in SQL (core cannot import phases).

acquire / renew / release take the run id, so any task (or a sensor) of the run can call
them. A conflicting run is refused at its start in one line naming the holder; a stale
lease (holder gone) is taken over and the takeover recorded (the old row becomes
'interrupted', with the entries of its run whose process is gone). `release_by_hand` ends a
lease whose run is gone for good (`consolidation lease release`), refused while a task of it
is connected or it waits on a pending request.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core import ledger
from consolidation.core.catalog import relation_exists
from consolidation.core.plan import Plan
from consolidation.core.runs.interrupted import mark_interrupted

LEASE = "lease"
PHASES = ("4A", "4B", "4C", "4D", "rollback")
# first key of the tool's two-key advisory locks ("CONS"); the second is hashtext(run id)
LOCK_CLASS = 0x434F4E53
DEFAULT_STALE_SECONDS = 600.0


class LeaseRefused(Refusal):
    """Another run holds the database's lease (or this run lost it); one line naming the holder."""


@dataclass
class Lease:
    id: int
    phase: str
    dag: str | None
    run_id: str
    user: str | None
    since: datetime
    heartbeat_at: datetime | None
    heartbeat_age: float  # seconds
    connected: bool  # a task of the holding run holds the advisory lock now
    waiting_request: int | None = None  # the run's pending cleanup approval request
    waiting_until: datetime | None = None  # the deadline of that wait (None: until it is decided)
    waiting: bool = False  # pending and its deadline not passed: alive without a heartbeat

    def stale(self, bound: float) -> bool:
        return not self.connected and not self.waiting and self.heartbeat_age > bound

    def wait(self) -> str:
        """'waiting for approval until <expiry> (cleanup request N)', or ''."""
        if not self.waiting:
            return ""
        until = (f"{self.waiting_until:%Y-%m-%d %H:%M:%S %Z}" if self.waiting_until
                 else "it is decided (no approval timeout)")
        return f"waiting for approval until {until} (cleanup request {self.waiting_request})"

    def holder(self) -> str:
        return (f"{self.dag or 'phase ' + self.phase} run {self.run_id} (phase {self.phase}, user {self.user or '-'}) "
                f"since {self.since:%Y-%m-%d %H:%M:%S %Z}" + (f", {self.wait()}" if self.waiting else ""))

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("id", "phase", "dag", "run_id", "user", "since", "heartbeat_at",
                                               "heartbeat_age", "connected", "waiting_request", "waiting_until",
                                               "waiting")}


def stale_seconds() -> float:
    raw = os.environ.get("CONSOLIDATION_LEASE_STALE_SECONDS")
    try:
        return float(raw) if raw else DEFAULT_STALE_SECONDS
    except ValueError:
        raise LeaseRefused(f"CONSOLIDATION_LEASE_STALE_SECONDS={raw!r} is not a number of seconds; "
                           f"unset it (default {DEFAULT_STALE_SECONDS:g}) or set e.g. 600") from None


def _key(run_id: str) -> sql.Composed:
    return sql.SQL("{}, hashtext({})").format(sql.Literal(LOCK_CLASS), sql.Literal(run_id))


def current(conn, plan: Plan) -> Lease | None:
    """The lease held now (the running lease row), or None."""
    if not ledger.tool_tables_exist(conn, plan):
        return None
    # the run's pending cleanup request (the approvals table exists once 4D asked)
    pending = (sql.SQL("(SELECT max(a.id) FROM {} a WHERE a.run_id = l.run_id AND a.status = 'pending')").format(
        ledger.tool_ident(plan, "approvals")) if relation_exists(conn, *plan.tool_table("approvals"))
        else sql.SQL("NULL::bigint"))
    row = conn.execute(sql.SQL("""
        SELECT w.*, w.request IS NOT NULL AND (w.until IS NULL OR w.until > clock_timestamp()) FROM (
        SELECT l.id, l.phase, l.details->>'dag', l.run_id, l.triggered_by, l.started_at,
               (l.details->>'heartbeat_at')::timestamptz,
               extract(epoch FROM clock_timestamp() - coalesce((l.details->>'heartbeat_at')::timestamptz, l.started_at)),
               EXISTS (SELECT 1 FROM pg_locks k WHERE k.locktype = 'advisory' AND k.granted
                          AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND k.classid = {cls}::bigint::oid AND k.objsubid = 2
                          AND k.objid = ((hashtext(l.run_id)::bigint + 4294967296) % 4294967296)::oid),
               p.request,
               CASE WHEN (l.details->'waiting'->>'request_id')::bigint = p.request
                    THEN (l.details->'waiting'->>'until')::timestamptz END AS until
          FROM {t} l CROSS JOIN LATERAL (SELECT {pending} AS request) p
         WHERE l.kind = 'run' AND l.name = {lease} AND l.status = 'running'
         ORDER BY l.id DESC LIMIT 1) w""").format(
        t=ledger.tool_ident(plan, "ledger"), cls=sql.Literal(LOCK_CLASS), lease=sql.Literal(LEASE),
        pending=pending)).fetchone()
    if row is None:
        return None
    return Lease(row[0], row[1], row[2], row[3], row[4], row[5], row[6], float(row[7]), bool(row[8]),
                 row[9], row[10], bool(row[11]))


def _heartbeat(conn, plan: Plan, lease_id: int, waiting: dict | None = None) -> None:
    conn.execute(sql.SQL("UPDATE {} SET details = details || jsonb_build_object('heartbeat_at', clock_timestamp()) "
                         "|| %s::jsonb WHERE id = %s").format(ledger.tool_ident(plan, "ledger")),
                 (json.dumps({"waiting": waiting} if waiting else {}), lease_id))


def acquire(conn, plan: Plan, *, phase: str, run_id: str, user: str | None, dag: str | None = None,
            take_over: str | None = None, bound: float | None = None) -> Lease:
    """Take the database's lease for `run_id` (again, if it holds it already: re-entrant).
    Refused (LeaseRefused) while another live run holds it; a stale one is taken over, as is
    the lease of run `take_over` when none of its tasks is connected (a rollback that just
    rejected that 4D run's pending request). Marks interrupted entries on the way. Committed."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r} for a lease; one of {PHASES}")
    bound = stale_seconds() if bound is None else bound
    if not ledger.tool_tables_exist(conn, plan):
        ledger.ensure_tool_tables(conn, plan)
        conn.commit()
    mark_interrupted(conn, plan, by=run_id)
    # one acquirer at a time per database (transaction-level: released at commit)
    conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_CLASS)))
    held = current(conn, plan)
    if held is not None and held.run_id == run_id:
        _heartbeat(conn, plan, held.id)
        conn.commit()
        return current(conn, plan)
    if held is not None:
        forced = take_over is not None and held.run_id == take_over and not held.connected
        if not held.stale(bound) and not forced:
            conn.rollback()
            how = (f"reject request {held.waiting_request} (`consolidation reject`) or wait until the run ends "
                   "or its wait expires" if held.waiting and not held.connected else
                   f"wait until that run ends (a run whose tasks are all gone is taken over after {bound:g} s "
                   "without a heartbeat)")
            raise LeaseRefused(
                f"{phase} refused: the database is in use by {held.holder()}, last heartbeat "
                f"{held.heartbeat_age:.0f} s ago{' (a task of it is running now)' if held.connected else ''}; {how}")
        why = (f"taken over by {dag or phase} run {run_id}: " +
               ("its pending cleanup request was cancelled by this run" if forced else
                f"no task of it connected and no heartbeat for {held.heartbeat_age:.0f} s (bound {bound:g} s)"))
        conn.execute(sql.SQL("UPDATE {} SET status = %s, finished_at = clock_timestamp(), message = %s, "
                             "details = details || %s::jsonb WHERE id = %s").format(ledger.tool_ident(plan, "ledger")),
                     (ledger.INTERRUPTED, f"lease of {held.holder()} {why}",
                      json.dumps({"taken_over_by": run_id}), held.id))
        ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=phase, kind="run",
                      name="lease_takeover", triggered_by=user,
                      message=f"took over the lease of {held.holder()}: {why}",
                      details={"previous": held.as_dict(), "forced": forced})
    entry = ledger.open_entry(conn, plan, run_id=run_id, phase=phase, kind="run", name=LEASE, triggered_by=user,
                              details={"dag": dag, "stale_after_seconds": bound})
    _heartbeat(conn, plan, entry.id)
    conn.commit()
    return current(conn, plan)


def renew(conn, plan: Plan, *, run_id: str, phase: str | None = None, waiting_for: int | None = None,
          until: datetime | None = None) -> Lease:
    """The heartbeat of `run_id`'s lease; LeaseRefused when the run does not hold it (never
    had it, released it, or it was taken over). `waiting_for`: the run parks on that cleanup
    request now, alive until `until` (None: until it is decided). Committed."""
    held = current(conn, plan)
    if held is None or held.run_id != run_id:
        conn.rollback()
        who = f"it is held by {held.holder()}" if held else "nobody holds it"
        raise LeaseRefused(f"{phase or 'this phase'} stopped: run {run_id} does not hold the database's lease "
                           f"({who}); nothing more is changed by this run - trigger it again")
    waiting = ({"request_id": int(waiting_for), "until": until.isoformat() if until else None}
               if waiting_for is not None else None)
    _heartbeat(conn, plan, held.id, waiting)
    conn.commit()
    return current(conn, plan)


def release(conn, plan: Plan, *, run_id: str, message: str | None = None) -> bool:
    """End `run_id`'s lease (False when it holds none). Committed."""
    held = current(conn, plan)
    if held is None or held.run_id != run_id:
        conn.rollback()
        return False
    ledger.Entry(plan, held.id).finish(conn, ledger.SUCCESS, message or f"released by run {run_id}")
    conn.commit()
    return True


def release_by_hand(conn, plan: Plan, *, run_id: str, by: str, reason: str | None = None) -> Lease:
    """End the lease of run `run_id` whose run is gone for good (a person says so): the lease
    row becomes 'interrupted' with who and why, and a 'lease_release' row records it.
    LeaseRefused (one line, how to proceed) when the run holds no lease, a task of it is
    connected, or it waits on a pending cleanup request. Committed; returns the lease ended."""
    mark_interrupted(conn, plan, by=f"lease release by {by}")
    conn.execute(sql.SQL("SELECT pg_advisory_xact_lock({}, 0)").format(sql.Literal(LOCK_CLASS)))
    held = current(conn, plan)
    refusal = None
    if held is None or held.run_id != run_id:
        refusal = (f"run {run_id} does not hold the database's lease ("
                   + (f"it is held by {held.holder()}" if held else "nobody holds it")
                   + "); `consolidation lease` shows the holder")
    elif held.connected:
        refusal = (f"a task of run {run_id} is working now (it holds the run's advisory lock); wait until it "
                   "ends, or stop that task in Airflow first")
    elif held.waiting:
        refusal = (f"run {run_id} is {held.wait()}; reject request {held.waiting_request} "
                   "(`consolidation reject`), or wait until the wait expires")
    if refusal:
        conn.rollback()
        raise LeaseRefused(f"lease release refused: {refusal}")
    why = f"released by hand by {by}" + (f": {reason}" if reason else "")
    conn.execute(sql.SQL("UPDATE {} SET status = %s, finished_at = clock_timestamp(), message = %s, "
                         "details = details || %s::jsonb WHERE id = %s").format(ledger.tool_ident(plan, "ledger")),
                 (ledger.INTERRUPTED, f"lease of {held.holder()} {why}",
                  json.dumps({"released_by": by, "reason": reason}), held.id))
    ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=held.phase, kind="run",
                  name="lease_release", triggered_by=by,
                  message=f"lease of {held.holder()} {why} (last heartbeat {held.heartbeat_age:.0f} s ago)",
                  details={"previous": held.as_dict(), "reason": reason})
    conn.commit()
    return held


@contextmanager
def hold(dsn: str, run_id: str) -> Iterator[None]:
    """The advisory lock that says "a task of run `run_id` is working", held on a connection
    of its own for the duration (shared: tasks of one run may run side by side)."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("SELECT pg_advisory_lock_shared({})").format(_key(run_id)))
        yield
