"""`validate`: the nightly validation now (exit 1 on failure), or, with --accept-drop, a
recorded reason why a migrated table may hold fewer rows."""
from __future__ import annotations

import sys

from consolidation import api
from consolidation.core import db, ledger
from consolidation.core.plan import PlanError, load_plan
from consolidation.phases.nightly import NightlyFailed


def validate(args) -> int:
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
                out = api.accept_drop(conn, plan, args.accept_drop, reason=args.reason, min_rows=args.min_rows,
                                      user=user)
            except (ValueError, NightlyFailed) as exc:
                print(str(exc), file=sys.stderr)
                return 2
        for line in out.lines:
            print(line)
        return 0
    unknown = [s for s in args.schema or [] if s not in plan.consolidated_schemas]
    if unknown:
        print(f"not a consolidated schema: {', '.join(unknown)}; use {', '.join(plan.consolidated_schemas)}",
              file=sys.stderr)
        return 2
    show = "json" if args.json else "failures" if args.failures_only else "table"
    try:
        out = api.validate(db.resolve_dsn(), plan, user=user, schemas=args.schema, show=show)
    except NightlyFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for line in out.lines:
        print(line)
    return 0 if out.ok else 1
