"""The interface every step action implements, and the SQL pieces they share."""
from __future__ import annotations

from psycopg import sql

from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.core.spec import Flow, TargetSpec, source_ident


class Action:
    name = "?"
    moves_rows = True

    # -- validate ---------------------------------------------------------
    def validate(self, step: Step, spec: TargetSpec | None) -> list[str]:
        """Problems that make the step impossible against the virtual schema."""
        return []

    # -- sql ----------------------------------------------------------------
    def pre_statements(self, plan: Plan, step: Step, spec: TargetSpec) -> list[sql.Composable]:
        """Statements run once before the rows move (same transaction)."""
        return []

    def statement(self, plan: Plan, step: Step, spec: TargetSpec, source: sql.Composable,
                  run_id: str) -> sql.Composable:
        """One statement moving the rows of `source` (the source relation, aliased s).

        It returns one row: (inserted, merged). The same statement serves the
        set-based path (source = the legacy table) and the per-row path
        (source = jsonb_populate_record(NULL::legacy, $1)).
        """
        raise NotImplementedError

    # -- verify ---------------------------------------------------------------
    def compared_columns(self, step: Step, spec: TargetSpec) -> list[Flow]:
        """The target columns whose values must equal the source's."""
        return spec.flows[step.name]

    def target_filter(self, step: Step, spec: TargetSpec, source_rows: sql.Composable) -> sql.Composable:
        """WHERE clause restricting the target to the rows this step is responsible for."""
        if spec.exists_before_plan or len(spec.steps) > 1:
            return key_in(spec, source_rows)
        return sql.SQL("TRUE")

    # -- undo -----------------------------------------------------------------
    def undo_note(self, step: Step, spec: TargetSpec) -> str:
        return ""


# ---------------------------------------------------------------------------
def projected_source(step: Step, spec: TargetSpec, source: sql.Composable,
                     where: sql.Composable | None = None) -> sql.Composed:
    """SELECT of the source rows in target terms: one column per flow, named as in the target."""
    flows = spec.flows[step.name]
    pk = spec.source_pks.get(step.name) or []
    cols = sql.SQL(", ").join(
        sql.SQL("{} AS {}").format(f.expr(step, "s", pk), sql.Identifier(f.target)) for f in flows)
    q = sql.SQL("SELECT {} FROM {} AS s").format(cols, source)
    if where is not None:
        q = sql.SQL("{} WHERE {}").format(q, where)
    return q


def not_quarantined(plan: Plan, step: Step) -> sql.Composed:
    """Source rows that are not in quarantine for this step (alias s).

    The first test is an uncorrelated InitPlan: when the step quarantined nothing, the OR
    short-circuits and no row pays for to_jsonb().
    """
    return sql.SQL("(NOT EXISTS (SELECT 1 FROM {q} AS q0 WHERE q0.step = {name}) OR "
                   "NOT EXISTS (SELECT 1 FROM {q} AS q WHERE q.step = {name} AND q.original = to_jsonb(s)))").format(
        q=tool_ident(plan, "quarantine"), name=sql.Literal(step.name))


def key_match(spec: TargetSpec, left: str, right: str) -> sql.Composed:
    if not spec.key:
        raise ValueError(f"{spec.qualified} has no key")
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in spec.key)


def key_in(spec: TargetSpec, source_rows: sql.Composable) -> sql.Composed:
    return sql.SQL("EXISTS (SELECT 1 FROM ({}) AS x WHERE {})").format(source_rows, key_match(spec, "x", "t"))


def column_list(names) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def key_json(spec: TargetSpec, alias: str) -> sql.Composed:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k)) for k in spec.key))


def undo_inserts(plan: Plan, step: Step, spec: TargetSpec, run_id: str, cte: str) -> sql.Composed:
    """CTE recording the keys of rows inserted into a table that existed before the plan."""
    return sql.SQL("INSERT INTO {u} (run_id, step, target, op, key) SELECT {run}, {step}, {tgt}, 'insert', {k} FROM {cte} AS i "
                   "ON CONFLICT (step, op, key) DO NOTHING").format(
        u=tool_ident(plan, "undo"), run=sql.Literal(run_id), step=sql.Literal(step.name),
        tgt=sql.Literal(spec.qualified), k=key_json(spec, "i"), cte=sql.Identifier(cte))


__all__ = ["Action", "projected_source", "not_quarantined", "key_match", "key_in", "column_list",
           "key_json", "undo_inserts", "source_ident"]
