"""Command-line commands of the engine (registered in cli.COMMANDS)."""
from __future__ import annotations

import argparse
import json
import sys


def register_inventory(subparsers) -> None:
    p = subparsers.add_parser("inventory", help="check the plan against the live database",
                              description="Introspect the legacy schemas and compare them with the plan. "
                                          "Exit 1 when a finding blocks the migration.")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=_inventory)


def _inventory(args) -> int:
    from consolidation.checks.inventory import cli

    return cli(args)


def register_plan(subparsers) -> None:
    p = subparsers.add_parser("plan", help="validate the plan file and summarise it")
    p.add_argument("--file", help="plan file (default: CONSOLIDATION_PLAN or include/plans/phase4.yaml)")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from consolidation.core.plan import PlanError, load_plan

    try:
        plan = load_plan(args.file)
    except PlanError as exc:
        print(f"plan rejected: {exc}", file=sys.stderr)
        return 1
    print(f"plan {plan.name} ({plan.path}, sha256 {plan.sha256[:12]}): {len(plan.steps)} steps")
    for schema in plan.legacy_schemas:
        for s in plan.steps_for_schema(schema):
            print(f"  {s.index:>2}. {s.action:<6} {s.source:<45} -> {s.target or '(backed up, dropped in 4D)'}")
    return 0


def register_sql(subparsers) -> None:
    p = subparsers.add_parser("sql", help="print the SQL a phase would run, in order, without running it",
                              description="Like Liquibase's update-sql: reads the live catalog, writes nothing.")
    p.add_argument("--phase", required=True, type=str.lower, choices=["4a", "4b"])
    p.set_defaults(func=_sql)


def _sql(args) -> int:
    from consolidation.core import db
    from consolidation.core.plan import load_plan

    plan = load_plan()
    with db.connect() as conn:
        conn.read_only = True
        for heading, text in preview(conn, plan, args.phase.upper()):
            print(f"-- {heading}\n{text};\n")
    return 0


def preview(conn, plan, phase: str) -> list[tuple[str, str]]:
    """(heading, SQL) of what a phase would run now, in execution order."""
    from consolidation.phases import extend
    from consolidation.phases.migrate import order_steps, step_statements

    if phase == "4A":
        return extend.preview(conn, plan)
    _, specs = extend.load_specs(conn, plan)
    upstream = order_steps(plan, specs)
    out, done = [], set()
    pending = [s for s in plan.migrating_steps()]
    while pending:
        ready = [s for s in pending if set(upstream[s.name]) <= done] or pending[:1]
        for s in ready:
            pending.remove(s)
            done.add(s.name)
            if s.is_recreated_view:
                out.append((f"{s.name}: view recreated by 4A, verified only", f"SELECT count(*) FROM {s.target}"))
                continue
            stmts = step_statements(plan, s, specs[s.target])
            out.append((f"{s.name}: {s.source} -> {s.target} (one transaction)",
                        ";\n".join(x.as_string(conn) for x in stmts)))
    return out


__all__ = ["register_inventory", "register_plan", "register_sql", "preview", "argparse", "json"]
