"""merge: enrich an existing table by business key; insert what does not match.

Matching rows get only the plan's `enrich` columns; every other mapped column is
compared, and a difference is recorded as a conflict (the target keeps its value).
Enrich columns that overwrite an existing, different value are recorded too, with
their before-image in the undo log, so rollback can restore them.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.ledger import tool_ident
from consolidation.actions.base import Action, column_list, key_json, key_match, projected_source, undo_inserts


class MergeAction(Action):
    name = "merge"

    def validate(self, step, spec):
        if spec is None or not spec.exists_before_plan:
            return [f"{step.label}: merge target {step.target} must exist before the plan runs"]
        return []

    def compared_columns(self, step, spec):
        keep = set(step.key) | set(step.enrich)
        return [f for f in spec.flows[step.name] if f.target in keep]

    def target_filter(self, step, spec, source_rows):
        from consolidation.actions.base import key_in
        return key_in(spec, source_rows)

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

    def undo_note(self, step, spec):
        return (f"restore overwritten columns of {spec.qualified} from the undo log, delete inserted rows, "
                f"drop added columns {', '.join(step.add_columns) or '-'}")
