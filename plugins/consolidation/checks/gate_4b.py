"""The 4B gate: for every step, proven against the data, no source row missing, counts
reconcile, quarantine within threshold, keys unique and not null, foreign keys resolve."""
from __future__ import annotations

from psycopg import sql

from consolidation.actions import action_for
from consolidation.checks import quarantine
from consolidation.checks.gx import Check
from consolidation.checks.values import value_diff
from consolidation.checks.reconcile import count_query, extra_rows, missing_rows, sides
from consolidation.core.plan import Plan
from consolidation.core.session import load_specs


def _rendered(conn, q: sql.Composable) -> str:
    return q.as_string(conn)


def gate_4b_checks(conn, plan: Plan) -> list[Check]:
    """For every step, proven against the data: no source row missing, counts reconcile,
    quarantine within threshold, keys unique and not null, foreign keys resolve."""
    _, specs = load_specs(conn, plan)
    # A step that quarantined nothing is compared without the quarantine filter: the same rows,
    # and PostgreSQL may then scan its source with parallel workers (the filter's per-row subplan
    # forbids them). The gate runs inside the phase's lease, so the quarantine does not change meanwhile.
    held = quarantine.counts(conn, plan)
    checks: list[Check] = []
    for step in plan.migrating_steps():
        spec = specs[step.target]
        action = action_for(step)
        filtered = held.get(step.name, 0) > 0
        s = sides(plan, step, spec, quarantined=filtered)
        checks.append(Check(
            name="rows_present", table=spec.qualified, step=step.name, kind="rows",
            description=f"every row of {step.source} is in {spec.qualified} with the same values "
                        f"(hashed over {action.compared_description})",
            query=_rendered(conn, missing_rows(s))))
        for name, which, flows, restrict in action.value_checks(plan, step, spec) if action.moves_rows else []:
            diff = value_diff(plan, step, spec, flows, restrict, quarantined=filtered)
            if diff is not None:
                checks.append(Check(
                    name=name, table=spec.qualified, step=step.name, kind="rows",
                    description=f"every column of {spec.qualified} that {step.source} fills{which} "
                                f"({', '.join(f.target for f in flows)}) holds the value the plan's mapping computes "
                                "from the source row (offending rows: key, column, source value, target value)",
                    query=_rendered(conn, diff)))
        if action.owns_target_rows(step, spec):
            checks.append(Check(
                name="no_unexpected_rows", table=spec.qualified, step=step.name, kind="rows",
                description=f"{spec.qualified} holds no row (of {step.source}) that is not in the source: "
                            "no duplicates, no altered rows",
                query=_rendered(conn, extra_rows(s))))
        checks.append(Check(
            name="counts_reconcile", table=spec.qualified, step=step.name, kind="rows",
            description=f"rows of {step.source} = rows found in {spec.qualified} + rows quarantined",
            query=_rendered(conn, sql.SQL("SELECT * FROM ({}) AS c WHERE c.read <> c.present + c.quarantined").format(
                count_query(plan, step, s)))))
        # the action's own checks: quarantine within threshold, a merge's source keys present, ...
        for name, description, query in action.gate_checks(plan, step, spec, s.source):
            checks.append(Check(name=name, table=spec.qualified, step=step.name, kind="rows",
                                description=description, query=_rendered(conn, query)))
    for spec in specs.values():
        if spec.kind != "table":
            continue
        # A table that existed before the plan holds rows of its own, whose key (for the plan: the
        # renamed legacy key, e.g. legacy_id) may be NULL; this step's rows are proven by rows_present.
        key_not_null = not spec.exists_before_plan
        if len(spec.key) == 1:
            checks.append(Check(name="key_unique", table=spec.qualified, kind="unique", column=spec.key[0],
                                description=f"{spec.qualified}.{spec.key[0]} is unique"))
            if key_not_null:
                checks.append(Check(name="key_not_null", table=spec.qualified, kind="not_null", column=spec.key[0],
                                    description=f"{spec.qualified}.{spec.key[0]} is never null"))
        elif spec.key:
            checks.append(Check(name="key_unique", table=spec.qualified, kind="compound_unique",
                                column=",".join(spec.key),
                                description=f"({', '.join(spec.key)}) is unique in {spec.qualified}"))
            for k in spec.key if key_not_null else []:
                checks.append(Check(name="key_not_null", table=spec.qualified, kind="not_null", column=k,
                                    description=f"{spec.qualified}.{k} is never null"))
        for fk in spec.foreign_keys:
            cols = fk.columns
            checks.append(Check(
                name="foreign_key_resolves", table=spec.qualified, kind="rows",
                description=f"{spec.qualified}({', '.join(cols)}) -> {fk.ref_schema}.{fk.ref_table} resolves",
                query=_rendered(conn, sql.SQL(
                    "SELECT {cols} FROM {t} AS c WHERE {notnull} AND NOT EXISTS (SELECT 1 FROM {p} AS p WHERE {match})").format(
                    cols=sql.SQL(", ").join(sql.Identifier("c", c) for c in cols), t=spec.ident,
                    notnull=sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier("c", c)) for c in cols),
                    p=sql.SQL("{}.{}").format(sql.Identifier(fk.ref_schema), sql.Identifier(fk.ref_table)),
                    match=sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("p", r), sql.Identifier("c", c))
                                                for c, r in zip(cols, fk.ref_columns))))))
    return checks
