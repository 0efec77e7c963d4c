"""`lease` and `lease release --run RUN_ID [--reason TEXT]`: who holds the database's run lease
(holder, heartbeat age, connected, pending approval), and ending by hand the lease of a run
that is gone for good (refused in one line while a task of it works or it waits for approval)."""
from __future__ import annotations

import json
import sys

from consolidation import api
from consolidation.core import db
from consolidation.core.plan import load_plan


def status(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        api.sweep_interrupted(conn, plan, by="lease")  # running entries whose process is gone
        out = api.lease_holder(conn, plan)
    if getattr(args, "json", False):
        print(json.dumps(out.value, indent=2, default=str))
        return 0
    for line in out.lines:
        print(line)
    return 0


def release(args) -> int:
    plan = load_plan()
    with db.connect() as conn:
        out = api.lease_release_by_hand(conn, plan, run_id=args.run, reason=args.reason)
    if not out.ok:
        print(" ".join(str(out.failure).split()), file=sys.stderr)
        return 1
    for line in out.lines:
        print(line)
    return 0
