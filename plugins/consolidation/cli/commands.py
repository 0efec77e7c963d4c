"""`inventory`, `plan`, `sql --phase 4a|4b`, `report`, `restore`: the plan and the database, read (and
the completion report written, a backup restored into a scratch database) through consolidation.api."""
from __future__ import annotations

import json
import sys

from consolidation import api
from consolidation.core import db, ledger
from consolidation.core.plan import PlanError, load_plan
from consolidation.phases.backup import BackupFailed


def _print(lines) -> None:
    for line in lines:
        print(line)


def inventory(args) -> int:
    """Exit 1 when a finding blocks the migration."""
    plan = load_plan()
    with db.connect() as conn:
        out = api.inventory(conn, plan)
    if args.json:
        print(json.dumps(out.data.to_dict(), indent=2, default=str))
    else:
        _print(out.lines)
    return 0 if out.ok else 1


def plan(args) -> int:
    if args.schema:
        from consolidation.core.plan import json_schema_text

        print(json_schema_text(), end="")
        return 0
    try:
        loaded = load_plan(args.file)
    except PlanError as exc:
        print(f"plan rejected: {exc}", file=sys.stderr)
        return 1
    _print(api.plan_summary(loaded).lines)
    if args.graph:
        with db.connect() as conn:
            _print(api.step_graph(conn, loaded, written_by="consolidation plan --graph").lines)
    return 0


def sql(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        conn.read_only = True
        if args.phase == "4d":
            out = api.drop_sql_preview(conn, plan)
        elif args.phase == "rollback":
            out = api.rollback_sql_preview(conn, plan)
        else:
            out = api.sql_preview(conn, plan, args.phase.upper())
    for statement in out.lines:
        print(f"{statement}\n")
    return 0


def report(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        if args.json:
            print(json.dumps(api.report_data(conn, plan, args.run), indent=2, default=str))
            return 0
        out = api.report(conn, plan, run_id=args.run, folder=args.out, user=ledger.operator_name())
    print(out.value["markdown"])
    print(out.value["html"])
    return 0


def restore(args) -> int:
    """Exit 1 when refused (one line) or when a restored table differs from the manifest."""
    try:
        out = api.restore_backup(args.backup, args.into, args.schema)
    except BackupFailed as exc:
        print("restore refused: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    _print(out.lines)
    if not out.ok:
        print(f"restore failed: {out.failure}", file=sys.stderr)
        return 1
    return 0
