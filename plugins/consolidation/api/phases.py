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
    return Outcome(value=done, lines=done)


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
