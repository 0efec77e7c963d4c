"""`python -m consolidation <command> ...` (with PYTHONPATH=plugins): every command, every
option, in build_parser() below - the one place the command line is defined.

Each command's handler is named "module:function" (a module of consolidation.cli: db, dev,
commands, decisions, lease, registry, nightly) and imported only when that command runs, so
`python -m consolidation db url` imports neither the engine, nor Airflow, nor Great
Expectations. A handler takes the parsed arguments and returns the exit code; it calls
consolidation.api (or consolidation.dev for db, fixture, demo and airflow-local) and prints.
Commands raise DatabaseUnreachable (or print and return a non-zero code); main() turns
DatabaseUnreachable into one stderr line + exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Sequence

from consolidation.core import config
from consolidation.core.errors import DatabaseUnreachable, PlanError

PROG = "python -m consolidation"
EXIT_UNREACHABLE = 2
FIXTURE_DESCRIPTION = "A deterministic database as Phases 1-3 left it: the fixture Phase 4 runs against."


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):  # e.g. `db` without its subcommand
            parser.parse_args([*argv, "--help"])
            return 2
        code = handler(args.func)(args)
        return int(code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `consolidation ... | head`: the reader is gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except DatabaseUnreachable as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)  # exactly one line
        return EXIT_UNREACHABLE
    except PlanError as exc:  # a plan that cannot be run: one line naming the file, the entry and the fix
        text = " ".join(str(exc).splitlines())
        plan_file = str(getattr(args, "file", None) or config.plan_path())
        if plan_file not in text and not text.startswith("smoke query"):  # found against the database
            text = f"{plan_file}: {text}"
        print("plan rejected: " + text, file=sys.stderr)
        return 1


def handler(target: str):
    """The function "module:function" of consolidation.cli names (imported now)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(f"consolidation.cli.{module}"), function)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"dry_run\": true}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Consolidate PostgreSQL schemas.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, func: str | None = None, **kwargs) -> argparse.ArgumentParser:
        p = commands.add_parser(name, help=help, **kwargs)
        if func:
            p.set_defaults(func=func)
        return p

    def actions(p: argparse.ArgumentParser, dest: str, metavar: str = "ACTION"):
        return p.add_subparsers(dest=dest, metavar=metavar, required=True)

    def action(sub, name: str, func: str, **kwargs) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kwargs)
        p.set_defaults(func=func)
        return p

    # ---------------------------------------------------------------- the embedded server
    sub = actions(command("db", "the embedded PostgreSQL server: start | stop | status | url | ping",
                          description="Manage the embedded PostgreSQL server."), "db_command")
    action(sub, "start", "db:start", help="initialise (once) and start the server; print its DSN")
    action(sub, "stop", "db:stop", help="stop the server")
    p = action(sub, "status", "db:status", help="running?, pid, port, data directory, DSN")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--check", action="store_true", help="exit 3 when the server is not running")
    p = action(sub, "url", "db:url", help="print the embedded server's DSN (does not start it)")
    p.add_argument("--database", default=None, help="database name (default: betting)")
    action(sub, "ping", "db:ping", help="connect to the database commands use (CONSOLIDATION_DB_URL or embedded)")

    sub = actions(command("fixture", "build the demo legacy database: fixture build [--scale N]",
                          description=FIXTURE_DESCRIPTION), "fixture_command", "{build}")
    p = action(sub, "build", "dev:fixture_build",
               help="create the legacy and consolidated schemas with deterministic rows",
               description="Create the six legacy schemas (34 objects) and the four consolidated "
                           "schemas in one transaction, into CONSOLIDATION_DB_URL or the embedded server.")
    p.add_argument("--scale", type=positive_int, default=1, metavar="N",
                   help="multiply the five large tables by N (default 1: the plan's counts)")
    p.add_argument("--if-empty", action="store_true",
                   help="do nothing (exit 0) when the schemas already exist, instead of failing")

    # ---------------------------------------------------------------- the plan and the database
    p = command("inventory", "check the plan against the live database", "commands:inventory",
                description="Introspect the legacy schemas and compare them with the plan. "
                            "Exit 1 when a finding blocks the migration.")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")

    p = command("plan", "validate the plan file and summarise it", "commands:plan")
    p.add_argument("--file", help="plan file (default: CONSOLIDATION_PLAN or include/plans/phase4.yaml)")
    p.add_argument("--schema", action="store_true",
                   help="print the plan's JSON Schema (include/plans/plan.schema.json) instead")
    p.add_argument("--graph", action="store_true",
                   help="(re)write the 4B step graph from the database's catalog (4A writes it; for where 4A ran "
                        "elsewhere): $CONSOLIDATION_STATE_DIR/plans/<plan sha256>.graph.json")

    p = command("sql", "print the SQL a phase would run, without running it", "commands:sql",
                description="Like Liquibase's update-sql: reads the live catalog, writes nothing.")
    p.add_argument("--phase", required=True, type=str.lower, choices=["4a", "4b", "4d", "rollback"])

    # ---------------------------------------------------------------- 4C: the table registry
    sub = actions(command("registry", "the table registry services read: show | export | resolve NAME | smoke",
                          description="Read the table registry Phase 4C writes (operational.consolidation_registry)."),
                  "registry_command")
    p = action(sub, "show", "registry:show", help="one line per entry: legacy name -> consolidated table (filter)")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p = action(sub, "export", "registry:export", help="write registry.json for services that read files")
    p.add_argument("--dir", help="folder (default: $CONSOLIDATION_REGISTRY_DIR or .state/registry)")
    p = action(sub, "resolve", "registry:resolve", help="where a legacy table lives now; exit 1 when it is not registered")
    p.add_argument("name", help="legacy schema.table, e.g. tracking.active_strategy_configs")
    p.add_argument("--file", help="read a registry.json instead of the database")
    p.add_argument("--sql", action="store_true", help="print the SELECT presenting the legacy columns")
    p = action(sub, "smoke", "registry:smoke", help="run the service smoke queries both ways; exit 1 when any differ")
    p.add_argument("--dir", help="folder of smoke queries (default: the plan's smoke_dir)")

    # ---------------------------------------------------------------- nightly validation
    p = command("validate", "run the nightly validation now; --accept-drop TABLE --reason TEXT", "nightly:validate",
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

    # ---------------------------------------------------------------- 4D: decisions, status, report
    for name, verb in (("approve", "approve"), ("reject", "reject")):
        p = command(name, f"{verb} the waiting cleanup approval in Airflow: --user NAME --reason TEXT [--request ID]",
                    f"decisions:{name}",
                    description=f"{verb.capitalize()} the Phase 4D approval waiting in Airflow (Required Actions), "
                                "through its REST API as --user: Airflow checks that you are an assigned approver "
                                "and records you as the respondent. Password from $CONSOLIDATION_AIRFLOW_PASSWORD "
                                "or a prompt; or a token from $CONSOLIDATION_AIRFLOW_TOKEN. Exits 1 with the "
                                "reason when refused.")
        p.add_argument("--user", help="your Airflow user name (not needed with $CONSOLIDATION_AIRFLOW_TOKEN)")
        p.add_argument("--airflow-url", default=None,
                       help="the Airflow api-server (default: $CONSOLIDATION_AIRFLOW_URL or http://localhost:8080)")
        p.add_argument("--reason", required=True, help="why (at least 5 characters): what was reviewed")
        p.add_argument("--request", type=int, default=None, help="request id (default: the one waiting)")

    p = command("status", "phases, their latest gates, and any pending cleanup approval", "decisions:status")
    p.add_argument("--json", action="store_true", help="print a JSON object")

    p = command("lease", "the database's run lease: holder, heartbeat, connected, pending approval; "
                "lease release --run RUN_ID [--reason TEXT]", "lease:status",
                description="Show which run holds the database's lease (4A, 4B, 4C, 4D, rollback: one at a time).")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    sub = p.add_subparsers(dest="lease_command", metavar="{release}")
    p = action(sub, "release", "lease:release",
               help="end the lease of a run that is gone for good (refused while it works or waits for approval)")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="the run id holding the lease")
    p.add_argument("--reason", help="why (recorded with your user name in the ledger)")

    # ---------------------------------------------------------------- Airflow on this machine, the demo
    sub = actions(command("airflow-local", "Airflow with its UI on this machine (make airflow): start | stop | status",
                          description="Run Airflow's api-server (UI), scheduler, dag-processor and triggerer in the "
                                      "background (LocalExecutor, metadata in the embedded PostgreSQL)."),
                  "airflow_command")
    p = action(sub, "start", "dev:airflow_start",
               help="start (migrating the metadata first) and wait until the DAGs are loaded")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness (default 300)")
    action(sub, "stop", "dev:airflow_stop", help="stop every component")
    p = action(sub, "status", "dev:airflow_status", help="pids, health, URL and logins")
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 3 unless every component is running")

    p = command("demo", "the whole job on the configured database, through the DAGs", "dev:demo")
    p.add_argument("--scale", type=int, default=1, help="fixture scale when the database is empty")
    p = command("run", "one phase's DAG on your database and plan, without a scheduler: run --phase 4a|4b|4c|4d|"
                "rollback|nightly [--conf JSON]", "dev:run_phase",
                description="Runs the phase's DAG with `airflow dags test` (every task through Airflow) against the "
                            "database commands use (CONSOLIDATION_DB_URL, else the embedded server) and the plan "
                            "(CONSOLIDATION_PLAN). 4D serves Airflow's core API here while it waits and prints how "
                            "to approve as one of the plan's approvers from another shell.")
    p.add_argument("--phase", required=True, type=str.lower, choices=["4a", "4b", "4c", "4d", "rollback", "nightly"])
    p.add_argument("--conf", type=_json_object, default=None, metavar="JSON",
                   help='the run\'s params, e.g. \'{"dry_run": true}\' (4B) or \'{"backup_dir": "/backups"}\' (4D)')
    p.add_argument("--approve-as", metavar="USER", help="4D: approve as this plan approver from this process")
    p.add_argument("--reason", help="with --approve-as: why (at least 10 characters)")

    p = command("restore", "restore a 4D backup into a scratch database and verify it: --backup DIR --into DSN",
                "commands:restore",
                description="Restores the archives of one 4D backup folder (manifest.json beside them) into the "
                            "database --into (one transaction, with the pg_restore of that server's version when it "
                            "reads them), then compares every table's checksum with the manifest and prints rows and "
                            "OK/MISMATCH per table. Refuses, in one line, an archive whose sha256 differs from the "
                            "manifest and a database in which those schemas already hold objects. Exit 1 when "
                            "refused or a table differs.")
    p.add_argument("--backup", required=True, metavar="DIR", help="the backup folder (e.g. .state/backups/<run id>)")
    p.add_argument("--into", required=True, metavar="DSN", help="the scratch database to restore into")
    p.add_argument("--schema", action="append", metavar="S", help="restore only this schema (repeatable)")

    p = command("report", "write the Phase 4 completion report (Markdown + HTML): [--run ID] [--out DIR]",
                "commands:report",
                description="Writes report.md and report.html (self-contained) for a 4D run "
                            "(default: the latest) and records them in the ledger.")
    p.add_argument("--run", help="run id of the 4D run (default: the latest run of 4D, else of 4B)")
    p.add_argument("--out", help="folder (default: CONSOLIDATION_REPORT_DIR or .state/reports, /<run id>)")
    p.add_argument("--json", action="store_true", help="print the collected data as JSON instead")
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
