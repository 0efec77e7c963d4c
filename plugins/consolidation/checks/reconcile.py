"""Row-level reconciliation of each step, by hashing both sides (reladiff's idea).

Each side is projected into target terms: the key columns plus an md5 of the row's
compared columns, both sides cast to the target's types. Multisets are compared with
EXCEPT ALL, so a missing row, an altered value or a duplicate all show up, with the
key of the row. Counts are taken from the data, never from what a step reported.
"""
from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from consolidation.actions import action_for
from consolidation.actions.base import column_list, not_quarantined, projected_source
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.core.spec import TargetSpec, source_ident


@dataclass
class Sides:
    source: sql.Composed  # SELECT <key...>, h
    target: sql.Composed
    key: list[str]


def _hash(cols: list[str], alias: str, types: dict[str, str]) -> sql.Composed:
    return sql.SQL("md5(ROW({})::text)").format(sql.SQL(", ").join(
        sql.SQL("CAST({} AS {})").format(sql.Identifier(alias, c), sql.SQL(types[c])) for c in cols))


def sides(plan: Plan, step: Step, spec: TargetSpec) -> Sides:
    """Source and target projections of one step, comparable row by row."""
    if step.is_recreated_view:
        src = sql.SQL("SELECT md5(ROW(s.*)::text) AS h FROM {} AS s").format(source_ident(step))
        tgt = sql.SQL("SELECT md5(ROW(t.*)::text) AS h FROM {} AS t").format(spec.ident)
        return Sides(src, tgt, [])
    action = action_for(step)
    flows = action.compared_columns(step, spec)
    types = {f.target: f.type for f in spec.flows[step.name]}
    cmp_cols = [f.target for f in flows]
    key = list(spec.key)
    rows = projected_source(step, spec, source_ident(step), not_quarantined(plan, step))
    key_sel = sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier("r", k)) for k in key)
    src = sql.SQL("SELECT {}{} AS h FROM ({}) AS r").format(key_sel, _hash(cmp_cols, "r", types), rows)
    tkey_sel = sql.SQL("").join(sql.SQL("{}, ").format(sql.Identifier("t", k)) for k in key)
    tgt = sql.SQL("SELECT {}{} AS h FROM {} AS t WHERE {}").format(
        tkey_sel, _hash(cmp_cols, "t", types), spec.ident, action.target_filter(step, spec, rows))
    return Sides(src, tgt, key)


def missing_rows(s: Sides) -> sql.Composed:
    """Source rows with no identical row in the target (the evidence of loss)."""
    return sql.SQL("SELECT * FROM (({}) EXCEPT ALL ({})) AS missing").format(s.source, s.target)


def extra_rows(s: Sides) -> sql.Composed:
    """Target rows (of this step) with no identical source row: duplicates, alterations."""
    return sql.SQL("SELECT * FROM (({}) EXCEPT ALL ({})) AS extra").format(s.target, s.source)


def count_query(plan: Plan, step: Step, s: Sides) -> sql.Composed:
    """read, present, quarantined: present = source rows found identical in the target."""
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {src}) AS read, "
        "(SELECT count(*) FROM (({s}) INTERSECT ALL ({t})) AS p) AS present, "
        "(SELECT count(*) FROM {q} WHERE step = {name}) AS quarantined").format(
        src=source_ident(step), s=s.source, t=s.target, q=tool_ident(plan, "quarantine"), name=sql.Literal(step.name))


def checksum_query(side: sql.Composable) -> sql.Composed:
    """One md5 over the sorted row hashes: equal sides give equal checksums."""
    return sql.SQL("SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')), count(*) FROM ({}) AS x").format(side)


def checksums(conn, plan: Plan, step: Step, spec: TargetSpec) -> dict:
    """Both sides hashed once (materialized), then checksums and counts from them."""
    s = sides(plan, step, spec)
    q = sql.SQL(
        "WITH src AS MATERIALIZED ({s}), tgt AS MATERIALIZED ({t}) SELECT "
        "(SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM src), (SELECT count(*) FROM src), "
        "(SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM tgt), (SELECT count(*) FROM tgt), "
        "(SELECT count(*) FROM {source}), "
        "(SELECT count(*) FROM (SELECT * FROM src INTERSECT ALL SELECT * FROM tgt) AS p), "
        "(SELECT count(*) FROM {quarantine} WHERE step = {name})").format(
        s=s.source, t=s.target, source=source_ident(step), quarantine=tool_ident(plan, "quarantine"),
        name=sql.Literal(step.name))
    src_sum, src_n, tgt_sum, tgt_n, read, present, quarantined = conn.execute(q).fetchone()
    return {"source_checksum": src_sum, "target_checksum": tgt_sum, "source_rows": src_n, "target_rows": tgt_n,
            "read": read, "present": present, "quarantined": quarantined}


def key_list(spec: TargetSpec) -> sql.Composed:
    return column_list(spec.key)


def digest(conn, plan: Plan, specs: dict[str, TargetSpec] | None = None) -> dict:
    """Fingerprint of the data the cleanup would act on, recomputed from the data.

    Per migrating step: source and target checksums and counts (as the 4B gate proves
    them); per delete step: the legacy table's checksum. Any row written to, changed in
    or removed from a legacy table or a target after this was taken changes the digest.
    """
    import hashlib
    import json

    if specs is None:
        from consolidation.core.session import load_specs

        _, specs = load_specs(conn, plan)
    per_step = {}
    for step in plan.steps:
        if step.action == "delete":
            row = conn.execute(sql.SQL(
                "SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')), count(*) "
                "FROM (SELECT md5(ROW(s.*)::text) AS h FROM {} AS s) x").format(source_ident(step))).fetchone()
            per_step[step.name] = {"source_checksum": row[0], "read": row[1]}
        else:
            per_step[step.name] = checksums(conn, plan, step, specs[step.target])
    blob = json.dumps({"plan": plan.sha256, "steps": per_step}, sort_keys=True, default=str)
    return {"digest": hashlib.sha256(blob.encode()).hexdigest(), "plan_sha256": plan.sha256, "steps": per_step}


def multiset_diff(left: sql.Composable, right: sql.Composable, left_name: str, right_name: str) -> sql.Composed:
    """Rows (as text) in one side and not the other, counting duplicates; each side is a
    `SELECT <row> AS r ...`. Compared by md5 of the row text, shown truncated."""
    def side(q):
        return sql.SQL("SELECT md5(x.r::text) AS h, left(x.r::text, 300) AS row_text FROM ({}) AS x").format(q)

    # each side is computed once (MATERIALIZED), then compared both ways
    return sql.SQL(
        "WITH a AS MATERIALIZED ({l}), b AS MATERIALIZED ({r}) "
        "SELECT {ln} AS only_in, d.row_text FROM (SELECT h, row_text FROM a EXCEPT ALL SELECT h, row_text FROM b) AS d "
        "UNION ALL SELECT {rn}, d.row_text FROM (SELECT h, row_text FROM b EXCEPT ALL SELECT h, row_text FROM a) AS d").format(
        l=side(left), r=side(right), ln=sql.Literal(f"only in {left_name}"), rn=sql.Literal(f"only in {right_name}"))
