"""`fixture build`, `demo`, `airflow-local start | stop | status`: the development tools of
consolidation.dev on the command line."""
from __future__ import annotations

import json
import os
import sys
import time

from consolidation.core import db
from consolidation.dev import demo as demo_run, fixture, runner
from consolidation.dev.local_airflow import (DEFAULT_PORT, USERS, LocalAirflow, LocalAirflowError, airflow_home,
                                             dag_ids)


# ------------------------------------------------------------------ fixture
def fixture_build(args) -> int:
    """Print a short summary; 0 on success or skip, 1 if refused. db.DatabaseUnreachable
    propagates (main prints it as one line, exit 2)."""
    scale = getattr(args, "scale", 1)
    if_empty = getattr(args, "if_empty", False)
    target = db.redact(db.resolve_dsn())
    started = time.perf_counter()
    try:
        with db.connect() as conn:
            counts = fixture.build(conn, scale, if_empty=if_empty)
            present = [] if counts else fixture.present_objects(conn)
    except fixture.FixtureError as exc:
        print(f"fixture build failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    if not counts:
        print(f"fixture: {target} already has {fixture.describe(present)}; nothing built (--if-empty)")
        return 0
    legacy = {k: v for k, v in counts.items() if k in fixture.LEGACY_OBJECTS}
    print(
        f"fixture built into {target} (scale {scale}) in {elapsed:.2f} s: "
        f"{len(legacy)} legacy objects ({len(fixture.VIEWS)} views) in {len(fixture.LEGACY_SCHEMAS)} schemas, "
        f"{sum(legacy.values()):,} legacy rows; "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in fixture.LEGACY_OBJECTS)
    )
    for schema in fixture.LEGACY_SCHEMAS:
        objs = {k: v for k, v in legacy.items() if k.startswith(schema + ".")}
        print(f"  {schema:<12} {len(objs):>2} objects {sum(objs.values()):>8,} rows")
    return 0


# ------------------------------------------------------------------ demo, one phase
def demo(args) -> int:
    return demo_run.run(args)


def run_phase(args) -> int:
    return runner.run_phase(args.phase, conf=args.conf, approve_as=args.approve_as, reason=args.reason)


# ------------------------------------------------------------------ airflow-local
def from_environment() -> LocalAirflow:
    return LocalAirflow(home=airflow_home(),
                        port=int(os.environ.get("CONSOLIDATION_AIRFLOW_PORT") or DEFAULT_PORT))


def _print_logins(af: LocalAirflow) -> None:
    passwords = af.passwords()
    print(f"\nAirflow UI: {af.url}  (log in with one of)")
    for user, role in USERS.items():
        what = "triggers the phase DAGs" if user == "operator" else "approves 4D's cleanup (Browse > Required Actions)"
        print(f"  {user:<9} password {passwords[user]:<14} role {role:<6} {what}")
    print(f"passwords file: {af.passwords_file}; logs and pids: {af.run_dir}; stop with `make airflow-stop`")


def airflow_start(args) -> int:
    af = from_environment()
    started = time.monotonic()
    try:
        result = af.start(timeout=args.timeout)
    except LocalAirflowError as exc:
        print(f"airflow-local: {exc}", file=sys.stderr)
        return 1
    settings = af.settings()
    print(f"ready in {time.monotonic() - started:.0f} s: {', '.join(f'{c} {p}' for c, p in result['pids'].items())}")
    print(f"consolidation_db: {db.redact(settings['target_dsn'])}; metadata: {db.redact(settings['meta_url'])}")
    print(f"DAGs: {', '.join(dag_ids())}")
    _print_logins(af)
    return 0


def airflow_stop(args) -> int:
    if not from_environment().stop():
        print("Airflow (airflow-local) is not running")
    return 0


def airflow_status(args) -> int:
    af = from_environment()
    st = af.status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 3 if args.check and not all(st["components"].values()) else 0
    for component, pid in st["components"].items():
        print(f"{component:<14} {'running, pid ' + str(pid) if pid else 'stopped'}")
    health = st["health"]
    if health:
        print("health: " + ", ".join(f"{k} {v.get('status')}" for k, v in health.items() if isinstance(v, dict)))
    if any(st["components"].values()):
        _print_logins(af)
    return 3 if args.check and not all(st["components"].values()) else 0
