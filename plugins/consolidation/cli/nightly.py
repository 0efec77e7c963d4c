"""`consolidation validate`: the nightly validation now, or a recorded reason for fewer rows."""
from __future__ import annotations

import json
import sys

from consolidation.core import ledger
from consolidation.phases.nightly import NightlyFailed, _stamp, accept_drop, validate


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="run the nightly validation now and print its table (exit 1 on failure)",
        description="Runs the checks of the nightly validation DAG against the database (CONSOLIDATION_DB_URL "
                    "or the embedded server), records them in the validation history and writes the page. "
                    "With --accept-drop, records in the ledger why a migrated table may hold fewer rows "
                    "at the next validation, and runs nothing.")
    p.add_argument("--schema", action="append", help="validate only this consolidated schema (repeatable)")
    p.add_argument("--failures-only", action="store_true", help="print only the failing checks")
    p.add_argument("--json", action="store_true", help="print the history rows of this run as JSON")
    p.add_argument("--accept-drop", metavar="SCHEMA.TABLE", help="accept fewer rows in this migrated table")
    p.add_argument("--reason", help="why the rows are gone (required with --accept-drop)")
    p.add_argument("--min-rows", type=int, help="with --accept-drop: the lowest count accepted (default: the count now)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from consolidation.core import db
    from consolidation.core.plan import PlanError, load_plan

    try:
        plan = load_plan()
    except PlanError as exc:
        print(f"plan rejected: {exc}", file=sys.stderr)
        return 2
    user = ledger.operator_name()
    if args.accept_drop:
        if not args.reason:
            print("--accept-drop needs --reason TEXT: the ledger records why the rows are gone", file=sys.stderr)
            return 2
        with db.connect() as conn:
            try:
                done = accept_drop(conn, plan, args.accept_drop, reason=args.reason, min_rows=args.min_rows, user=user)
            except (ValueError, NightlyFailed) as exc:
                print(str(exc), file=sys.stderr)
                return 2
        print(f"recorded (ledger id {done['ledger_id']}): {done['table']} may hold as few as {done['min_rows']} rows "
              f"(now {done['rows_now']}) at the next validation; reason: {args.reason.strip()}")
        return 0
    unknown = [s for s in args.schema or [] if s not in plan.consolidated_schemas]
    if unknown:
        print(f"not a consolidated schema: {', '.join(unknown)}; use {', '.join(plan.consolidated_schemas)}",
              file=sys.stderr)
        return 2
    dsn = db.resolve_dsn()
    try:
        verdict = validate(dsn, plan, run_id=f"cli__{_stamp()}", user=user, schemas=args.schema)
    except NightlyFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(verdict.rows, indent=2, default=str))
    else:
        print(render_table(verdict.rows, failures_only=args.failures_only))
        print()
    print(verdict.summary())
    print(f"page: {verdict.page}")
    return 0 if verdict.passed else 1


def render_table(rows: list[dict], *, failures_only: bool = False) -> str:
    header = ("schema", "table", "check", "column(s)", "result", "observed", "rows")
    body = [(r["schema_name"], r["table_name"] or "(schema)", r["check_name"], r["column_names"] or "",
             "ok" if r["passed"] else "FAILED", "" if r["observed"] is None else str(r["observed"]),
             "" if r["rows"] is None else str(r["rows"]))
            for r in rows if not (failures_only and r["passed"])]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])
