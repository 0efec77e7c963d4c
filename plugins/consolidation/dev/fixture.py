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

import logging
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
    with open_connection(conn_or_dsn) as conn:
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
    with open_connection(conn_or_dsn) as conn:
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
        sql.SQL("SELECT {}::text, count(*) FROM {}").format(sql.Literal(name), sql.Identifier(*name.split(".", 1)))
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
        sql.SQL("{}{}").format(
            sql.Identifier(*name.split(".", 1)),
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
def open_connection(conn_or_dsn) -> Iterator[psycopg.Connection]:
    """The given connection, or a new one to the DSN (closed afterwards)."""
    if isinstance(conn_or_dsn, psycopg.Connection):
        yield conn_or_dsn
        return
    with db.connect(conn_or_dsn) as conn:
        yield conn
