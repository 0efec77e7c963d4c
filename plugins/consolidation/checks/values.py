"""Column by column: every target column a step fills equals its source value, computed by the
plan's own mapping (expression, map, constant, default, cast), joined on the step's key.

The row hash of reconcile says THAT a row differs; this says WHERE: each offending row of the
query is (key, column, source value, target value), so a failing 4B gate names the table, the
column and a few keys. One query per step (the compared columns unpivoted with VALUES).
"""
from __future__ import annotations

from psycopg import sql

from consolidation.actions.base import key_match, not_quarantined, projected_source
from consolidation.core.plan import Plan, Step
from consolidation.core.spec import Flow, TargetSpec, source_ident


def value_diff(plan: Plan, step: Step, spec: TargetSpec, flows: list[Flow],
               restrict: sql.Composable | None = None, *, quarantined: bool = True) -> sql.Composed | None:
    """Rows (key columns..., column_name, source_value, target_value) where a target column of
    `flows` differs from its source value; None when the step has no key or nothing to compare.
    `restrict`: a condition on the source rows `r` (e.g. only the rows a merge inserted).
    `quarantined=False` (the step quarantined nothing): no quarantine filter, whose per-row
    subplan would keep PostgreSQL from scanning the source with parallel workers."""
    key = list(spec.key)
    compared = [f for f in flows if f.target not in key]
    if not key or not compared:
        return None
    rows = projected_source(step, spec, source_ident(step), not_quarantined(plan, step) if quarantined else None)
    pairs = sql.SQL(", ").join(
        sql.SQL("({}, CAST({} AS text), CAST(CAST({} AS {}) AS text))").format(
            sql.Literal(f.target), sql.Identifier("r", f.target), sql.Identifier("t", f.target), sql.SQL(f.type))
        for f in compared)
    return sql.SQL(
        "SELECT {keys}, v.column_name, v.source_value, v.target_value FROM ({rows}) AS r "
        "JOIN {t} AS t ON {match} CROSS JOIN LATERAL (VALUES {pairs}) AS v(column_name, source_value, target_value) "
        "WHERE v.source_value IS DISTINCT FROM v.target_value{restrict} ORDER BY {order}").format(
        keys=sql.SQL(", ").join(sql.Identifier("r", k) for k in key), rows=rows, t=spec.ident,
        match=key_match(spec, "t", "r"), pairs=pairs,
        restrict=sql.SQL(" AND ({})").format(restrict) if restrict is not None else sql.SQL(""),
        order=sql.SQL(", ").join([sql.SQL("v.column_name")] + [sql.Identifier("r", k) for k in key]))
