"""Big copy/union steps in key-range batches, each its own transaction, resumable after a kill.

A step whose plan sets `batch_rows` (or `defaults.batch_rows`) and whose source holds more
rows than that moves them in ranges of the source's primary key, in key order: each batch
is the step's own statement (Action.statement, the anti-join that skips rows already in the
target) over `lo < key <= hi`, and commits together with its progress in the step's ledger
row (details.batches: batches done, last key, rows done, inserted, merged). A process killed
with SIGKILL loses only its open batch; the next run of the step reads the last committed
progress of the step's previous, unfinished ledger row and starts after its last key (the
anti-join makes even a repeated batch harmless). A batch whose statement fails is applied
row by row (the step's per-row path), quarantining only that batch's bad rows.

Batches use no bulk load (phases.load.bulk): foreign keys and indexes stay in place, since
a committed batch must leave the target valid. Each batch prints rows done / total, the
rate and the time left, so the Airflow task log shows the progress.

Test hook: CONSOLIDATION_BATCH_PAUSE (seconds) sleeps after each committed batch, so a test
can kill the process between batches. Nothing else reads it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from consolidation.core import ledger
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.core.spec import TargetSpec, source_ident
from consolidation.phases.load import bulk


@dataclass
class Progress:
    batches: int = 0
    last_key: list[str] | None = None  # the key columns of the last moved row, as text
    rows_done: int = 0
    inserted: int = 0
    merged: int = 0
    resumed_from: int = 0  # batches an earlier, interrupted run committed


def applies(action, step: Step, spec: TargetSpec, read: int) -> bool:
    """The step asks for batches, its action can run them, its source has a key to range
    over, and it holds more rows than one batch."""
    return bool(step.batch_rows and action.batches and spec.source_pks.get(step.name) and read > step.batch_rows)


def key_types(conn, step: Step, pk: list[str]) -> list[str]:
    rows = dict(conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attname = ANY(%s) AND NOT a.attisdropped",
        (source_ident(step).as_string(conn), pk)).fetchall())
    return [rows[c] for c in pk]


def bound(pk: list[str], types: list[str], values: list[str], op: str) -> sql.Composed:
    """ROW(s.k1, s.k2) <op> ROW(CAST('v1' AS t1), ...): literals, so the per-row path (which
    gets its SELECT as text) sees the same range; indexable as a row comparison."""
    return sql.SQL("ROW({}) {} ROW({})").format(
        sql.SQL(", ").join(sql.Identifier("s", c) for c in pk), sql.SQL(op),
        sql.SQL(", ").join(sql.SQL("CAST({} AS {})").format(sql.Literal(v), sql.SQL(t))
                           for v, t in zip(values, types)))


def apply_where(conn, plan: Plan, step: Step, spec: TargetSpec, action, run_id: str, where: sql.Composable,
                applier: sql.Composable) -> tuple[int, int, int]:
    """The step's statement over the source rows matching `where` (alias s), inside the caller's
    transaction; a failing statement is applied row by row (quarantine) over the same rows.
    Returns (rows in the range, inserted, merged). Shared with phases.load.ranges."""
    src = source_ident(step)
    part = sql.SQL("(SELECT * FROM {} AS s WHERE {})").format(src, where)
    n = conn.execute(sql.SQL("SELECT count(*) FROM {} AS s").format(part)).fetchone()[0]
    try:
        with conn.transaction():  # savepoint: a failing range goes row by row
            ins, mer = conn.execute(action.statement(plan, step, spec, part, run_id)).fetchone()
    except psycopg.Error:
        select_sql = sql.SQL("SELECT to_jsonb(s) AS j FROM {} AS s").format(part).as_string(conn)
        one_row = sql.SQL("jsonb_populate_record(NULL::{}, $1)").format(src)
        apply_sql = action.statement(plan, step, spec, one_row, run_id).as_string(conn)
        ins, mer, _ = conn.execute(sql.SQL("SELECT * FROM {}(%s, %s, %s, %s, %s, %s)").format(applier),
                                   (select_sql, apply_sql, run_id, step.name, step.source, step.target)).fetchone()
    return n, ins, mer


def _resume_point(conn, plan: Plan, step: Step, entry_id: int) -> Progress | None:
    """The committed progress of this step's previous ledger row when that run did not finish
    its batches (killed, or failed mid-way); None: start from the first key."""
    row = conn.execute(sql.SQL(
        "SELECT status, details->'batches' FROM {} WHERE phase = '4B' AND kind = 'step' AND name = %s AND id < %s "
        "ORDER BY id DESC LIMIT 1").format(tool_ident(plan, "ledger")), (step.name, entry_id)).fetchone()
    if row is None or row[0] == ledger.SUCCESS or not row[1] or row[1].get("complete"):
        return None
    b = row[1]
    return Progress(batches=b["done"], last_key=b["last_key"], rows_done=b["rows_done"], inserted=b["inserted"],
                    merged=b["merged"], resumed_from=b["done"])


def _record(conn, plan: Plan, entry_id: int, p: Progress, total: int, complete: bool) -> None:
    state = {"done": p.batches, "last_key": p.last_key, "rows_done": p.rows_done, "total": total,
             "inserted": p.inserted, "merged": p.merged, "resumed_from": p.resumed_from, "complete": complete}
    conn.execute(sql.SQL("UPDATE {} SET details = details || jsonb_build_object('batches', %s::jsonb) "
                         "WHERE id = %s").format(tool_ident(plan, "ledger")), (json.dumps(state), entry_id))


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def run(conn, plan: Plan, step: Step, spec: TargetSpec, action, run_id: str, entry_id: int,
        total: int, applier: sql.Composable) -> tuple[int, int, str]:
    """Move the step's rows batch by batch; returns (inserted, merged, path) over all batches,
    those of an interrupted earlier run included. The caller's transaction is committed first."""
    conn.commit()
    src = source_ident(step)
    pk = spec.source_pks[step.name]
    types = key_types(conn, step, pk)
    size = step.batch_rows
    lock = f"consolidation:{step.name}"
    p = _resume_point(conn, plan, step, entry_id)
    if p is None:
        p = Progress()
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE step = %s").format(tool_ident(plan, "quarantine")), (step.name,))
    else:  # an interrupted run's quarantine belongs to its committed batches: kept
        print(f"{step.name}: resuming after batch {p.batches} ({p.rows_done:,} of {total:,} rows done, "
              f"last key {p.last_key})", flush=True)
    conn.commit()  # each batch below is its own top-level transaction
    order = sql.SQL(", ").join(sql.Identifier("s", c) for c in pk)
    keys_text = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier("s", c)) for c in pk)
    pause = float(os.environ.get("CONSOLIDATION_BATCH_PAUSE") or 0)
    started, rows_at_start = time.monotonic(), p.rows_done
    while True:
        lo = bound(pk, types, p.last_key, ">") if p.last_key is not None else sql.SQL("TRUE")
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            bulk.lock_parents(conn, spec, exclusive=False)  # in one order beside other steps (bulk.py)
            hi = conn.execute(sql.SQL("SELECT {} FROM {} AS s WHERE {} ORDER BY {} OFFSET {} LIMIT 1").format(
                keys_text, src, lo, order, sql.Literal(size - 1))).fetchone()
            if hi is None:  # the last batch: every key above lo
                hi_key = conn.execute(sql.SQL("SELECT {} FROM {} AS s WHERE {} ORDER BY {} LIMIT 1").format(
                    keys_text, src, lo, sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier("s", c))
                                                             for c in pk))).fetchone()
                if hi_key is None:
                    _record(conn, plan, entry_id, p, total, True)
                    break
                hi = hi_key
            where = sql.SQL("{} AND {}").format(lo, bound(pk, types, list(hi), "<="))
            n, ins, mer = apply_where(conn, plan, step, spec, action, run_id, where, applier)
            p.batches += 1
            p.last_key, p.rows_done, p.inserted, p.merged = list(hi), p.rows_done + n, p.inserted + ins, p.merged + mer
            _record(conn, plan, entry_id, p, total, False)
        elapsed = time.monotonic() - started
        rate = (p.rows_done - rows_at_start) / elapsed if elapsed > 0 else 0.0
        left = f", about {_eta(max(total - p.rows_done, 0) / rate)} left" if rate > 0 else ""
        print(f"{step.name}: batch {p.batches}: {p.rows_done:,} / {total:,} rows "
              f"({100 * p.rows_done / max(total, 1):.0f}%), {rate:,.0f} rows/s{left}", flush=True)
        if pause:
            time.sleep(pause)
    return p.inserted, p.merged, f"batched ({p.batches} batches of {size:,} rows" + (
        f", resumed after batch {p.resumed_from})" if p.resumed_from else ")")
