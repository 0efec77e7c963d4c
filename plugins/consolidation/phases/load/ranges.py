"""A big copy/union step split into key ranges that separate tasks run at once (the 4B DAG's
mapped tasks), so several workers share one table.

Three functions, one task each (dags/phase4b_data_migration.py gives this shape to the steps
with `batch_rows` when it runs by the step graph):

- `plan` opens the step's ledger row and computes the key bounds: one set-based scan of the
  source's primary key (`row_number() OVER (ORDER BY key)`, every `batch_rows`-th key; bounds
  only, never rows) gives ranges `lo < key <= hi`, the first open below, the last open above,
  so together they cover every key, also one that arrives later. It returns them as a list
  (the XCom the mapped task expands over; at most MAX_RANGES, Airflow's default
  `max_map_length`: a larger table gets wider ranges). The bounds and the ranges done are kept
  in the row's `details.ranges`. A source at most one range big, or without a key, is one
  range: the ordinary step (phases.migrate, bulk load included: it is the only writer).
- `run_range` moves one range in one transaction: the step's own statement (the anti-join
  that skips keys already in the target; a failing range row by row into the quarantine,
  phases.load.batches.apply_where) and, in the same transaction, the range marked done in
  `details.ranges.done`. A range already done is skipped, so a re-run (a retried or cleared
  task, a crash after the commit) never moves or quarantines a row twice; a range killed
  mid-way rolled back whole and runs again. Ranges take the step's advisory lock shared and
  their own exclusively: ranges run side by side, one range never twice at once, and never
  beside the single-task path of the same step (which takes the step's lock exclusively).
  No bulk load here: ranges insert into one target at once, so its foreign keys and indexes
  stay in place (no drop before, no rebuild after).
- `finish` (after every range) checks every range is done, advances the target's sequences,
  validates NOT VALID keys, counts the quarantine, computes the step's checksums and closes
  the ledger row exactly as a one-task step does (phases.migrate.run_step).

Resuming: `plan` of a later run finds the step's previous ledger row unfinished (a range
failed, a worker died) and carries its bounds and done ranges over (and its quarantine, which
belongs to those ranges); that row is marked interrupted, superseded by the new one. The row
spans several tasks, so it records no database backend (core.runs.interrupted would take it
for dead as soon as the plan task's connection closed): one a dead run leaves `running` is
marked after that module's age bound, or superseded by the next run's `plan`.
"""
from __future__ import annotations

import json
import time

from psycopg import sql

from consolidation.actions import action_for
from consolidation.core import ledger
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.core.session import load_specs
from consolidation.core.spec import source_ident
from consolidation.phases import migrate
from consolidation.phases.load import batches, bulk

MAX_RANGES = 1024  # Airflow's default [core] max_map_length


def _step(plan: Plan, step_name: str) -> Step:
    step = next((s for s in plan.steps if s.name == step_name), None)
    if step is None:
        raise KeyError(f"no step {step_name!r} in plan {plan.name}")
    return step


def _lock(conn, step: Step, index: int | None = None, *, shared: bool = False) -> None:
    key = f"consolidation:{step.name}" + ("" if index is None else f":range:{index}")
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(sql.SQL("SELECT {}(hashtext(%s))").format(sql.Identifier(fn)), (key,))


def _ranges_of(conn, plan: Plan, entry_id: int) -> tuple[str, dict | None]:
    row = conn.execute(sql.SQL("SELECT status, details->'ranges' FROM {} WHERE id = %s").format(
        tool_ident(plan, "ledger")), (entry_id,)).fetchone()
    if row is None:
        raise migrate.StepFailed(f"no ledger entry {entry_id} for these key ranges; run the step's plan_ranges again")
    return row[0], row[1]


def _label(lo, hi) -> str:
    def key(v):
        return ", ".join(v) if len(v) > 1 else v[0]
    return f"({key(lo) if lo else '-inf'}, {key(hi) if hi else '+inf'}]"


def _bounds(conn, step: Step, pk: list[str], total: int, size: int) -> list[list[str]]:
    """Every `size`-th key of the source in key order (as text), the last row's excepted."""
    order = sql.SQL(", ").join(sql.Identifier("s", c) for c in pk)
    rows = conn.execute(sql.SQL(
        "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS rn FROM {} AS s) AS x "
        "WHERE mod(x.rn, {}) = 0 AND x.rn < {} ORDER BY x.rn").format(
        sql.SQL(", ").join(sql.SQL("x.{}::text").format(sql.Identifier(c)) for c in pk), order, order,
        source_ident(step), sql.Literal(size), sql.Literal(total))).fetchall()
    return [list(r) for r in rows]


def plan_ranges(conn, plan: Plan, step_name: str, *, run_id: str, user: str | None) -> tuple[list[dict], str]:
    """Open the step's ledger row and split its source into key ranges (see the module doc);
    returns (one small dict per range: entry, step, index, of, lo, hi (key values as text, None:
    open), label; the line saying how it was split). Committed."""
    step = _step(plan, step_name)
    _, specs = load_specs(conn, plan)
    spec = specs[step.target]
    action = action_for(step)
    for problem in action.validate(step, spec):
        raise migrate.StepFailed(problem)
    conn.commit()
    _lock(conn, step)  # no range of an earlier run still moving
    entry = ledger.open_entry(conn, plan, run_id=run_id, phase=migrate.PHASE, kind="step", name=step.name,
                              source=step.source, target=step.target, triggered_by=user)
    total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
    pk = spec.source_pks.get(step.name) or []
    state: dict = {"key": pk, "total": total, "done": {}, "resumed_from": None}
    prev = conn.execute(sql.SQL(
        "SELECT id, run_id, status, details->'ranges' FROM {} WHERE phase = %s AND kind = 'step' AND name = %s "
        "AND id < %s ORDER BY id DESC LIMIT 1").format(tool_ident(plan, "ledger")),
        (migrate.PHASE, step.name, entry.id)).fetchone()
    carried = prev[3] if prev and prev[2] != ledger.SUCCESS and prev[3] and not prev[3].get("whole") \
        and prev[3].get("key") == pk else None
    if carried:  # an unfinished earlier run: its bounds, its done ranges, its quarantine
        state |= {"size": carried["size"], "bounds": carried["bounds"], "done": carried["done"],
                  "resumed_from": {"entry": prev[0], "run_id": prev[1], "done": len(carried["done"])}}
        if prev[2] == ledger.RUNNING:
            conn.execute(sql.SQL(
                "UPDATE {} SET status = %s, finished_at = clock_timestamp(), message = %s, "
                "details = details || jsonb_build_object('superseded_by', %s::bigint) WHERE id = %s").format(
                tool_ident(plan, "ledger")),
                (ledger.INTERRUPTED, f"interrupted: superseded by ledger entry {entry.id} of run {run_id}, which "
                                     f"resumes its {len(carried['done'])} done key range(s)", entry.id, prev[0]))
    else:
        conn.execute(sql.SQL("DELETE FROM {} WHERE step = %s").format(tool_ident(plan, "quarantine")), (step.name,))
        whole = not batches.applies(action, step, spec, total)
        size = max(step.batch_rows or 1, -(-total // MAX_RANGES))
        bounds = [] if whole else _bounds(conn, step, pk, total, size)
        state |= {"size": size, "whole": whole,
                  "bounds": [[lo, hi] for lo, hi in zip([None] + bounds, bounds + [None])]}
    conn.execute(sql.SQL("UPDATE {} SET details = (details - 'backend') || jsonb_build_object('ranges', %s::jsonb) "
                         "WHERE id = %s").format(tool_ident(plan, "ledger")), (json.dumps(state), entry.id))
    conn.commit()
    n = len(state["bounds"])
    out = [{"entry": entry.id, "step": step.name, "index": i, "of": n, "lo": lo, "hi": hi, "label": _label(lo, hi)}
           for i, (lo, hi) in enumerate(state["bounds"])]
    how = ("one range (the source is not bigger than one range, or has no key): the ordinary step"
           if state.get("whole") else f"{n} key ranges of {state['size']:,} rows over ({', '.join(pk)})")
    return out, f"{step.name}: {total:,} rows, {how}" + (
        f"; resuming run {state['resumed_from']['run_id']}: {state['resumed_from']['done']} range(s) already done"
        if state["resumed_from"] else "")


def run_range(conn, plan: Plan, step_name: str, key_range: dict, *, run_id: str) -> tuple[dict, str]:
    """Move one key range (an element of plan_ranges' list) in one transaction, marked done
    with it; a range already done is skipped. Returns ({index, rows, inserted, merged,
    skipped}, its progress line: rows, rate, ranges and rows done so far). Committed."""
    step = _step(plan, step_name)
    i, entry_id = int(key_range["index"]), int(key_range["entry"])
    _, specs = load_specs(conn, plan)
    spec = specs[step.target]
    action = action_for(step)
    conn.commit()
    started = time.monotonic()
    with conn.transaction():
        _, state = _ranges_of(conn, plan, entry_id)
        whole = bool(state and state.get("whole"))
        _lock(conn, step, shared=not whole)
        _lock(conn, step, i)
        _, state = _ranges_of(conn, plan, entry_id)  # read again under the locks
        if state is None or i >= len(state["bounds"]):
            raise migrate.StepFailed(f"{step.name}: ledger entry {entry_id} has no key range {i}; "
                                     "run the step's plan_ranges again")
        if str(i) in state["done"]:
            d = state["done"][str(i)]
            return ({"index": i, "rows": d["rows"], "inserted": 0, "merged": 0, "skipped": True},
                    f"{step.name}: range {i + 1} of {len(state['bounds'])} {key_range.get('label', '')} already done "
                    f"(run {d['run_id']}): skipped")
        if whole:
            r = migrate._move(conn, plan, step, spec, run_id)  # the ordinary step: the only writer
            n, ins, mer, path = r.read, r.inserted, r.merged, r.path
        else:
            lo, hi = state["bounds"][i]
            pk = state["key"]
            types = batches.key_types(conn, step, pk)
            parts = ([batches.bound(pk, types, lo, ">")] if lo is not None else []) + (
                [batches.bound(pk, types, hi, "<=")] if hi is not None else [])
            where = sql.SQL(" AND ").join(parts) if parts else sql.SQL("TRUE")
            bulk.lock_parents(conn, spec, exclusive=False)  # in one order beside other steps (bulk.py)
            n, ins, mer = batches.apply_where(conn, plan, step, spec, action, run_id, where,
                                              ledger.applier_function(plan))
            path = "set-based"
        mark = {"rows": n, "inserted": ins, "merged": mer, "path": path, "run_id": run_id}
        conn.execute(sql.SQL("UPDATE {} SET details = jsonb_set(details, ARRAY['ranges', 'done', %s], %s::jsonb) "
                             "WHERE id = %s").format(tool_ident(plan, "ledger")), (str(i), json.dumps(mark), entry_id))
        done = conn.execute(sql.SQL(
            "SELECT (SELECT count(*) FROM jsonb_object_keys(details->'ranges'->'done')), "
            "(SELECT coalesce(sum((v->>'rows')::bigint), 0) FROM jsonb_each(details->'ranges'->'done') AS e(k, v)) "
            "FROM {} WHERE id = %s").format(tool_ident(plan, "ledger")), (entry_id,)).fetchone()
    seconds = time.monotonic() - started
    total = state["total"]
    return ({"index": i, "rows": n, "inserted": ins, "merged": mer, "skipped": False},
            f"{step.name}: range {i + 1} of {len(state['bounds'])} {key_range.get('label', '')}: {n:,} rows, "
            f"inserted {ins:,}, merged {mer:,} in {seconds:.1f} s ({n / seconds if seconds else 0:,.0f} rows/s); "
            f"{done[0]} of {len(state['bounds'])} ranges done, {done[1]:,} / {total:,} rows "
            f"({100 * done[1] / max(total, 1):.0f}%)")


def finish_ranges(conn, plan: Plan, step_name: str, entry_id: int) -> migrate.StepResult:
    """After every range: the step's sequences, NOT VALID keys, quarantine, checksums, and its
    ledger row closed as a one-task step closes it. StepFailed, naming them, when a range is not
    done, or when the quarantine exceeds the step's threshold. Committed."""
    step = _step(plan, step_name)
    _, specs = load_specs(conn, plan)
    spec = specs[step.target]
    conn.commit()
    entry = ledger.Entry(plan, entry_id)
    try:
        _lock(conn, step)  # waits for a range still moving
        _, state = _ranges_of(conn, plan, entry_id)
        if state is None:
            raise migrate.StepFailed(f"{step.name}: ledger entry {entry_id} holds no key ranges; "
                                     "run the step's plan_ranges again")
        n = len(state["bounds"])
        missing = [i for i in range(n) if str(i) not in state["done"]]
        if missing:
            raise migrate.StepFailed(
                f"{step.name}: {len(missing)} of {n} key ranges not done (range {', '.join(str(i + 1) for i in missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}); re-run their run_range tasks, or the phase (it resumes "
                "with the ranges done)")
        done = state["done"].values()
        read = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
        inserted, merged = sum(d["inserted"] for d in done), sum(d["merged"] for d in done)
        resumed = state.get("resumed_from")
        path = (f"mapped (1 range: {next(iter(done))['path']})" if state.get("whole") else
                f"mapped ({n} key ranges of {state['size']:,} rows"
                + (f", {resumed['done']} done by run {resumed['run_id']})" if resumed else ")"))
        result = migrate._finish_move(conn, plan, step, spec, read, inserted, merged, path)
        conn.commit()
        return migrate.close_step(conn, plan, step, spec, entry, result)
    except migrate.StepFailed as exc:
        conn.rollback()
        if _still_running(conn, plan, entry_id):
            entry.finish(conn, ledger.FAILED, str(exc))
            conn.commit()
        raise
    except Exception as exc:
        conn.rollback()
        entry.finish(conn, ledger.FAILED, f"{type(exc).__name__}: {exc}")
        conn.commit()
        raise


def _still_running(conn, plan: Plan, entry_id: int) -> bool:
    """The entry is not closed yet (by finish_ranges, or superseded by a later plan_ranges)."""
    row = conn.execute(sql.SQL("SELECT status FROM {} WHERE id = %s").format(tool_ident(plan, "ledger")),
                       (entry_id,)).fetchone()
    return row is not None and row[0] == ledger.RUNNING
