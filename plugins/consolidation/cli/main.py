"""`python -m consolidation <command> ...` (with PYTHONPATH=plugins).

Adding a command: add one line to COMMANDS,

    "inventory": ("consolidation.inventory_cli:register", "list schemas, tables and row counts"),

and write that function. It receives argparse's subparsers object, adds exactly one
parser with the same name (which may have its own sub-subcommands) and sets
`func=<callable(args) -> int | None>` on it:

    def register(subparsers):
        p = subparsers.add_parser("inventory", help="...")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=run)

Only the module of the invoked command is imported, so `python -m consolidation db url`
never imports Airflow or Great Expectations, and a command whose module does not exist
yet does not break the others. Commands raise db.DatabaseUnreachable (or print and
return a non-zero code); main() turns DatabaseUnreachable into one stderr line + exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable, Sequence

PROG = "python -m consolidation"

# name -> ("module:function", one-line help shown by `python -m consolidation -h`)
COMMANDS: dict[str, tuple[str, str]] = {
    "db": ("consolidation.cli.main:register_db", "the embedded PostgreSQL server: start | stop | status | url | ping"),
    "fixture": ("consolidation.dev.fixture:register", "build the demo legacy database: fixture build [--scale N]"),
    "inventory": ("consolidation.cli.commands:register_inventory", "check the plan against the live database"),
    "plan": ("consolidation.cli.commands:register_plan", "validate the plan file and summarise it"),
    "sql": ("consolidation.cli.commands:register_sql", "print the SQL a phase would run, without running it"),
    "registry": ("consolidation.cli.registry:register", "the table registry services read: show | export | resolve NAME | smoke"),
    "validate": ("consolidation.cli.nightly:register", "run the nightly validation now; --accept-drop TABLE --reason TEXT"),
    "approve": ("consolidation.cli.decisions:register_approve", "approve the pending cleanup request: --by NAME --reason TEXT [--request ID]"),
    "reject": ("consolidation.cli.decisions:register_reject", "reject the pending cleanup request: --by NAME --reason TEXT [--request ID]"),
    "status": ("consolidation.cli.decisions:register_status", "phases, their latest gates, and any pending cleanup approval"),
    "airflow-local": ("consolidation.dev.local_airflow:register", "Airflow with its UI on this machine (make airflow): start | stop | status"),
    "demo": ("consolidation.dev.demo:register", "the whole job on the configured database, through the DAGs"),
    "report": ("consolidation.phases.report:register", "write the Phase 4 completion report (Markdown + HTML): [--run ID] [--out DIR]"),
}

EXIT_UNREACHABLE = 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(_command_name(argv))
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):  # e.g. `db` without its subcommand
            parser.parse_args([*argv, "--help"])
            return 2
        code = args.func(args)
        return int(code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from consolidation.core.db import DatabaseUnreachable

        if isinstance(exc, DatabaseUnreachable):
            print(" ".join(str(exc).split()), file=sys.stderr)  # exactly one line
            return EXIT_UNREACHABLE
        raise


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only `command`'s module is imported, the others are listed."""
    parser = argparse.ArgumentParser(prog=PROG, description="Consolidate PostgreSQL schemas.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (target, help_text) in COMMANDS.items():
        if name == command:
            registered = _load(name, target)
            registered(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def _load(name: str, target: str) -> Callable[[argparse._SubParsersAction], None]:
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"{PROG}: command {name!r} is not available yet ({module_name} does not exist)", file=sys.stderr)
        raise SystemExit(2) from None
    return getattr(module, function or "register")


# --------------------------------------------------------------------------- db


def register_db(subparsers: argparse._SubParsersAction) -> None:
    db_parser = subparsers.add_parser("db", help=COMMANDS["db"][1], description="Manage the embedded PostgreSQL server.")
    sub = db_parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    p = sub.add_parser("start", help="initialise (once) and start the server; print its DSN")
    p.set_defaults(func=_db_start)

    p = sub.add_parser("stop", help="stop the server")
    p.set_defaults(func=_db_stop)

    p = sub.add_parser("status", help="running?, pid, port, data directory, DSN")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--check", action="store_true", help="exit 3 when the server is not running")
    p.set_defaults(func=_db_status)

    p = sub.add_parser("url", help="print the embedded server's DSN (does not start it)")
    p.add_argument("--database", default=None, help="database name (default: betting)")
    p.set_defaults(func=_db_url)

    p = sub.add_parser("ping", help="connect to the database commands use (CONSOLIDATION_DB_URL or embedded)")
    p.set_defaults(func=_db_ping)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _db_start(args: argparse.Namespace) -> int:
    from consolidation.core import config, embedded

    if config.configured_db_url():
        _err("note: CONSOLIDATION_DB_URL is set, so commands use that server, not the embedded one")
    print(embedded.start(echo=_err))
    return 0


def _db_stop(args: argparse.Namespace) -> int:
    from consolidation.core import embedded

    if not embedded.stop(echo=_err):
        _err(f"the embedded server is not running ({embedded.data_dir()})")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from consolidation.core import embedded

    info = embedded.status()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value if value is not None else '-'}")
    return 3 if args.check and not info["running"] else 0


def _db_url(args: argparse.Namespace) -> int:
    from consolidation.core import embedded

    print(embedded.url(args.database) if args.database else embedded.url())
    return 0


def _db_ping(args: argparse.Namespace) -> int:
    from consolidation.core import db

    with db.connect() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        dsn = db.redact(db.resolve_dsn())
    print(f"ok: {dsn} (PostgreSQL {version})")
    return 0
