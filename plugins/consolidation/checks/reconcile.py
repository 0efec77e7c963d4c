"""Row-level reconciliation of each step, by hashing both sides (reladiff's idea).

Each side is projected into target terms: the key columns plus a 64-bit hash of the row's
compared columns, both sides cast to the target's types. Each side's checksum is one
order-free scan (count and sum of the hashes, core.catalog.CHECKSUM); when the sums differ
the rows are compared (EXCEPT ALL) only inside the key-hash segments whose sums differ
(checks.segments), so a missing row, an altered value or a duplicate all show up, with the
key of the row. Counts are taken from the data, never from what a step reported.
"""
from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from consolidation.actions import action_for
from consolidation.actions.base import column_list
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.checks.quarantine import checksum as quarantine_checksum
from consolidation.checks.segments import checksum_query, diff, segmented_except
from consolidation.core.catalog import table_checksum_query
from consolidation.core.spec import TargetSpec, source_ident


@dataclass
class Sides:
    source: sql.Composed  # SELECT <key...>, h
    target: sql.Composed
    key: list[str]


def sides(plan: Plan, step: Step, spec: TargetSpec, *, quarantined: bool = True) -> Sides:
    """Source and target projections of one step, comparable row by row (the step's action
    says what is compared: Action.projection)."""
    return Sides(*action_for(step).projection(plan, step, spec, quarantined=quarantined))


def missing_rows(s: Sides) -> sql.Composed:
    """Source rows with no identical row in the target (the evidence of loss)."""
    return sql.SQL("SELECT * FROM ({}) AS missing").format(segmented_except(s.source, s.target, s.key))


def extra_rows(s: Sides) -> sql.Composed:
    """Target rows (of this step) with no identical source row: duplicates, alterations."""
    return sql.SQL("SELECT * FROM ({}) AS extra").format(segmented_except(s.target, s.source, s.key))


def count_query(plan: Plan, step: Step, s: Sides) -> sql.Composed:
    """read, present, quarantined: present = source rows found identical in the target
    (the source side's rows minus those missing from the target)."""
    return sql.SQL(
        "SELECT (SELECT count(*) FROM {src}) AS read, "
        "(SELECT count(*) FROM ({s}) AS a) - (SELECT count(*) FROM ({missing}) AS m) AS present, "
        "(SELECT count(*) FROM {q} WHERE step = {name}) AS quarantined").format(
        src=source_ident(step), s=s.source, missing=missing_rows(s), q=tool_ident(plan, "quarantine"),
        name=sql.Literal(step.name))


def checksums(conn, plan: Plan, step: Step, spec: TargetSpec) -> dict:
    """Each side's checksum in one order-free scan; when they differ, the rows missing from
    the target are counted inside the differing segments only (checks.segments)."""
    quarantined = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE step = {}").format(
        tool_ident(plan, "quarantine"), sql.Literal(step.name))).fetchone()[0]
    s = sides(plan, step, spec, quarantined=quarantined > 0)
    src_sum, src_n = conn.execute(checksum_query(s.source)).fetchone()
    tgt_sum, tgt_n = conn.execute(checksum_query(s.target)).fetchone()
    # A source side holds one row per unquarantined source row (Action.projection), so with
    # nothing quarantined its count is the read count: no second scan of the source.
    read = src_n if quarantined == 0 else conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(source_ident(step))).fetchone()[0]
    present = src_n
    if (src_sum, src_n) != (tgt_sum, tgt_n):
        present -= conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS m").format(missing_rows(s))).fetchone()[0]
    return {"source_checksum": src_sum, "target_checksum": tgt_sum, "source_rows": src_n, "target_rows": tgt_n,
            "read": read, "present": present, "quarantined": quarantined}


def differences(conn, plan: Plan, step: Step, spec: TargetSpec, *, limit: int = 10,
                rows_per_segment: int | None = None):
    """The keys whose rows differ between a step's source and target (segments.Diff), by
    bisection over key-hash segments: only segments whose checksums differ are read again."""
    s = sides(plan, step, spec)
    return diff(conn, s.source, s.target, s.key, rows_per_segment=rows_per_segment, limit=limit)


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

    from consolidation.core.runs.dropped import dropped_schemas, remaining

    # a re-run of an interrupted 4D: the schemas an earlier run dropped (backed up and
    # verified then) have no sources left; the fingerprint covers the rest
    plan = remaining(plan, dropped_schemas(conn, plan))
    if specs is None:
        from consolidation.core.session import load_specs

        _, specs = load_specs(conn, plan)
    per_step = {}
    for step in plan.steps:
        if step.action == "delete":
            row = conn.execute(table_checksum_query(source_ident(step))).fetchone()
            per_step[step.name] = {"source_checksum": row[0], "read": row[1]}
        else:
            per_step[step.name] = checksums(conn, plan, step, specs[step.target])
            # the approval covers the quarantine too: which rows, not only how many
            per_step[step.name]["quarantine_checksum"] = quarantine_checksum(conn, plan, step.name)
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
