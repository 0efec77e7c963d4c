"""A deterministic database as Phases 1-3 left it: the fixture Phase 4 runs against.

`build()` creates, in ONE transaction:

* the four consolidated schemas (raw_data, core_betting, analytics, operational)
  holding only what Phases 1-3 made: core_betting.teams (the 30 MLB teams),
  core_betting.games (6 rows, untouched by Phase 4) and the empty
  core_betting.supplementary_games;
* the six legacy schemas (public, action, splits, tracking, validation,
  backtesting) with exactly the plan's 34 objects (31 tables, 3 views), their
  owned sequences (set past the max key) and indexes, at the plan's row counts;
* the NOLOGIN role betting_app (if missing) with its grants.

Rows are generated inside the server by the static SQL in include/sql/fixture/
(generate_series, modular arithmetic, md5 of constants): two builds are identical
row for row. The five large tables multiply by `scale`; everything else is fixed.
One cross-schema foreign key (tracking.pre_game_recommendations.game_outcome_id ->
public.game_outcomes.id) is added after the SQL files, by CROSS_SCHEMA_FK below.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from consolidation.core import config, db

log = logging.getLogger(__name__)

LEGACY_SCHEMAS = ("public", "action", "splits", "tracking", "validation", "backtesting")
CONSOLIDATED_SCHEMAS = ("raw_data", "core_betting", "analytics", "operational")

# The plan's 34 legacy objects and their rows at scale 1 (views: object kind "view").
LEGACY_OBJECTS: dict[str, int] = {
    "public.sbr_raw_html": 418,
    "public.sbr_parsed_games": 19436,
    "public.game_outcomes": 1281,
    "public.migration_log": 17,
    "public.migration_log_phase2b": 13,
    "public.benchmark_performance": 200,
    "public.benchmark_test": 500,
    "public.concurrency_test": 0,
    "public.performance_test": 50,
    "public.test_parallel": 100,
    "public.test_table": 1,
    "action.dim_teams": 30,
    "action.teams_formatted": 30,
    "action.fact_games": 15,
    "action.games_with_teams": 15,
    "splits.games": 252,
    "splits.sharp_actions": 0,
    "tracking.active_high_roi_strategies": 20,
    "tracking.active_strategy_configs": 20,
    "tracking.strategy_integration_log": 138,
    "tracking.pre_game_recommendations": 5,
    "validation.strategy_records": 0,
    "backtesting.strategy_configurations": 36,
    "backtesting.strategy_config_history": 26,
    "backtesting.strategy_config_cache": 0,
    "backtesting.threshold_configurations": 12,
    "backtesting.orchestrator_update_triggers": 64,
    "backtesting.recent_config_changes": 20,
    "backtesting.strategy_alerts": 0,
    "backtesting.strategy_lifecycle_events": 0,
    "backtesting.alignment_analysis": 0,
    "backtesting.threshold_recommendations": 0,
    "backtesting.standardization_audit_log": 17,
    "backtesting.strategy_performance_backup": 0,
}
VIEWS = ("action.teams_formatted", "action.games_with_teams", "backtesting.recent_config_changes")
# Tables whose row count is multiplied by the scale.
SCALED = (
    "public.sbr_raw_html",
    "public.sbr_parsed_games",
    "public.game_outcomes",
    "splits.games",
    "tracking.strategy_integration_log",
)
# What Phases 1-3 left in the consolidated schemas.
CONSOLIDATED_OBJECTS: dict[str, int] = {
    "core_betting.teams": 30,
    "core_betting.games": 6,
    "core_betting.supplementary_games": 0,
}
LEGACY_PUBLIC_TABLES = tuple(
    name.split(".", 1)[1] for name in LEGACY_OBJECTS if name.startswith("public.")
)
APP_ROLE = "betting_app"
SQL_FILES = (
    "01_consolidated.sql",
    "02_legacy_ddl.sql",
    "03_legacy_rows.sql",
    "04_sequences_grants.sql",
)
# A legacy foreign key that crosses schemas (tracking -> public): Phase 4 must handle
# it when it moves or drops either side. Nullable; fixed ids <= 1281, so present at
# every scale; row 5 (no game) stays NULL. Row counts are unchanged.
CROSS_SCHEMA_FK = """
ALTER TABLE tracking.pre_game_recommendations
  ADD COLUMN game_outcome_id integer
      CONSTRAINT pre_game_recommendations_game_outcome_id_fkey
      REFERENCES public.game_outcomes (id);
UPDATE tracking.pre_game_recommendations AS r
   SET game_outcome_id = v.game_outcome_id
  FROM (VALUES (1, 241), (2, 242), (3, 243), (4, 247), (5, NULL::integer)) AS v (id, game_outcome_id)
 WHERE r.id = v.id;
"""
_LOCK_KEY = 7_110_420_004  # transaction advisory lock: one fixture build per database at a time


class FixtureError(RuntimeError):
    """The fixture cannot be built here; the message says why and what to do."""


def sql_dir() -> Path:
    return config.SQL_DIR / "fixture"


def expected_counts(scale: int = 1) -> dict[str, int]:
    """Rows per object that build(scale) creates: the 34 legacy objects, then the consolidated ones."""
    _check_scale(scale)
    counts = {name: rows * (scale if name in SCALED else 1) for name, rows in LEGACY_OBJECTS.items()}
    counts["action.teams_formatted"] = counts["action.dim_teams"]
    counts["action.games_with_teams"] = counts["action.fact_games"]
    counts["backtesting.recent_config_changes"] = min(20, counts["backtesting.strategy_config_history"])
    counts.update(CONSOLIDATED_OBJECTS)
    return counts


def present_objects(conn: psycopg.Connection) -> list[str]:
    """What of the fixture already exists: schemas (`schema`) and the legacy public tables."""
    rows = conn.execute(
        """
        SELECT nspname FROM pg_namespace
         WHERE nspname = ANY(%(schemas)s)
        UNION ALL
        SELECT 'public.' || c.relname
          FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relname = ANY(%(tables)s)
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        ORDER BY 1
        """,
        {
            "schemas": [s for s in LEGACY_SCHEMAS + CONSOLIDATED_SCHEMAS if s != "public"],
            "tables": list(LEGACY_PUBLIC_TABLES),
        },
    ).fetchall()
    return [r[0] for r in rows]


def describe(present: list[str]) -> str:
    """A short phrase for present_objects(): which legacy and consolidated schemas exist."""
    legacy = [p for p in present if p in LEGACY_SCHEMAS]
    tables = [p for p in present if p.startswith("public.")]
    consolidated = [p for p in present if p in CONSOLIDATED_SCHEMAS]
    parts = []
    if legacy:
        parts.append("legacy schemas " + ", ".join(legacy))
    if tables:
        parts.append(
            f"{len(tables)} legacy public tables"
            if len(tables) > 3 else "legacy tables " + ", ".join(tables)
        )
    if consolidated:
        parts.append("consolidated schemas " + ", ".join(consolidated))
    return "; ".join(parts)


def is_empty(conn_or_dsn: psycopg.Connection | str | None = None) -> bool:
    """True when no legacy schema (nor legacy public table), and no consolidated schema, exists.

    A database that was already consolidated (legacy schemas gone, consolidated
    ones present) is not empty either: building the fixture there would fail.
    """
    with _connection(conn_or_dsn) as conn:
        return not present_objects(conn)


def build(
    conn_or_dsn: psycopg.Connection | str | None = None,
    scale: int = 1,
    *,
    if_empty: bool = False,
) -> dict[str, int]:
    """Create the Phase 1-3 database; return rows per object created ({} if skipped).

    Raises FixtureError when the database already holds legacy or consolidated
    schemas, unless `if_empty`, in which case it logs that and changes nothing.
    All of it runs in one transaction (a savepoint when the caller's connection is
    already in one, which then commits it): on any error nothing is left behind.
    """
    _check_scale(scale)
    with _connection(conn_or_dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            present = present_objects(conn)
            if present:
                if if_empty:
                    log.info("fixture: the database already has %s; nothing built", describe(present))
                    return {}
                raise FixtureError(
                    "refusing to build the fixture: the database already has "
                    + describe(present)
                    + ". Build into an empty database, drop those first, "
                    "or pass if_empty=True (`fixture build --if-empty`) to skip when present."
                )
            zone = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
            conn.execute("SELECT set_config('TimeZone', 'UTC', true)")
            conn.execute("SELECT set_config('consolidation.fixture_scale', %s, true)", (str(scale),))
            for name in SQL_FILES:
                conn.execute((sql_dir() / name).read_text(encoding="utf-8"))
            conn.execute(CROSS_SCHEMA_FK)
            counts = count_rows(conn, expected_counts(scale))
            _analyze(conn, [n for n in counts if n not in VIEWS])
            conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
    return counts


def count_rows(conn: psycopg.Connection, names) -> dict[str, int]:
    """count(*) of each schema-qualified relation, in one round trip."""
    names = list(names)
    parts = [
        sql.SQL("SELECT {}::text, count(*) FROM {}.{}").format(
            sql.Literal(name), *map(sql.Identifier, name.split(".", 1))
        )
        for name in names
    ]
    rows = conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall()
    found = dict(rows)
    return {name: int(found[name]) for name in names}


def _analyze(conn: psycopg.Connection, names) -> None:
    """Fresh planner statistics, as a live database would have (reltuples, pg_stats)."""
    # The jsonb payload's statistics alone cost ~0.5 s: left to autovacuum.
    skip = {"public.sbr_parsed_games": ["id", "raw_html_id", "game_date", "home_team", "away_team", "parsed_at"]}
    targets = sql.SQL(", ").join(
        sql.SQL("{}.{}{}").format(
            *map(sql.Identifier, name.split(".", 1)),
            sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, skip[name])))
            if name in skip else sql.SQL(""),
        )
        for name in names
    )
    conn.execute(sql.SQL("ANALYZE {}").format(targets))


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise FixtureError(f"scale must be a positive integer, got {scale!r}")


@contextmanager
def _connection(conn_or_dsn) -> Iterator[psycopg.Connection]:
    if isinstance(conn_or_dsn, psycopg.Connection):
        yield conn_or_dsn
        return
    with db.connect(conn_or_dsn) as conn:
        yield conn


# ------------------------------------------------------------------ command line
def register(subparsers) -> argparse.ArgumentParser:
    """Add `fixture build [--scale N] [--if-empty]` to a CLI's subparsers; handler: func=cli."""
    parser = subparsers.add_parser(
        "fixture",
        help="build the deterministic Phase 1-3 database Phase 4 runs against",
        description=__doc__.split("\n\n", 1)[0],
    )
    actions = parser.add_subparsers(dest="fixture_command", metavar="{build}")
    actions.required = True
    b = actions.add_parser(
        "build",
        help="create the legacy and consolidated schemas with deterministic rows",
        description="Create the six legacy schemas (34 objects) and the four consolidated "
        "schemas in one transaction, into CONSOLIDATION_DB_URL or the embedded server.",
    )
    b.add_argument("--scale", type=_positive_int, default=1, metavar="N",
                   help="multiply the five large tables by N (default 1: the plan's counts)")
    b.add_argument("--if-empty", action="store_true",
                   help="do nothing (exit 0) when the schemas already exist, instead of failing")
    b.set_defaults(func=cli)
    return parser


def cli(args: argparse.Namespace) -> int:
    """Run `fixture build`: print a short summary; 0 on success or skip, 1 if refused.

    db.DatabaseUnreachable propagates (the consolidation CLI prints it as one line, exit 2).
    """
    scale = getattr(args, "scale", 1)
    if_empty = getattr(args, "if_empty", False)
    target = db.redact(db.resolve_dsn())
    started = time.perf_counter()
    try:
        with db.connect() as conn:
            counts = build(conn, scale, if_empty=if_empty)
            present = [] if counts else present_objects(conn)
    except FixtureError as exc:
        print(f"fixture build failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    if not counts:
        print(f"fixture: {target} already has {describe(present)}; nothing built (--if-empty)")
        return 0
    legacy = {k: v for k, v in counts.items() if k in LEGACY_OBJECTS}
    print(
        f"fixture built into {target} (scale {scale}) in {elapsed:.2f} s: "
        f"{len(legacy)} legacy objects ({len(VIEWS)} views) in {len(LEGACY_SCHEMAS)} schemas, "
        f"{sum(legacy.values()):,} legacy rows; "
        + ", ".join(f"{k} {v}" for k, v in counts.items() if k not in LEGACY_OBJECTS)
    )
    for schema in LEGACY_SCHEMAS:
        objs = {k: v for k, v in legacy.items() if k.startswith(schema + ".")}
        print(f"  {schema:<12} {len(objs):>2} objects {sum(objs.values()):>8,} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m consolidation.dev.fixture build [--scale N] [--if-empty]`, or args from a CLI."""
    if isinstance(argv, argparse.Namespace):
        return cli(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["fixture"]:
        argv = ["fixture", *argv]
    parser = argparse.ArgumentParser(prog="consolidation")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except db.DatabaseUnreachable as exc:
        print(" ".join(str(exc).split()), file=sys.stderr)
        return 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
