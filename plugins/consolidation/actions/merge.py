"""merge: enrich an existing table by business key; insert what does not match.

Matching rows get only the plan's `enrich` columns; every other mapped column is
compared, and a difference is recorded as a conflict (the target keeps its value).
Enrich columns that overwrite an existing, different value are recorded too, with
their before-image in the undo log, so rollback can restore them.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.ledger import tool_ident
from consolidation.core.plan import PlanError
from consolidation.core.spec import Flow, resolve_type, source_relation
from consolidation.actions.base import (TARGET_KEYS, Action, ActionError, column_list, key_in, key_json, key_match,
                                        mapped_flow, projected_source, undo_inserts)


class MergeAction(Action):
    name = "merge"
    described_as = "merge steps"
    plan_keys = TARGET_KEYS | {"key", "enrich"}
    required_keys = ("target", "key")
    shared_target_rule = "all `merge` on a business key"

    # -- plan ---------------------------------------------------------------------
    def missing_key(self, step, label, key):
        if key == "key":
            return f"{label}: a merge needs `key`: the business key as {{target_column: source_column}}"
        return super().missing_key(step, label, key)

    def parse(self, step, entry, label):
        key = entry.get("key")
        if not isinstance(key, dict) or not key:
            raise PlanError(self.missing_key(step, label, "key"))
        step.key = {str(k): str(v) for k, v in key.items()}
        enrich = entry.get("enrich") or []
        if not isinstance(enrich, list):
            raise PlanError(f"{label}: `enrich` must list target columns the merge may set")
        for col in enrich:
            if col not in step.columns:
                raise PlanError(
                    f"{label}: enrich column {col!r} is not mapped; add it under `columns` "
                    "(target_column: source_column)")
        step.enrich = list(enrich)

    # -- target -------------------------------------------------------------------
    # A merge only inserts source rows that match no target row; such a row missing a
    # required column is quarantined with its reason, so it need not fill them all.
    requires_every_column = False

    def flows(self, conn, catalog, step, existing=None):
        """The business key, then the mapped columns, typed as the target has them (or as added)."""
        rel = source_relation(catalog, step)
        flows: list[Flow] = []
        for tcol, scol in step.key.items():
            src = rel.columns.get(scol)
            typ = existing.columns[tcol].type if existing is not None and tcol in existing.columns else (
                src.type if src else "text")
            flows.append(Flow(tcol, typ, scol))
        carried = set(step.key.values())  # the first plain mapping of a source column carries its identity
        for m in step.columns.values():
            if m.source is not None and m.source not in rel.columns:
                raise PlanError(f"{step.label}: columns.{m.target} maps from {m.source!r}, which {step.source} does "
                                f"not have (it has {', '.join(rel.columns)}); fix the column name")
            carries = m.plain and m.source not in carried
            if carries:
                carried.add(m.source)
            typ = resolve_type(conn, step.add_columns[m.target].type, step.label) if m.target in step.add_columns else None
            flows.append(mapped_flow(conn, step, m, existing, rel.columns[m.source].type if m.source else None,
                                     carries_source=carries, typ=typ))
        return flows

    def target_key(self, spec, existing):
        return list(spec.steps[0].key)

    def new_target(self, conn, plan, catalog, spec):
        first = spec.steps[0]
        raise PlanError(f"{first.label}: merge target {first.target} does not exist; a merge enriches an "
                        "existing table: create it first or use action copy")

    def fk_columns(self, step, spec, columns):
        rename = {f.source: f.target for f in spec.flows.get(step.name, []) if f.source}
        rename.update({s: t for t, s in step.key.items()})
        return [rename.get(c) for c in columns]

    def fk_problem(self, step, spec, columns):
        if len(columns) == 1 and columns[0] in step.add_columns and step.add_columns[columns[0]].unique:
            return None
        if columns == spec.primary_key or columns in spec.uniques:
            return None
        return f"{step.target}({', '.join(columns)}) is not unique; declare it `unique: true` under add_columns"

    def checks_flow_type(self, step, column):
        return column not in step.add_columns  # typed by add_columns, compared with it by 4A

    # -- moves ----------------------------------------------------------------------
    def validate(self, step, spec):
        if spec is None or not spec.exists_before_plan:
            return [f"{step.label}: merge target {step.target} must exist before the plan runs"]
        return []

    def upstream(self, plan, step):
        same = plan.steps_into(step.target)
        return same[: same.index(step)]  # earlier merges into the same target first

    def statement(self, plan, step, spec, source, run_id):
        flows = spec.flows[step.name]
        enrich = [f for f in flows if f.target in step.enrich]
        compare = [f for f in flows if f.target not in step.enrich and f.target not in step.key]
        added = set(step.add_columns)
        rows = projected_source(step, spec, source)
        lit = sql.Literal
        conflict_values = [
            sql.SQL("({c}, t.{i}::text, r.{i}::text, {res})").format(
                c=lit(f.target), i=sql.Identifier(f.target),
                res=lit("source applied" if f in enrich else "target kept"))
            for f in enrich + compare if f.target not in added]
        ctes = [sql.SQL("r AS ({})").format(rows)]
        if conflict_values:
            ctes.append(sql.SQL(
                "c AS (INSERT INTO {conf} (step, source, target, key, column_name, target_value, source_value, "
                "resolution, run_id) SELECT {step}, {src}, {tgt}, {k}, v.col, v.tv, v.sv, v.res, {run} "
                "FROM r JOIN {t} AS t ON {match} CROSS JOIN LATERAL (VALUES {vals}) AS v(col, tv, sv, res) "
                "WHERE v.tv IS NOT NULL AND v.tv IS DISTINCT FROM v.sv "
                "ON CONFLICT (step, key, column_name) DO NOTHING)").format(
                conf=tool_ident(plan, "conflicts"), step=lit(step.name), src=lit(step.source),
                tgt=lit(spec.qualified), k=key_json(spec, "t"), run=lit(run_id), t=spec.ident,
                match=key_match(spec, "t", "r"), vals=sql.SQL(", ").join(conflict_values)))
        overwritten = [f for f in enrich if f.target not in added]
        if overwritten:
            before = sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
                sql.SQL("{}, t.{}").format(lit(f.target), sql.Identifier(f.target)) for f in overwritten))
            ctes.append(sql.SQL(
                "b AS (INSERT INTO {u} (run_id, step, target, op, key, before) SELECT {run}, {step}, {tgt}, 'update', "
                "{k}, {before} FROM r JOIN {t} AS t ON {match} ON CONFLICT (step, op, key) DO NOTHING)").format(
                u=tool_ident(plan, "undo"), run=lit(run_id), step=lit(step.name), tgt=lit(spec.qualified),
                k=key_json(spec, "t"), before=before, t=spec.ident, match=key_match(spec, "t", "r")))
        if enrich:
            ctes.append(sql.SQL(
                "upd AS (UPDATE {t} AS t SET {sets} FROM r WHERE {match} AND ({tcols}) IS DISTINCT FROM ({rcols}) "
                "RETURNING 1)").format(
                t=spec.ident,
                sets=sql.SQL(", ").join(sql.SQL("{} = r.{}").format(sql.Identifier(f.target), sql.Identifier(f.target))
                                        for f in enrich),
                match=key_match(spec, "t", "r"),
                tcols=sql.SQL(", ").join(sql.Identifier("t", f.target) for f in enrich) + sql.SQL(", NULL"),
                rcols=sql.SQL(", ").join(sql.Identifier("r", f.target) for f in enrich) + sql.SQL(", NULL")))
        cols = column_list(f.target for f in flows)
        ctes.append(sql.SQL(
            "ins AS (INSERT INTO {t} ({cols}) SELECT {cols} FROM r WHERE NOT EXISTS "
            "(SELECT 1 FROM {t} AS t WHERE {match}) RETURNING {keys})").format(
            t=spec.ident, cols=cols, match=key_match(spec, "t", "r"), keys=column_list(spec.key)))
        ctes.append(sql.SQL("u AS ({})").format(undo_inserts(plan, step, spec, run_id, "ins")))
        matched = sql.SQL("(SELECT count(*) FROM r WHERE EXISTS (SELECT 1 FROM {t} AS t WHERE {match}))").format(
            t=spec.ident, match=key_match(spec, "t", "r"))
        return sql.SQL("WITH {} SELECT (SELECT count(*) FROM ins), {}").format(sql.SQL(", ").join(ctes), matched)

    # -- proves ---------------------------------------------------------------------
    compared_description = "key and enriched columns"

    def compared_columns(self, step, spec):
        keep = set(step.key) | set(step.enrich)
        return [f for f in spec.flows[step.name] if f.target in keep]

    def target_filter(self, step, spec, source_rows):
        return key_in(spec, source_rows)

    def value_checks(self, plan, step, spec):
        # matched rows: key and enriched columns; rows the merge inserted (undo log): every mapped column
        inserted = sql.SQL("EXISTS (SELECT 1 FROM {u} AS u WHERE u.step = {n} AND u.op = 'insert' AND u.key = {k})").format(
            u=tool_ident(plan, "undo"), n=sql.Literal(step.name), k=key_json(spec, "r"))
        return super().value_checks(plan, step, spec) + [
            ("inserted_rows_equal", " (rows it inserted)", spec.flows[step.name], inserted)]

    def owns_target_rows(self, step, spec):
        return False  # the target held rows of its own before

    def gate_checks(self, plan, step, spec, source_side):
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.key)
        return super().gate_checks(plan, step, spec, source_side) + [(
            "source_keys_present", f"{spec.qualified} holds every business key of {step.source}",
            sql.SQL("SELECT {k} FROM ({src}) AS x EXCEPT SELECT {k} FROM {t}").format(
                k=keys, src=source_side, t=spec.ident))]

    # -- registers, inventory ---------------------------------------------------------
    def registry_filter(self, conn, step, spec, source):
        return (merge_filter(conn, step, source), "is not null", None)

    def inventory_notes(self, step, target):
        if target is None:
            return []
        return [("merge_target", f"{step.label} merges into existing {step.target} ({target.rows:,} rows)")]

    def undo_note(self, step, spec):
        return (f"restore overwritten columns of {spec.qualified} from the undo log, delete inserted rows, "
                f"drop added columns {', '.join(step.add_columns) or '-'}")


def merge_filter(conn, step, source) -> str:
    """The enriched column that tells which target rows came from this merge source.

    A column the plan added for this step and fills from the source's primary key is best
    (never NULL); then other added columns; then any enriched column. The first one with
    no NULL in the source's data is used; the gate then proves the choice row by row.
    """
    pk = set(source.primary_key)

    def rank(target_col: str) -> tuple:
        m = step.columns[target_col]
        src = source.columns.get(m.source or "")
        return (target_col not in step.add_columns, not (m.source in pk), not (src and src.not_null),
                step.enrich.index(target_col))

    for target_col in sorted(step.enrich, key=rank):
        m = step.columns[target_col]
        if m.source is None:
            continue
        has_null = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {}.{} AS s WHERE {} IS NULL)").format(
            sql.Identifier(step.source_schema), sql.Identifier(step.source_table),
            sql.Identifier("s", m.source))).fetchone()[0]
        if not has_null:
            return target_col
    raise ActionError(
        f"{step.label}: cannot tell which rows of {step.target} came from {step.source}: every enriched column "
        f"({', '.join(step.enrich)}) is NULL in some source row; enrich a column that is never NULL "
        "(e.g. the source's key under add_columns)")
