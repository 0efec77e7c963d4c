"""Quarantined rows to the end of the job: accounted for, never migrated.

4B sends each source row no target can hold to the tool's quarantine table, with the
row as JSONB (`original` = to_jsonb of the legacy row) and the database's reason, and
accepts up to the step's `quarantine_threshold`. From then on every phase counts those
rows as accounted for rather than lost:

- 4C compares the legacy rows *minus* the quarantined ones with what the registry returns
  (actions.base.not_quarantined: matched on the original row) and lists the quarantine;
- the 4D approval request states them per step (summary()), and the fingerprint covers
  them (checksum(): a change to the quarantine changes the digest the approval is bound to);
- the backup holds them: the legacy tables are dumped whole, and the tool schema keeps
  the quarantine table itself (it is never dropped);
- the completion report and the nightly validation list them (summary()).

Everything here reads; nothing writes.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.catalog import CHECKSUM, relation_exists, row_hash_of
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan


def table_name(plan: Plan) -> str:
    """Where quarantined rows are kept (schema.table of the tool's quarantine table)."""
    return ".".join(plan.tool_table("quarantine"))


def _exists(conn, plan: Plan) -> bool:
    return relation_exists(conn, *plan.tool_table("quarantine"))


def summary(conn, plan: Plan) -> list[dict]:
    """Per plan step that quarantined rows, in plan order: step, source, target, rows, the
    reasons with their counts, a few of the rows' keys, and where the rows are kept.

    What the 4D approval request states, the completion report lists and the nightly
    validation shows; [] when nothing was quarantined (or 4B never ran)."""
    if not _exists(conn, plan):
        return []
    order = {s.name: i for i, s in enumerate(plan.steps)}
    rows = conn.execute(sql.SQL(
        "SELECT step, min(source), min(target), count(*), "
        "  (SELECT jsonb_agg(jsonb_build_object('reason', r.reason, 'rows', r.n) ORDER BY r.n DESC, r.reason) "
        "     FROM (SELECT reason, count(*) AS n FROM {q} AS q2 WHERE q2.step = q.step GROUP BY reason) AS r), "
        "  (SELECT jsonb_agg(x.original ORDER BY x.id) FROM (SELECT id, original FROM {q} AS q3 "
        "     WHERE q3.step = q.step ORDER BY id LIMIT 5) AS x), "
        "  min(quarantined_at), max(run_id) "
        "FROM {q} AS q GROUP BY step").format(q=tool_ident(plan, "quarantine"))).fetchall()
    where = table_name(plan)
    out = []
    for step, source, target, n, reasons, sample, first_at, run_id in rows:
        threshold = next((s.quarantine_threshold for s in plan.steps if s.name == step), None)
        out.append({"step": step, "source": source, "target": target, "rows": n,
                    "threshold": threshold, "reasons": reasons or [], "sample": sample or [],
                    "kept_in": f"{where} (step = '{step}')", "first_at": first_at, "run_id": run_id})
    out.sort(key=lambda d: (order.get(d["step"], len(order)), d["step"]))
    return out


def counts(conn, plan: Plan) -> dict[str, int]:
    """Quarantined rows per step name (steps with none are absent)."""
    return {d["step"]: d["rows"] for d in summary(conn, plan)}


def checksum(conn, plan: Plan, step_name: str) -> str:
    """`count:sum` of the quarantined rows of a step (their original row and reason), so a
    fingerprint that includes it changes when the quarantine does."""
    if not _exists(conn, plan):
        return "0:0"
    return conn.execute(sql.SQL("SELECT {c} FROM (SELECT {h} AS h FROM {q} AS q WHERE q.step = %s) AS x").format(
        c=CHECKSUM, h=row_hash_of(sql.SQL("(q.original::text || chr(31) || q.reason)")),
        q=tool_ident(plan, "quarantine")), (step_name,)).fetchone()[0]


def lines(items: list[dict]) -> list[str]:
    """One line per step of a summary(): what a person reads in a request, a log, a page."""
    out = []
    for d in items:
        reasons = "; ".join(f"{r['rows']} x {r['reason']}" for r in d["reasons"][:3])
        more = f"; and {len(d['reasons']) - 3} other reason(s)" if len(d["reasons"]) > 3 else ""
        out.append(f"{d['source']} -> {d['target']}: {d['rows']} row(s) quarantined, not migrated "
                   f"({reasons}{more}); kept in {d['kept_in']}")
    return out


__all__ = ["summary", "counts", "checksum", "lines", "table_name"]
