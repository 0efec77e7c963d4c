"""Ledger entries whose process is gone are marked `interrupted`, with when and where.

An entry opened by ledger.open_entry records the backend that opened it (pid and start
time, details.backend); only that backend finishes it. So a `running` entry whose backend
no longer exists (the process was killed, the server restarted) can never finish: it is
marked interrupted by the next run (lease.acquire) or by `consolidation status`. Entries
without a recorded backend fall back to a bound on their age. Lease rows are judged by
the lease's own rule (lease.py): they span several tasks and connections.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core import ledger
from consolidation.core.plan import Plan

INTERRUPTED = "interrupted"
# a running entry without a recorded backend is taken as interrupted after this long
UNTRACKED_BOUND_SECONDS = 6 * 3600

_BACKEND_GONE = sql.SQL("""
    NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = (l.details->'backend'->>'pid')::int
                   AND (a.backend_start IS NULL
                        OR a.backend_start = (l.details->'backend'->>'start')::timestamptz))""")


def mark_interrupted(conn, plan: Plan, *, by: str) -> list[dict]:
    """Mark every running non-lease entry whose process is gone; returns them (committed).
    `by` says who noticed (a run id, or 'status')."""
    if not ledger.tool_tables_exist(conn, plan):
        conn.commit()
        return []
    t = ledger.tool_ident(plan, "ledger")
    cur = conn.execute(sql.SQL("""
        WITH gone AS (
            SELECT l.id, l.run_id,
                   (SELECT p.name || ' at ' || to_char(p.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC'
                      FROM {t} p WHERE p.run_id = l.run_id AND p.id <> l.id AND p.status <> 'running'
                       AND p.finished_at IS NOT NULL AND p.id < l.id ORDER BY p.id DESC LIMIT 1) AS last_done
              FROM {t} l
             WHERE l.status = 'running' AND l.name <> 'lease'
               AND CASE WHEN l.details ? 'backend' THEN {gone}
                        ELSE l.started_at < clock_timestamp() - make_interval(secs => %(bound)s) END
               FOR UPDATE OF l SKIP LOCKED)
        UPDATE {t} AS l SET status = 'interrupted', finished_at = clock_timestamp(),
               message = 'interrupted: the process running it is gone (' ||
                         CASE WHEN l.details ? 'backend' THEN 'database backend pid ' || (l.details->'backend'->>'pid')
                              || ' no longer exists' ELSE 'no heartbeat since it started' END ||
                         '); it started at ' || to_char(l.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                         || ' UTC' || coalesce('; last finished entry of run ' || l.run_id || ': ' || gone.last_done, '')
                         || '; its transaction was rolled back, re-run the phase to continue',
               details = l.details || jsonb_build_object('interrupted', jsonb_build_object(
                         'noticed_by', %(by)s::text, 'noticed_at', clock_timestamp(), 'last_done', gone.last_done))
          FROM gone WHERE l.id = gone.id
        RETURNING l.id, l.run_id, l.phase, l.kind, l.name, l.source, l.target, l.started_at, l.message""").format(
        t=t, gone=_BACKEND_GONE), {"bound": UNTRACKED_BOUND_SECONDS, "by": by})
    cols = [d.name for d in cur.description]
    out = [dict(zip(cols, r)) for r in cur.fetchall()]
    conn.commit()
    return out


def interruptions(conn, plan: Plan, run_id: str | None = None) -> list[dict]:
    """Ledger entries marked interrupted (of one run, or all), oldest first."""
    if not ledger.tool_tables_exist(conn, plan):
        return []
    where = sql.SQL("status = 'interrupted'")
    params: tuple = ()
    if run_id:
        where = sql.SQL("{} AND run_id = %s").format(where)
        params = (run_id,)
    return ledger.rows(conn, plan, where, params)


def describe(row: dict) -> str:
    where = row.get("source") or row.get("target")
    return (f"{row['phase']} {row['kind']} {row['name']}{' (' + where + ')' if where and where not in row['name'] else ''}"
            f" of run {row['run_id']}: {row['message']}")


