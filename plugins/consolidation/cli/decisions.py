"""`approve`, `reject`, `status`: a person's decision on the cleanup approval from a shell, given
through Airflow's REST API as that person (the same check and record as Required Actions in
the UI: Airflow authenticates them and refuses anyone not assigned), and the status they
decide from."""
from __future__ import annotations

import getpass
import json
import os
import sys

from consolidation import api
from consolidation.core import db
from consolidation.core.plan import load_plan

DEFAULT_URL = "http://localhost:8080"


def _decide(args, decision: str) -> int:
    url = args.airflow_url or os.environ.get("CONSOLIDATION_AIRFLOW_URL") or DEFAULT_URL
    token = os.environ.get("CONSOLIDATION_AIRFLOW_TOKEN")
    try:
        if not token:
            if not args.user:
                print(f"{decision} refused: give --user NAME (your Airflow login) or set CONSOLIDATION_AIRFLOW_TOKEN",
                      file=sys.stderr)
                return 1
            password = os.environ.get("CONSOLIDATION_AIRFLOW_PASSWORD")
            if password is None:
                if not sys.stdin.isatty():
                    print(f"{decision} refused: no password: set CONSOLIDATION_AIRFLOW_PASSWORD or run it in a "
                          "terminal to be asked", file=sys.stderr)
                    return 1
                password = getpass.getpass(f"Airflow password for {args.user}: ")
            token = api.airflow_token(url, args.user, password)
        out = api.respond(url, token, decision, args.reason, request_id=args.request)
    except api.AirflowApiError as exc:
        out = api.Outcome(failure=exc)
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
        # the one write: running entries whose process is gone become `interrupted`
        api.sweep_interrupted(conn, plan, by="status")
        conn.read_only = True
        out = api.status(conn, plan)
    if args.json:
        print(json.dumps(out.data, indent=2, default=str))
        return 0
    for line in out.lines:
        print(line)
    return 0
