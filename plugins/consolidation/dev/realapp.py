"""A second fixture, shaped like a real application's database rather than like a plan.

The demo fixture (dev/fixture.py) was written with its plan. This one is what a user
brings: the application already has consolidated tables of its own (`betting`, `ingest`),
with their own column names, types, constraints and rows; the legacy schemas (`scraper`,
`wagers`) keep values the targets need inside JSONB payloads (a game's time and teams,
the prices of an odds scrape), use other codes (game states `new/done/ppd/canc`, bet
results `W/L/P`), store the application's integer game ids as text (some `TBD`, one
pointing at no game, one stake of zero: rows that must be quarantined), and hold what
a plan author tends to miss: a trigger with its function in the legacy schema, a leftover
table nobody planned, and an application role with write grants on the legacy tables
(read-only on the consolidated ones).

Its plan is include/plans/realapp.yaml; its SQL is include/sql/realapp/ (static, so two
builds are identical row for row; the session TimeZone is pinned to UTC while it runs).

`build(dsn)` builds all of it in one transaction. Its plan recreates the trigger's function
(the trigger follows its copied table) and drops the leftover table (`objects:`).
`trigger=False` leaves out the trigger and its function, `unplanned=False` the leftover table.
"""
from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from consolidation.core import config
from consolidation.dev.fixture import open_connection

LEGACY_SCHEMAS = ("scraper", "wagers")
APPLICATION_SCHEMAS = ("betting", "ingest")  # consolidated schemas the application made itself
APP_ROLE = "realapp_writer"
PLAN_FILE = config.REPO_ROOT / "include" / "plans" / "realapp.yaml"

# Rows per table right after build().
LEGACY_ROWS = {
    "scraper.team_codes": 12,
    "scraper.games": 120,
    "scraper.odds_raw": 600,
    "scraper.scrape_runs": 40,
    "wagers.bets": 300,
}
UNPLANNED_ROWS = {"wagers.bets_export_2023": 25}
APPLICATION_ROWS = {  # the application's own rows in its consolidated tables, before Phase 4
    "betting.teams": 10,
    "betting.games": 20,
    "ingest.odds_snapshots": 30,
    "betting.wagers": 10,
}
# wagers.bets rows no target can hold: ids 'TBD' (3) or '' (1) do not cast to integer,
# 9999 is no game (foreign key), a zero stake breaks the target's CHECK.
UNSTORABLE_BETS = {1017: "game_id 'TBD'", 1088: "game_id 'TBD'", 1203: "game_id 'TBD'",
                   1150: "game_id ''", 1240: "game 9999 does not exist", 1275: "stake 0"}

BASE_FILES = ("01_application.sql", "02_legacy.sql", "03_app_objects.sql")
TRIGGER_FILE = "04_trigger.sql"
UNPLANNED_FILE = "05_unplanned.sql"
_LOCK_KEY = 7_110_420_005  # one build per database at a time


class RealappError(RuntimeError):
    """The fixture cannot be built here; the message says why."""


def sql_dir() -> Path:
    return config.SQL_DIR / "realapp"


def build(conn_or_dsn: psycopg.Connection | str | None = None, *, trigger: bool = True,
          unplanned: bool = True) -> dict[str, int]:
    """Build the realapp database into an empty one; return rows per table."""
    files = list(BASE_FILES) + ([TRIGGER_FILE] if trigger else []) + ([UNPLANNED_FILE] if unplanned else [])
    with open_connection(conn_or_dsn) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            present = [r[0] for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s) ORDER BY 1",
                (list(LEGACY_SCHEMAS + APPLICATION_SCHEMAS),)).fetchall()]
            if present:
                raise RealappError(f"refusing to build the realapp fixture: schemas {', '.join(present)} exist; "
                                   "build it into an empty database")
            zone = conn.execute("SELECT current_setting('TimeZone')").fetchone()[0]
            conn.execute("SELECT set_config('TimeZone', 'UTC', true)")
            for name in files:
                conn.execute((sql_dir() / name).read_text(encoding="utf-8"))
            conn.execute("ANALYZE")
            conn.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
            names = list(LEGACY_ROWS) + list(APPLICATION_ROWS) + (list(UNPLANNED_ROWS) if unplanned else [])
            return {n: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(*n.split(".")))).fetchone()[0] for n in names}
