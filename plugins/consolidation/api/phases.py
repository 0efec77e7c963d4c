"""Operations of Phases 4A and 4B and the gates: inventory, plan, SQL preview, require a gate,
extend (4A), run a step (4B), run a phase gate (4A-4D)."""
from __future__ import annotations

from pathlib import Path

from consolidation.api.outcome import Outcome
from consolidation.checks import gates
from consolidation.checks.gate_4a import gate_4a_checks
from consolidation.checks.gate_4b import gate_4b_checks
from consolidation.checks.inventory import InventoryBlocked, render, take_inventory
from consolidation.core.plan import Plan
from consolidation.core.session import load_specs
from consolidation.phases import extend, migrate
from consolidation.phases.cleanup import run_gate_4d
from consolidation.phases.load import ranges
from consolidation.phases.registry import exported_in_run
from consolidation.phases.registry_checks import gate_4c_checks

PHASE_CHECKS = {"4A": gate_4a_checks, "4B": gate_4b_checks}


def inventory(conn, plan: Plan) -> Outcome:
    """The plan checked against the live database; a blocking finding is the failure."""
    inv = take_inventory(conn, plan)
    return Outcome(value={"findings": len(inv.findings), "blocking": 0}, lines=[render(inv)],
                   failure=None if inv.ok else InventoryBlocked(inv), data=inv)


def plan_summary(plan: Plan) -> Outcome:
    lines = [f"plan {plan.name} ({plan.path}, sha256 {plan.sha256[:12]}): {len(plan.steps)} steps"]
    for schema in plan.legacy_schemas:
        for s in plan.steps_for_schema(schema):
            lines.append(f"  {s.index:>2}. {s.action:<6} {s.source:<45} -> {s.target or '(backed up, dropped in 4D)'}")
    return Outcome(lines=lines)


def sql_preview(conn, plan: Plan, phase: str, *, step: str | None = None) -> Outcome:
    """The SQL a phase ("4A" or "4B") would run now, in execution order, without running it:
    data = [(heading, SQL)], lines = "-- heading\\nSQL;". `step`: only the statements of that 4B step."""
    if phase == "4A":
        pairs = extend.preview(conn, plan)
    else:
        _, specs = load_specs(conn, plan)
        pairs = []
        for s in migrate.execution_order(plan, specs):
            if s.is_recreated_view:
                pairs.append((f"{s.name}: view recreated by 4A, verified only", f"SELECT count(*) FROM {s.target}"))
                continue
            stmts = migrate.step_statements(plan, s, specs[s.target])
            pairs.append((f"{s.name}: {s.source} -> {s.target} (one transaction)",
                          ";\n".join(x.as_string(conn) for x in stmts)))
    if step is not None:
        pairs = [(heading, text) for heading, text in pairs if heading.startswith(step)]
    return Outcome(lines=[f"-- {heading}\n{text};" for heading, text in pairs], data=pairs)


def require_gate(conn, plan: Plan, phase: str) -> Outcome:
    """`phase` may start: the latest gate of the phase before it passed (else PhaseRefused)."""
    row = gates.require_gate(conn, plan, phase)
    return Outcome(value={"gate_run": row["run_id"]},
                   lines=[f"{phase} may start: gate {row['name']} passed in run {row['run_id']} at {row['finished_at']}"])


# ------------------------------------------------------------------ 4A
def extend_prepare(conn, plan: Plan, *, run_id: str, user: str | None) -> Outcome:
    extend.rehearse(conn, plan, run_id=run_id, user=user)  # refused here, nothing is written
    made = extend.ensure_schemas(conn, plan, run_id=run_id, user=user)
    return Outcome(value=made, lines=[f"schemas created: {made or 'none (all existed)'}"])


def extend_group(conn, plan: Plan, legacy_schema: str, *, run_id: str, user: str | None) -> Outcome:
    done = extend.extend_group(conn, plan, legacy_schema, run_id=run_id, user=user)
    return Outcome(value=done, lines=done)


def extend_finalize(conn, plan: Plan, *, run_id: str, user: str | None) -> Outcome:
    done = extend.finalize(conn, plan, run_id=run_id, user=user)
    # every target exists now: the 4B DAG's step graph (a file it reads at parse time)
    graph = step_graph(conn, plan, written_by=f"4A finalize, run {run_id}")
    return Outcome(value=done, lines=done + graph.lines)


def step_graph(conn, plan: Plan, *, written_by: str) -> Outcome:
    """Write the 4B step graph of `plan` from the live catalog (phases.migrate.step_graph) to
    core.runs.step_graph's file. A state folder that cannot be written is a line, not a
    failure: the 4B DAG then runs its steps in plan order."""
    try:
        graph = migrate.write_step_graph(conn, plan, written_by=written_by)
    except OSError as exc:
        return Outcome(lines=[f"step graph not written ({exc}); 4B will run its steps one after another"])
    finally:
        conn.commit()  # it only read; ends the transaction the catalog read opened
    return Outcome(value=str(graph.path), data=graph, lines=[
        f"step graph written to {graph.path}: {len(graph.upstream)} steps, {graph.edges()} dependencies, "
        f"up to {graph.widest()} steps at once (4B runs at most CONSOLIDATION_4B_PARALLEL tasks at once)"])


# ------------------------------------------------------------------ 4B
def run_step(conn, plan: Plan, step_name: str, *, run_id: str, user: str | None, dry_run: bool = False) -> Outcome:
    """One plan step, one transaction; `dry_run`: only its SQL."""
    if dry_run:
        return Outcome(value={"step": step_name, "dry_run": True},
                       lines=sql_preview(conn, plan, "4B", step=step_name).lines)
    result = migrate.run_step(conn, plan, step_name, run_id=run_id, user=user)
    return Outcome(value={"step": step_name, "read": result.read, "inserted": result.inserted,
                          "merged": result.merged, "quarantined": result.quarantined},
                   lines=[result.line()], data=result)


# ------------------------------------------------------------------ 4B: a big step as mapped key ranges
def plan_ranges(conn, plan: Plan, step_name: str, *, run_id: str, user: str | None, dry_run: bool = False) -> Outcome:
    """Open a `batch_rows` step and split its source into key ranges (phases.load.ranges): the
    list is the value (the XCom the 4B DAG's mapped run_range expands over). `dry_run`: the
    step's SQL, and one range that moves nothing."""
    if dry_run:
        return Outcome(value=[{"entry": None, "step": step_name, "index": 0, "of": 1, "lo": None, "hi": None,
                               "label": "dry run"}], lines=sql_preview(conn, plan, "4B", step=step_name).lines)
    out, line = ranges.plan_ranges(conn, plan, step_name, run_id=run_id, user=user)
    return Outcome(value=out, lines=[line], data=out)


def run_range(conn, plan: Plan, step_name: str, key_range: dict, *, run_id: str, user: str | None,
              dry_run: bool = False) -> Outcome:
    """One key range of a step in one transaction (skipped when already done)."""
    if dry_run or key_range.get("entry") is None:
        return Outcome(value={"step": step_name, "dry_run": True}, lines=[f"{step_name}: dry run, nothing moved"])
    value, line = ranges.run_range(conn, plan, step_name, key_range, run_id=run_id)
    return Outcome(value=value, lines=[line])


def finish_ranges(conn, plan: Plan, step_name: str, key_ranges: list[dict], *, run_id: str, user: str | None,
                  dry_run: bool = False) -> Outcome:
    """After every range of a step: checksums, quarantine, the step's ledger row closed (as run_step)."""
    entry = key_ranges[0].get("entry") if key_ranges else None
    if dry_run or entry is None:
        return Outcome(value={"step": step_name, "dry_run": True}, lines=[f"{step_name}: dry run, nothing moved"])
    result = ranges.finish_ranges(conn, plan, step_name, int(entry))
    return Outcome(value={"step": step_name, "read": result.read, "inserted": result.inserted,
                          "merged": result.merged, "quarantined": result.quarantined},
                   lines=[result.line()], data=result)


# ------------------------------------------------------------------ gates
def gate(conn, dsn: str, plan: Plan, phase: str, *, run_id: str, user: str | None) -> Outcome:
    """The Great Expectations gate closing `phase` (4A, 4B, 4C or 4D), recorded in the ledger;
    GateFailed when it does not pass."""
    if phase == "4D":
        result = run_gate_4d(conn, dsn, plan, run_id=run_id, user=user)
    else:
        if phase in gates.PREVIOUS:  # the gate runs even after failed tasks, never after a refusal
            gates.require_gate(conn, plan, phase)
        if phase == "4C":
            # the file this run exported must say what the table says; no export in this run fails that check
            exported = exported_in_run(conn, plan, run_id)
            checks = gate_4c_checks(conn, plan, export_file=exported or Path(f"<no registry export in run {run_id}>"))
        else:
            checks = PHASE_CHECKS[phase](conn, plan)
        conn.commit()
        result = gates.run_phase_gate(conn, dsn, plan, phase, checks, run_id=run_id, user=user)
    return Outcome(value={"gate": phase, "passed": result.passed, "checks": len(result.results)},
                   lines=[result.summary()], data=result)
