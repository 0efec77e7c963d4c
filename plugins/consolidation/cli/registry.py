"""`python -m consolidation registry show | export | resolve NAME | smoke` (cli.COMMANDS)."""
from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("registry", help="the table registry services read: show | export | resolve | smoke",
                              description="Read the table registry Phase 4C writes (operational.consolidation_registry).")
    sub = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)

    s = sub.add_parser("show", help="one line per entry: legacy name -> consolidated table (filter)")
    s.add_argument("--json", action="store_true", help="print the entries as JSON")
    s.set_defaults(func=_show)

    s = sub.add_parser("export", help="write registry.json for services that read files")
    s.add_argument("--dir", help="folder (default: $CONSOLIDATION_REGISTRY_DIR or .state/registry)")
    s.set_defaults(func=_export)

    s = sub.add_parser("resolve", help="where a legacy table lives now; exit 1 when it is not registered")
    s.add_argument("name", help="legacy schema.table, e.g. tracking.active_strategy_configs")
    s.add_argument("--file", help="read a registry.json instead of the database")
    s.add_argument("--sql", action="store_true", help="print the SELECT presenting the legacy columns")
    s.set_defaults(func=_resolve)

    s = sub.add_parser("smoke", help="run the service smoke queries both ways; exit 1 when any differ")
    s.add_argument("--dir", help="folder of smoke queries (default: include/sql/smoke)")
    s.set_defaults(func=_smoke)


def _show(args) -> int:
    from consolidation.core import db
    from consolidation.core.plan import load_plan
    from consolidation.phases.registry import entries

    plan = load_plan()
    with db.connect() as conn:
        rows = entries(conn, plan)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"the registry {'.'.join(plan.tool_table('registry'))} is empty or missing; "
              "run phase4c_service_updates", file=sys.stderr)
        return 1
    for e in rows:
        filt = ""
        if e["filter_op"] == "=":
            filt = f" WHERE {e['filter_column']} = {e['filter_value']!r}"
        elif e["filter_op"]:
            filt = f" WHERE {e['filter_column']} IS NOT NULL"
        print(f"{e['logical_name']:<45} -> {e['physical_schema']}.{e['physical_table']}{filt} "
              f"[{e['status']}, run {e['set_by_run']}, {e['set_at']}]")
    return 0


def _export(args) -> int:
    from consolidation.core import db
    from consolidation.core.ledger import operator_name
    from consolidation.core.plan import load_plan
    from consolidation.phases.registry import export

    with db.connect() as conn:
        path = export(conn, load_plan(), args.dir, run_id="cli", user=operator_name())
    print(path)
    return 0


def _resolve(args) -> int:
    from pathlib import Path

    from consolidation.phases.registry import NotRegistered, resolve, resolve_file

    try:
        if args.file:
            r = resolve_file(Path(args.file), args.name)
        else:
            from consolidation.core import db

            with db.connect() as conn:
                r = resolve(conn, args.name)
    except NotRegistered as exc:
        print(str(exc), file=sys.stderr)
        return 1
    where = f" WHERE {r.filter.column} = {r.filter.value!r}" if r.filter and r.filter.op == "=" else (
        f" WHERE {r.filter.column} IS NOT NULL" if r.filter else "")
    print(f"{r.logical_name} -> {r.qualified}{where}")
    for c in r.columns:
        cast = f" (cast from {c.physical_type})" if c.type != c.physical_type else ""
        print(f"  {c.name:<28} {c.column}{cast}")
    if args.sql:
        print(r.relation().as_string(None))  # identifiers and literals need no connection
    return 0


def _smoke(args) -> int:
    from consolidation.core import db
    from consolidation.core.plan import load_plan
    from consolidation.phases.smoke import run_smoke

    with db.connect() as conn:
        conn.read_only = True
        outcomes = run_smoke(conn, load_plan(), args.dir)
    for o in outcomes:
        state = "ok" if o.ok else ("ERROR " + (o.error or "") if o.error else f"{o.differing} rows differ")
        print(f"{o.name:<36} legacy {o.legacy_rows if o.legacy_rows is not None else '-':>5}  "
              f"registry {o.registry_rows if o.registry_rows is not None else '-':>5}  {state}")
    return 0 if all(o.ok for o in outcomes) else 1
