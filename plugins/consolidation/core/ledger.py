"""The ledger: the tool's own history, one row per run, phase, gate and step.

Modeled on Flyway's flyway_schema_history and Liquibase's DATABASECHANGELOG: who,
when, what, with checksums and a status. It lives beside the tool's other tables
(quarantine, conflicts) in the plan's tool schema under the tool prefix, so it never
collides with a migrated table such as operational.migration_log.
"""
from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from consolidation.core.catalog import relation_exists
from consolidation.core.plan import Plan

# Statuses a ledger row moves through; a running row whose process is gone becomes
# interrupted (core.runs.interrupted: open_entry records the backend that will finish it).
RUNNING, SUCCESS, FAILED, REFUSED, INTERRUPTED = "running", "success", "failed", "refused", "interrupted"


def _ident(plan: Plan, name: str) -> sql.Identifier:
    return sql.Identifier(*plan.tool_table(name))


def tool_ident(plan: Plan, name: str) -> sql.Identifier:
    """Qualified identifier of one of the tool's tables (ledger, quarantine, ...)."""
    return _ident(plan, name)


def ensure_tool_tables(conn, plan: Plan) -> None:
    """Create the tool schema objects if missing (idempotent, additive only)."""
    schema = sql.Identifier(plan.tool_schema)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {ledger} (
            id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id           text NOT NULL,
            phase            text NOT NULL,
            kind             text NOT NULL CHECK (kind IN ('run', 'step', 'gate', 'backup', 'report', 'ddl', 'approval', 'rollback')),
            name             text NOT NULL,
            source           text,
            target           text,
            rows_read        bigint,
            rows_inserted    bigint,
            rows_merged      bigint,
            rows_quarantined bigint,
            rows_conflicts   bigint,
            source_checksum  text,
            target_checksum  text,
            plan_sha256      text,
            status           text NOT NULL,
            message          text,
            details          jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            triggered_by     text,
            db_role          text NOT NULL DEFAULT current_user,
            started_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at      timestamptz
        )""").format(ledger=_ident(plan, "ledger")))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (phase, kind, started_at)").format(
        sql.Identifier(f"{plan.tool_prefix}ledger_phase_idx"), _ident(plan, "ledger")))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {q} (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id      text NOT NULL,
            step        text NOT NULL,
            source      text NOT NULL,
            target      text NOT NULL,
            original    jsonb NOT NULL,
            reason      text NOT NULL,
            sqlstate    text,
            quarantined_at timestamptz NOT NULL DEFAULT clock_timestamp()
        )""").format(q=_ident(plan, "quarantine")))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {c} (
            step         text NOT NULL,
            source       text NOT NULL,
            target       text NOT NULL,
            key          jsonb NOT NULL,
            column_name  text NOT NULL,
            target_value text,
            source_value text,
            resolution   text NOT NULL,
            run_id       text NOT NULL,
            recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (step, key, column_name)
        )""").format(c=_ident(plan, "conflicts")))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {u} (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id      text NOT NULL,
            step        text NOT NULL,
            target      text NOT NULL,
            op          text NOT NULL CHECK (op IN ('insert', 'update')),
            key         jsonb NOT NULL,
            before      jsonb,
            recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            UNIQUE (step, op, key)
        )""").format(u=_ident(plan, "undo")))
    _ensure_row_applier(conn, plan)


def _ensure_row_applier(conn, plan: Plan) -> None:
    """A function that applies a step row by row, quarantining each row that fails.

    Used only when the set-based statement fails: it isolates the rows that cannot be
    stored (failed cast, NOT NULL, CHECK, FK, key collision) with their reason, and the
    rows never leave the database.
    """
    schema, _ = plan.tool_table("x")
    fn = sql.Identifier(schema, f"{plan.tool_prefix}apply_rows")
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {fn}(text, text, text, text, text, text)").format(fn=fn))
    conn.execute(sql.SQL("""
        CREATE FUNCTION {fn}(select_sql text, apply_sql text, p_run_id text,
                                        p_step text, p_source text, p_target text)
        RETURNS TABLE (inserted bigint, merged bigint, applied bigint) LANGUAGE plpgsql AS $body$
        DECLARE
            r record;
            a bigint;
            b bigint;
        BEGIN
            inserted := 0; merged := 0; applied := 0;
            FOR r IN EXECUTE select_sql LOOP
                BEGIN
                    EXECUTE apply_sql INTO a, b USING r.j;
                    inserted := inserted + a;
                    merged := merged + b;
                    applied := applied + 1;
                EXCEPTION WHEN others THEN
                    INSERT INTO {q} (run_id, step, source, target, original, reason, sqlstate)
                    VALUES (p_run_id, p_step, p_source, p_target, r.j, SQLERRM, SQLSTATE);
                END;
            END LOOP;
            RETURN NEXT;
        END
        $body$""").format(fn=fn, q=_ident(plan, "quarantine")))


def applier_function(plan: Plan) -> sql.Composed:
    schema, _ = plan.tool_table("x")
    return sql.SQL("{}").format(sql.Identifier(schema, f"{plan.tool_prefix}apply_rows"))


def operator_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


@dataclass
class Entry:
    """A ledger row being written: open it, then finish it with its outcome."""

    plan: Plan
    id: int

    def finish(self, conn, status: str, message: str | None = None, **fields: Any) -> None:
        details = fields.pop("details", None)
        sets = [sql.SQL("status = %(status)s"), sql.SQL("message = %(message)s"),
                sql.SQL("finished_at = clock_timestamp()")]
        params: dict[str, Any] = {"status": status, "message": message, "id": self.id}
        for key, value in fields.items():
            sets.append(sql.SQL("{} = %({})s").format(sql.Identifier(key), sql.SQL(key)))
            params[key] = value
        if details is not None:
            sets.append(sql.SQL("details = details || %(details)s::jsonb"))
            params["details"] = json.dumps(details, default=str)
        conn.execute(sql.SQL("UPDATE {} SET {} WHERE id = %(id)s").format(
            _ident(self.plan, "ledger"), sql.SQL(", ").join(sets)), params)


def open_entry(conn, plan: Plan, *, run_id: str, phase: str, kind: str, name: str,
               source: str | None = None, target: str | None = None,
               triggered_by: str | None = None, details: dict | None = None) -> Entry:
    row = conn.execute(sql.SQL("""
        INSERT INTO {} (run_id, phase, kind, name, source, target, plan_sha256, status, triggered_by, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb || jsonb_build_object('backend', jsonb_build_object(
                'pid', pg_backend_pid(),
                'start', (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()))))
        RETURNING id""").format(_ident(plan, "ledger")),
        (run_id, phase, kind, name, source, target, plan.sha256, RUNNING, triggered_by or operator_name(),
         json.dumps(details or {}, default=str))).fetchone()
    return Entry(plan, row[0])


def record(conn, plan: Plan, *, status: str, message: str | None = None, **kw) -> int:
    """Open and finish a ledger row in one go (for instantaneous events)."""
    fields = {k: kw.pop(k) for k in list(kw) if k not in
              ("run_id", "phase", "kind", "name", "source", "target", "triggered_by", "details")}
    entry = open_entry(conn, plan, **kw)
    entry.finish(conn, status, message, **fields)
    return entry.id


def latest(conn, plan: Plan, *, phase: str, kind: str, name: str | None = None) -> dict | None:
    """The most recent finished ledger row of a kind (e.g. the latest 4A gate), or None."""
    if not tool_tables_exist(conn, plan):
        return None
    q = sql.SQL("""
        SELECT id, run_id, phase, kind, name, status, message, started_at, finished_at, triggered_by, details
          FROM {} WHERE phase = %s AND kind = %s AND (%s::text IS NULL OR name = %s)
           AND status <> 'running'
         ORDER BY id DESC LIMIT 1""").format(_ident(plan, "ledger"))
    cur = conn.execute(q, (phase, kind, name, name))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d.name for d in cur.description], row))


def tool_tables_exist(conn, plan: Plan) -> bool:
    return relation_exists(conn, *plan.tool_table("ledger"))


def rows(conn, plan: Plan, where: str | sql.Composable = "TRUE", params: tuple = ()) -> list[dict]:
    """Ledger rows for reports and tests; `where` is a static fragment or a Composable."""
    clause = sql.SQL(where) if isinstance(where, str) else where
    cur = conn.execute(sql.SQL("SELECT * FROM {} WHERE {} ORDER BY id").format(
        _ident(plan, "ledger"), clause), params)
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def latest_run_rows(conn, plan: Plan, *, phase: str, kind: str) -> list[dict]:
    """The rows of one kind written by the most recent run of a phase (e.g. 4B's steps)."""
    return rows(conn, plan, sql.SQL(
        "phase = %s AND kind = %s AND run_id = (SELECT run_id FROM {} WHERE phase = %s AND kind = %s "
        "ORDER BY id DESC LIMIT 1)").format(_ident(plan, "ledger")), (phase, kind, phase, kind))
