"""Phase 4B: run one plan step inside the database, in one transaction, idempotently.

The set-based statement moves every row at once. If it fails (a value that does not
cast, a NOT NULL or CHECK or FK violation, a key collision), the transaction rolls
back to a savepoint and the same statement is applied row by row by a function in the
database, which sends each failing row, as JSONB, with the error, to the quarantine.
Rows never travel through Python. A step fails when its quarantine exceeds the plan's
threshold; the quarantine is committed either way, so it can be inspected and fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core import ledger
from consolidation.actions import action_for
from consolidation.actions.base import column_list, validate_foreign_keys
from consolidation.core.session import load_specs
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.checks.reconcile import checksums
from consolidation.phases.load import batches, bulk
from consolidation.core.runs import step_graph as step_graph_file
from consolidation.core.spec import TargetSpec, source_ident

PHASE = "4B"


class StepFailed(Refusal):
    pass


@dataclass
class StepResult:
    step: str
    source: str
    target: str
    read: int
    inserted: int
    merged: int
    quarantined: int
    already_present: int
    source_checksum: str | None
    target_checksum: str | None
    path: str  # set-based | bulk load (an empty target 4A created) | per-row

    def line(self) -> str:
        return (f"{self.source} -> {self.target}: read {self.read}, inserted {self.inserted}, merged {self.merged}, "
                f"already present {self.already_present}, quarantined {self.quarantined} ({self.path})")


def step_statements(plan: Plan, step: Step, spec: TargetSpec, run_id: str = "preview") -> list[sql.Composable]:
    """The SQL a step runs on its set-based path (for the preview and for run_step)."""
    action = action_for(step)
    return action.pre_statements(plan, step, spec) + [
        action.statement(plan, step, spec, source_ident(step), run_id)]


def run_step(conn, plan: Plan, step_name: str, *, run_id: str, user: str | None) -> StepResult:
    step = next((s for s in plan.steps if s.name == step_name), None)
    if step is None:
        raise KeyError(f"no step {step_name!r} in plan {plan.name}")
    _, specs = load_specs(conn, plan)
    spec = specs[step.target]
    for problem in action_for(step).validate(step, spec):
        raise StepFailed(problem)
    conn.commit()
    entry = ledger.open_entry(conn, plan, run_id=run_id, phase=PHASE, kind="step", name=step.name,
                              source=step.source, target=step.target, triggered_by=user)
    conn.commit()
    try:
        result = _move(conn, plan, step, spec, run_id, entry.id)
        conn.commit()
        return close_step(conn, plan, step, spec, entry, result)
    except StepFailed:
        raise
    except Exception as exc:
        conn.rollback()
        entry.finish(conn, ledger.FAILED, f"{type(exc).__name__}: {exc}")
        conn.commit()
        raise


def close_step(conn, plan: Plan, step: Step, spec: TargetSpec, entry, result: StepResult) -> StepResult:
    """The step's proof (checksums of both sides) and its ledger entry closed with the counts:
    failed, and StepFailed raised, when its quarantine exceeds the plan's threshold. Committed."""
    sums = checksums(conn, plan, step, spec)
    result.source_checksum, result.target_checksum = sums["source_checksum"], sums["target_checksum"]
    over = result.quarantined > step.quarantine_threshold
    message = (f"{result.quarantined} row(s) of {step.source} quarantined, threshold {step.quarantine_threshold}; "
               f"see {'.'.join(plan.tool_table('quarantine'))} where step = '{step.name}'") if over else result.line()
    conflicts = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE step = %s").format(
        tool_ident(plan, "conflicts")), (step.name,)).fetchone()[0]
    entry.finish(conn, ledger.FAILED if over else ledger.SUCCESS, message, rows_read=result.read,
                 rows_inserted=result.inserted, rows_merged=result.merged, rows_quarantined=result.quarantined,
                 rows_conflicts=conflicts, source_checksum=result.source_checksum,
                 target_checksum=result.target_checksum,
                 details={"path": result.path, "already_present": result.already_present, "counts": sums})
    conn.commit()
    if over:
        raise StepFailed(message)
    return result


def _move(conn, plan: Plan, step: Step, spec: TargetSpec, run_id: str, entry_id: int | None = None) -> StepResult:
    action = action_for(step)
    if not action.moves_rows:  # e.g. a view 4A recreated over the targets: nothing moves, 4B verifies
        read = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
        return StepResult(step.name, step.source, step.target, read, 0, 0, 0, read, None, None, action.verify_path)
    if step.batch_rows and entry_id is not None:  # a big step: key-range batches, each committed, resumable
        read = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
        if batches.applies(action, step, spec, read):
            inserted, merged, path = batches.run(conn, plan, step, spec, action, run_id, entry_id, read,
                                                 ledger.applier_function(plan))
            return _finish_move(conn, plan, step, spec, read, inserted, merged, path)
    # One runner per step at a time (two DAG runs must not interleave a step).
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"consolidation:{step.name}",))
    conn.execute(sql.SQL("DELETE FROM {} WHERE step = %s").format(tool_ident(plan, "quarantine")), (step.name,))
    for stmt in action.pre_statements(plan, step, spec):
        conn.execute(stmt)
    read = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
    path = "set-based"
    load = action.load_statement(plan, step, spec, source_ident(step))
    use_bulk = load is not None and bulk.applies(conn, spec)
    # steps run side by side: the referenced tables locked first, in one order (no deadlock)
    bulk.lock_parents(conn, spec, exclusive=use_bulk)
    try:
        with conn.transaction():  # savepoint
            if use_bulk:
                # an empty table 4A created: load first, foreign keys and indexes after (pg_restore's order)
                inserted, merged, path = bulk.load(conn, spec, load), 0, "bulk load"
            else:
                inserted, merged = conn.execute(action.statement(plan, step, spec, source_ident(step), run_id)).fetchone()
    except psycopg.Error:
        path = "per-row"
        one_row = sql.SQL("jsonb_populate_record(NULL::{}, $1)").format(source_ident(step))
        select_sql = sql.SQL("SELECT to_jsonb(s) AS j FROM {} AS s").format(source_ident(step)).as_string(conn)
        apply_sql = action.statement(plan, step, spec, one_row, run_id).as_string(conn)
        inserted, merged, _ = conn.execute(
            sql.SQL("SELECT * FROM {}(%s, %s, %s, %s, %s, %s)").format(ledger.applier_function(plan)),
            (select_sql, apply_sql, run_id, step.name, step.source, step.target)).fetchone()
    return _finish_move(conn, plan, step, spec, read, inserted, merged, path)


def _finish_move(conn, plan: Plan, step: Step, spec: TargetSpec, read: int, inserted: int, merged: int,
                 path: str) -> StepResult:
    _advance_sequences(conn, spec)
    for line in validate_foreign_keys(conn, spec):  # NOT VALID keys onto pre-existing targets (4A)
        path += f"; {line}"
    quarantined = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE step = %s").format(
        tool_ident(plan, "quarantine")), (step.name,)).fetchone()[0]
    already = read - inserted - merged - quarantined
    return StepResult(step.name, step.source, step.target, read, inserted, merged, quarantined, max(already, 0),
                      None, None, path)


def _advance_sequences(conn, spec: TargetSpec) -> None:
    """Set each identity/serial sequence of the target past its highest key."""
    rows = conn.execute(
        """SELECT a.attname, pg_get_serial_sequence(%s, a.attname)
             FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
              AND pg_get_serial_sequence(%s, a.attname) IS NOT NULL""",
        (spec.ident.as_string(conn),) * 3).fetchall()
    for column, seq in rows:
        conn.execute(sql.SQL("SELECT setval(%s::regclass, GREATEST(max({c}), "
                             "coalesce(pg_sequence_last_value(%s::regclass), 0), 1)) FROM {t}").format(
            c=sql.Identifier(column), t=spec.ident), (seq, seq))


def order_steps(plan: Plan, specs: dict[str, TargetSpec]) -> dict[str, list[str]]:
    """Upstream steps of each step: a step waits for the steps filling the tables its
    foreign keys point at, for every earlier step (in plan order) into the same target -
    steps into one target never run at once, whatever their action - and for the steps its
    action names (Action.upstream: for a recreated view, the tables of its schema)."""
    by_target: dict[str, list[Step]] = {}
    for s in plan.migrating_steps():
        by_target.setdefault(s.target, []).append(s)
    upstream: dict[str, list[str]] = {}
    for s in plan.migrating_steps():
        spec = specs[s.target]
        same = by_target[s.target]
        deps = [d.name for d in same[: same.index(s)]]
        for fk in spec.foreign_keys:
            deps += [d.name for d in by_target.get(f"{fk.ref_schema}.{fk.ref_table}", []) if d.name != s.name]
        deps += [d.name for d in action_for(s).upstream(plan, s)]
        upstream[s.name] = sorted(set(deps))
    return upstream


def step_graph(plan: Plan, specs: dict[str, TargetSpec]) -> tuple[dict[str, list[str]], list[str]]:
    """(upstream, order): order_steps made acyclic for the 4B DAG, and execution_order's names.
    A step keeps the upstream steps that come before it in that order; where a cycle of
    foreign keys was broken (the upstream step comes after it), the edge is turned round, so
    the two steps still never run at once."""
    order = [s.name for s in execution_order(plan, specs)]
    position = {name: i for i, name in enumerate(order)}
    graph: dict[str, set[str]] = {name: set() for name in order}
    for name, ups in order_steps(plan, specs).items():
        for u in ups:
            if u != name:
                first, then = sorted((u, name), key=position.__getitem__)
                graph[then].add(first)
    return {name: sorted(ups, key=position.__getitem__) for name, ups in graph.items()}, order


def write_step_graph(conn, plan: Plan, *, written_by: str):
    """The step graph from the live catalog, written for the 4B DAG (core.runs.step_graph);
    returns the StepGraph as read back."""
    _, specs = load_specs(conn, plan)
    upstream, order = step_graph(plan, specs)
    targets = {s.name: s.target for s in plan.migrating_steps()}
    step_graph_file.write(plan, upstream, targets, order, written_by=written_by)
    graph, why = step_graph_file.read(plan)
    if graph is None:
        raise RuntimeError(why)
    return graph


def execution_order(plan: Plan, specs: dict[str, TargetSpec], only: set[str] | None = None) -> list[Step]:
    """The migrating steps (or those named in `only`) in an order they can run: each after
    its upstream steps among them (order_steps), in rounds, plan order within a round; a
    cycle is broken at its first step in plan order. `sql --phase 4b` prints in this order."""
    upstream = order_steps(plan, specs)
    pending = [s for s in plan.migrating_steps() if only is None or s.name in only]
    ordered: list[Step] = []
    while pending:
        waiting = {s.name for s in pending}
        ready = [s for s in pending if not set(upstream[s.name]) & waiting] or pending[:1]
        for s in ready:
            pending.remove(s)
            ordered.append(s)
    return ordered


__all__ = ["run_step", "close_step", "step_statements", "order_steps", "execution_order", "step_graph", "write_step_graph", "StepResult", "StepFailed", "column_list"]
