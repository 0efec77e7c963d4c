"""The nightly validation's row comparison: the migrated rows are still what the legacy rows
say they must be, quarantined rows accounted for exactly as the 4C gate does.

Per migrating step whose target (a table) is in the schema being validated:

  migrated_rows_intact   While the legacy table exists: every legacy row, minus the rows
                         quarantined for the step (actions.base.not_quarantined: matched on
                         the original row, as 4B and the 4C gate do), is in the target with the
                         values the plan's mapping gives it: the step's own proof sides
                         (Action.projection: key + a 64-bit hash of the compared columns, cast to
                         the target's types), source EXCEPT ALL target; offending rows are named
                         by their key. Each such night also records what the legacy says, the
                         BASELINE: per step the key columns and the compared columns with their
                         types (tool table <prefix>validation_baseline) and per row its key and
                         hash (<prefix>validation_rows), written set-based from the source side.
                         After 4D (the legacy table gone) the target is compared with that
                         baseline: a baseline row whose key is gone from the target, or whose
                         hash differs, fails, named by its key. Rows the application added later
                         are not in the baseline and are not compared. A step with neither legacy
                         table nor baseline (no validation ran between 4B and 4D) is listed as
                         "rows not compared", never passed silently.
  quarantine_accounted   Per step that quarantined rows: the quarantine is listed (the check's
                         description: rows, reasons, where they are kept); while the legacy table
                         exists each quarantined row must still be in it (as the 4C gate checks);
                         after 4D the quarantine must hold as many rows for the step as the
                         baseline recorded (the rows are kept in the quarantine table and the
                         backup; none may vanish).

Hashes are text-based, so both the baseline and the checks are computed with the output settings
pinned (phases.backup._PINNED; the nightly's checkpoint connects with them too).
"""
from __future__ import annotations

import json
import logging

from psycopg import sql

from consolidation.actions import action_for
from consolidation.actions.base import row_hash
from consolidation.checks import quarantine
from consolidation.checks.gx import Check
from consolidation.core.catalog import qualified_ident, relation_exists
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.phases.backup import _PINNED as PINNED

log = logging.getLogger(__name__)

BASELINE = "validation_baseline"
ROWS = "validation_rows"
CHECK = "migrated_rows_intact"
QUARANTINE_CHECK = "quarantine_accounted"


def ensure_tables(conn, plan: Plan) -> None:
    """The baseline tables (idempotent, additive)."""
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {b} (
            step         text PRIMARY KEY,
            target       text NOT NULL,
            key_columns  text[] NOT NULL,
            compared     jsonb NOT NULL,
            rows         bigint NOT NULL,
            quarantined  bigint NOT NULL,
            run_id       text NOT NULL,
            recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        )""").format(b=tool_ident(plan, BASELINE)))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {r} (
            step  text NOT NULL,
            key   jsonb NOT NULL,
            h     bigint NOT NULL,
            PRIMARY KEY (step, key)
        )""").format(r=tool_ident(plan, ROWS)))


def _pin(conn) -> None:
    for name, value in PINNED.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def _specs(conn, plan: Plan):
    """The plan's target specs, or None when they cannot be derived (after 4D: no legacy sources)."""
    from consolidation.core.session import load_specs

    try:
        with conn.transaction():
            return load_specs(conn, plan)[1]
    except Exception as exc:  # only the baseline can be compared then
        log.info("target specs not available (%s): migrated rows are compared with their baseline", exc)
        return None


def _is_table(conn, qualified: str) -> bool:
    return conn.execute("SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(%s) AND relkind IN ('r', 'p'))",
                        (qualified_ident(qualified).as_string(conn),)).fetchone()[0]


def _key_json(alias: str, key: list[str]) -> sql.Composed:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in key))


def checks(conn, plan: Plan, schema: str, *, run_id: str) -> tuple[list[Check], list[str]]:
    """(checks, lines of steps whose rows cannot be compared) for the targets in `schema`, one
    check of each kind per target (its steps' parts in UNION ALL); records the baseline of every
    step whose legacy table is still there."""
    steps = [s for s in plan.migrating_steps() if s.migrates_rows and s.target_schema == schema]
    steps = [s for s in steps if _is_table(conn, s.target)]
    if not steps:
        return [], []
    ensure_tables(conn, plan)
    specs = _specs(conn, plan) if any(relation_exists(conn, s.source_schema, s.source_table) for s in steps) else None
    held = quarantine.counts(conn, plan)
    rows: dict[str, list[tuple[Step, list[str], str, sql.Composable]]] = {}
    quarantined: dict[str, list[tuple[Step, str, sql.Composable]]] = {}
    not_compared: list[str] = []
    for step in steps:
        legacy = relation_exists(conn, step.source_schema, step.source_table)
        if legacy and specs is not None and step.target in specs:
            part = _against_legacy(conn, plan, step, specs[step.target], held.get(step.name, 0), run_id)
            why = "no key identifies its rows in the target (a keyless source: refreshed whole by 4B)"
        else:
            part = _against_baseline(conn, plan, step)
            why = ("the legacy table is gone and no validation recorded its rows before; run the nightly "
                   "validation between 4B and 4D" if not legacy else "the plan's targets cannot be derived now")
        if part is None:
            not_compared.append(f"{step.source} -> {step.target}: rows not compared ({why})")
        else:
            rows.setdefault(step.target, []).append((step, *part))
        q = _quarantine_part(conn, plan, step, legacy, held.get(step.name, 0))
        if q is not None:
            quarantined.setdefault(step.target, []).append((step, *q))
    out = [Check(name=CHECK, table=target, kind="rows", step=parts[0][0].name if len(parts) == 1 else None,
                 column=",".join(parts[0][1]), description="; ".join(p[2] for p in parts),
                 query=_union(conn, [(p[0], p[3]) for p in parts])) for target, parts in rows.items()]
    out += [Check(name=QUARANTINE_CHECK, table=target, kind="rows", step=parts[0][0].name if len(parts) == 1 else None,
                  description="; ".join(p[1] for p in parts), query=_union(conn, [(p[0], p[2]) for p in parts]))
            for target, parts in quarantined.items()]
    return out, not_compared


def record_baselines(conn, plan: Plan, *, run_id: str) -> int:
    """The baseline of every step whose legacy table is still there, recorded now (4D calls it
    after its backup, before the first drop, so the nights after 4D compare every migrated row
    even when no validation ran between 4B and 4D); the same code path as a night's. Committed;
    returns the number of steps recorded by `run_id`."""
    for schema in plan.consolidated_schemas:
        checks(conn, plan, schema, run_id=run_id)  # records the baselines; the checks are not run here
    n = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE run_id = %s").format(tool_ident(plan, BASELINE)),
                     (run_id,)).fetchone()[0] if relation_exists(conn, *plan.tool_table(BASELINE)) else 0
    conn.commit()
    return n


def _union(conn, parts: list[tuple[Step, sql.Composable]]) -> str:
    """The parts' rows, each tagged with its step (their columns: row_key / problem text)."""
    return sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {}::text AS step, p.* FROM ({}) AS p").format(
        sql.Literal(step.name), q) for step, q in parts).as_string(conn)


def _excused(plan: Plan, step: Step) -> sql.Composed:
    """The ledger says why rows of the target may be gone: an accepted drop (`validate
    --accept-drop`) or a rollback. Missing rows are then not reported here (rows_not_dropped
    still guards the count); changed rows always are."""
    q = sql.Literal(step.target)
    return sql.SQL("EXISTS (SELECT 1 FROM {lg} AS l WHERE l.status = 'success' AND ((l.kind = 'rollback' AND "
                   "(l.target IS NULL OR l.target = {q})) OR l.details->>'allow_count_drop' = {q}))").format(
        lg=tool_ident(plan, "ledger"), q=q)


def _against_legacy(conn, plan: Plan, step: Step, spec, quarantined: int, run_id: str):
    """(key, description, query) comparing the legacy rows with the target; records the baseline."""
    action = action_for(step)
    src, tgt, key = action.projection(plan, step, spec, quarantined=quarantined > 0)
    if not key:
        return None
    types = {f.target: f.type for f in spec.flows[step.name]}
    compared = [[f.target, types[f.target]] for f in action.compared_columns(step, spec)]
    b, r = tool_ident(plan, BASELINE), tool_ident(plan, ROWS)
    with conn.transaction():  # what the legacy says now: the baseline for the nights after 4D
        _pin(conn)
        conn.execute(sql.SQL("DELETE FROM {} WHERE step = %s").format(r), (step.name,))
        n = conn.execute(sql.SQL("INSERT INTO {r} (step, key, h) SELECT {n}, {k}, x.h FROM ({src}) AS x "
                                 "ON CONFLICT (step, key) DO NOTHING").format(
            r=r, n=sql.Literal(step.name), k=_key_json("x", key), src=src)).rowcount
        conn.execute(sql.SQL(
            "INSERT INTO {b} (step, target, key_columns, compared, rows, quarantined, run_id) "
            "VALUES (%s, %s, %s, %s::jsonb, %s, %s, %s) ON CONFLICT (step) DO UPDATE SET target = excluded.target, "
            "key_columns = excluded.key_columns, compared = excluded.compared, rows = excluded.rows, "
            "quarantined = excluded.quarantined, run_id = excluded.run_id, recorded_at = clock_timestamp()").format(b=b),
            (step.name, step.target, key, json.dumps(compared), n, quarantined, run_id))
    kept = f" minus its {quarantined} quarantined row(s) (kept in {quarantine.table_name(plan)}, step = " \
           f"'{step.name}')" if quarantined else ""
    present = sql.SQL("EXISTS (SELECT 1 FROM ({tgt}) AS t WHERE {m})").format(tgt=tgt, m=sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("t", k), sql.Identifier("x", k)) for k in key))
    query = sql.SQL(
        "SELECT d.row_key, d.problem FROM (SELECT {k}::text AS row_key, CASE WHEN {present} THEN "
        "'different in the target' ELSE 'missing from the target' END AS problem "
        "FROM (({src}) EXCEPT ALL ({tgt})) AS x) AS d WHERE d.problem <> 'missing from the target' OR NOT {excused}"
    ).format(k=_key_json("x", key), present=present, src=src, tgt=tgt, excused=_excused(plan, step))
    return key, (f"every row of {step.source}{kept} is in {step.target} with the values the plan gives it "
                 f"(by {', '.join(key)}; compared: {', '.join(c for c, _ in compared)})"), query


def _baseline(conn, plan: Plan, step: Step) -> dict | None:
    row = conn.execute(sql.SQL("SELECT key_columns, compared, rows, quarantined, run_id, recorded_at FROM {} "
                               "WHERE step = %s").format(tool_ident(plan, BASELINE)), (step.name,)).fetchone()
    if row is None:
        return None
    return dict(zip(("key", "compared", "rows", "quarantined", "run_id", "recorded_at"), row))


def _against_baseline(conn, plan: Plan, step: Step):
    """(key, description, query) comparing the target with the step's baseline, or None without one."""
    base = _baseline(conn, plan, step)
    if base is None:
        return None
    key, compared = list(base["key"]), base["compared"]
    types = {c: t for c, t in compared}
    target = sql.SQL("SELECT {k} AS k, {h} AS h FROM {t} AS t").format(
        k=_key_json("t", key), h=row_hash([c for c, _ in compared], "t", types), t=qualified_ident(step.target))
    kept = f", minus its {base['quarantined']} quarantined row(s)" if base["quarantined"] else ""
    query = sql.SQL("SELECT b.key::text AS row_key, CASE WHEN t.k IS NULL THEN 'missing from the target' "
                    "ELSE 'changed since it was migrated' END AS problem FROM {r} AS b "
                    "LEFT JOIN ({target}) AS t ON t.k = b.key "
                    "WHERE b.step = {n} AND (t.k IS NULL OR t.h IS DISTINCT FROM b.h) "
                    "AND (t.k IS NOT NULL OR NOT {excused})").format(
        r=tool_ident(plan, ROWS), target=target, n=sql.Literal(step.name), excused=_excused(plan, step))
    return key, (f"the {base['rows']} row(s) {step.source} migrated into {step.target} (as the legacy table held "
                 f"them{kept}, recorded by validation {base['run_id']} at {base['recorded_at']:%Y-%m-%d %H:%M:%S %Z}) "
                 f"are still there, unchanged (by {', '.join(key)}; compared: {', '.join(types)})"), query


def _quarantine_part(conn, plan: Plan, step: Step, legacy: bool, quarantined: int):
    """(description, query) listing the step's quarantine and accounting for it (None: nothing quarantined)."""
    if not quarantined:
        return None
    [d] = [d for d in quarantine.summary(conn, plan) if d["step"] == step.name]
    q = tool_ident(plan, "quarantine")
    if legacy:
        query = sql.SQL("SELECT q.id::text AS row_key, left(q.original::text, 300) || ': ' || q.reason AS problem "
                        "FROM {q} AS q WHERE q.step = {n} AND NOT EXISTS (SELECT 1 FROM {src} AS s "
                        "WHERE to_jsonb(s) = q.original)").format(
            q=q, n=sql.Literal(step.name), src=sql.Identifier(step.source_schema, step.source_table))
        where = "each such row is still in the legacy table"
    else:
        base = _baseline(conn, plan, step)
        if base is None:
            return None
        query = sql.SQL("SELECT NULL::text AS row_key, count(*) || ' quarantined row(s), ' || {b} || ' recorded' AS problem "
                        "FROM {q} WHERE step = {n} HAVING count(*) <> {b}").format(
            q=q, n=sql.Literal(step.name), b=sql.Literal(base["quarantined"]))
        where = f"the quarantine still holds the {base['quarantined']} row(s) recorded with the baseline"
    return f"{quarantine.lines([d])[0]}; {where}", query


__all__ = ["checks", "ensure_tables", "CHECK", "QUARANTINE_CHECK", "BASELINE", "ROWS"]
