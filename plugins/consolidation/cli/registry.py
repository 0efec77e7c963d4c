"""`registry show | export | resolve NAME | smoke`: the table registry Phase 4C writes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from consolidation import api
from consolidation.core import db
from consolidation.core.ledger import operator_name
from consolidation.core.plan import load_plan


def _print(lines) -> None:
    for line in lines:
        print(line)


def show(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        out = api.registry_show(conn, plan)
    if args.json:
        print(json.dumps(out.data, indent=2))
        return 0
    if not out.ok:
        print(str(out.failure), file=sys.stderr)
        return 1
    _print(out.lines)
    return 0


def export(args) -> int:
    with db.connect() as conn:
        out = api.registry_export(conn, load_plan(), args.dir, run_id="cli", user=operator_name())
    print(out.data)
    return 0


def resolve(args) -> int:
    """Exit 1 when the name is not registered."""
    if args.file:
        out = api.registry_resolve(Path(args.file), args.name, show_sql=args.sql)
    else:
        with db.connect() as conn:
            out = api.registry_resolve(conn, args.name, show_sql=args.sql)
    if not out.ok:
        print(str(out.failure), file=sys.stderr)
        return 1
    _print(out.lines)
    return 0


def smoke(args) -> int:
    """Exit 1 when a smoke query returns other rows through the registry."""
    with db.connect() as conn:
        conn.read_only = True
        out = api.registry_smoke(conn, load_plan(), args.dir)
    _print(out.lines)
    return 0 if out.ok else 1
