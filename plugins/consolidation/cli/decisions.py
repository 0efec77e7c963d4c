"""`approve`, `reject`, `status`: a person's decision on the cleanup request from a shell,
recorded with --by, the operating-system user and the database role, and the status they
decide from. (The other channel is the Airflow UI: the DAG phase4d_cleanup_approval.)"""
from __future__ import annotations

import json
import sys

from consolidation import api
from consolidation.core import db
from consolidation.core.plan import load_plan


def _decide(args, decision: str) -> int:
    plan = load_plan()
    with db.connect() as conn:
        out = api.decide(conn, plan, decision, by=args.by, reason=args.reason, request_id=args.request)
    if not out.ok:
        print(f"{decision} refused: {' '.join(str(out.failure).split())}", file=sys.stderr)
        return 1
    for line in out.lines:
        print(line)
    return 0


def approve(args) -> int:
    return _decide(args, "approve")


def reject(args) -> int:
    return _decide(args, "reject")


def status(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        conn.read_only = True
        out = api.status(conn, plan)
    if args.json:
        print(json.dumps(out.data, indent=2, default=str))
        return 0
    for line in out.lines:
        print(line)
    return 0
