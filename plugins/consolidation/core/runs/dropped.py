"""Legacy schemas that an earlier 4D run already dropped, so a re-run resumes after them.

A schema counts as dropped when the ledger holds a successful 4D drop_schema (or
keep_schema, for a kept and emptied schema) for it after its last restore and the last
rollback, and none of its planned objects exists now. Those schemas' steps leave the plan
a re-run of 4D works with (`remaining`): their sources are gone, their rows are in the
targets and in the backup the drop recorded (which the re-run verifies again).
"""
from __future__ import annotations

from dataclasses import replace

from psycopg import sql

from consolidation.core import ledger
from consolidation.core.plan import Plan


def dropped_schemas(conn, plan: Plan) -> dict[str, dict]:
    """{schema: the ledger row of its drop (drop_schema / keep_schema)} for the legacy schemas
    a 4D run already dropped (and nothing restored since)."""
    if not ledger.tool_tables_exist(conn, plan):
        return {}
    t = ledger.tool_ident(plan, "ledger")
    rows = ledger.rows(conn, plan, sql.SQL("""
        phase = '4D' AND kind = 'ddl' AND status = 'success' AND details->>'kind' IN ('drop_schema', 'keep_schema')
        AND id > COALESCE((SELECT max(id) FROM {t} WHERE kind = 'rollback' AND status = 'success'), 0)
        AND id > COALESCE((SELECT max(r.id) FROM {t} r WHERE r.phase = 'rollback' AND r.kind = 'backup'
                            AND r.name = 'restore:' || ({t}.details->>'schema')), 0)""").format(t=t))
    out: dict[str, dict] = {}
    for row in rows:
        schema = row["details"].get("schema")
        if schema in plan.legacy_schemas:
            out.setdefault(schema, row)  # the first drop: a re-run only keeps an emptied schema again
    for schema in list(out):
        sources = [s.source for s in plan.steps_for_schema(schema)]
        if sources and conn.execute("SELECT bool_or(to_regclass(quote_ident(split_part(n, '.', 1)) || '.' || "
                                    "quote_ident(split_part(n, '.', 2))) IS NOT NULL) FROM unnest(%s::text[]) n",
                                    (sources,)).fetchone()[0]:
            del out[schema]  # something planned is back: not dropped
    return out


def remaining(plan: Plan, dropped) -> Plan:
    """The plan without the steps (and legacy schemas) in `dropped`; same name, file and sha256."""
    if not dropped:
        return plan
    return replace(plan, steps=[s for s in plan.steps if s.source_schema not in dropped],
                   legacy_schemas={k: v for k, v in plan.legacy_schemas.items() if k not in dropped})
