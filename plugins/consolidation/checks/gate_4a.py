"""The 4A gate: every target exists with the planned columns, types and keys, and refers to nothing legacy."""
from __future__ import annotations

from psycopg import sql

from consolidation.checks.gx import Check
from consolidation.checks.legacy_objects import gate_checks as objects_recreated
from consolidation.core.plan import Plan
from consolidation.core.session import load_specs
from consolidation.core.spec import TargetSpec


def _rendered(conn, q: sql.Composable) -> str:
    return q.as_string(conn)


def gate_4a_checks(conn, plan: Plan) -> list[Check]:
    """Every target exists with the planned columns, types and keys, and refers to nothing legacy."""
    _, specs = load_specs(conn, plan)
    checks: list[Check] = []
    legacy = list(plan.legacy_schemas)
    for spec in specs.values():
        reg = sql.Literal(spec.ident.as_string(conn))
        expected = _expected_columns(spec)
        values = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(c), sql.Literal(t)) for c, t in expected)
        checks.append(Check(
            name="columns", table=spec.qualified, kind="rows",
            description=f"{spec.qualified} exists with the planned columns and types",
            query=_rendered(conn, sql.SQL(
                "SELECT e.col, e.type, 'missing or different' AS problem FROM (VALUES {v}) AS e(col, type) "
                "EXCEPT SELECT a.attname, format_type(a.atttypid, a.atttypmod), 'missing or different' "
                "FROM pg_attribute a WHERE a.attrelid = to_regclass({r}) AND a.attnum > 0 AND NOT a.attisdropped"
            ).format(v=values, r=reg))))
        if spec.kind == "table" and spec.key:
            checks.append(Check(
                name="key_declared", table=spec.qualified, kind="rows",
                description=f"{spec.qualified} has a primary key or unique constraint on ({', '.join(spec.key)})",
                query=_rendered(conn, sql.SQL(
                    "SELECT {r}::text AS relation, {k}::text AS key WHERE NOT EXISTS ("
                    "SELECT 1 FROM pg_constraint c WHERE c.conrelid = to_regclass({r}) AND c.contype IN ('p','u') "
                    "AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a "
                    "WHERE a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)) = {ks})").format(
                    r=reg, k=sql.Literal(", ".join(spec.key)), ks=sql.Literal(sorted(spec.key))))))
        for fk in spec.foreign_keys:  # every legacy foreign key carried, re-pointed at the targets
            checks.append(Check(
                name="foreign_key_carried", table=spec.qualified, step=fk.step, kind="rows",
                description=f"{spec.qualified}({', '.join(fk.columns)}) references {fk.ref_schema}.{fk.ref_table}"
                            f"({', '.join(fk.ref_columns)}): legacy {fk.source} carried"
                            + (" (NOT VALID until 4B has loaded the step)" if fk.not_valid else ""),
                query=_rendered(conn, sql.SQL(
                    "SELECT {r}::text AS relation, {c}::text AS legacy_constraint, 'no such foreign key' AS problem "
                    "WHERE NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.contype = 'f' "
                    "AND k.conrelid = to_regclass({r}) AND k.confrelid = to_regclass({p}) "
                    "AND ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY AS x(n, o) JOIN pg_attribute AS a "
                    "          ON a.attrelid = k.conrelid AND a.attnum = x.n ORDER BY x.o) = {cols}::text[] "
                    "AND ARRAY(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY AS x(n, o) JOIN pg_attribute AS a "
                    "          ON a.attrelid = k.confrelid AND a.attnum = x.n ORDER BY x.o) = {refs}::text[])").format(
                    r=reg, c=sql.Literal(fk.source), p=sql.Literal(sql.Identifier(fk.ref_schema, fk.ref_table).as_string(conn)),
                    cols=sql.Literal(fk.columns), refs=sql.Literal(fk.ref_columns)))))
        for k in spec.foreign_key_problems:  # one that cannot be carried, and the plan does not drop it
            checks.append(Check(
                name="foreign_key_carried", table=spec.qualified, step=k.step, kind="rows",
                description=f"{k.label}: legacy foreign key {k.constraint} ({k.definition}) is carried to "
                            f"{spec.qualified}, or the step lists it under drop_foreign_keys with a reason",
                query=_rendered(conn, sql.SQL("SELECT {} AS step, {} AS legacy_constraint, {} AS problem").format(
                    sql.Literal(k.label), sql.Literal(k.constraint), sql.Literal(k.reason)))))
        checks.append(Check(
            name="no_legacy_reference", table=spec.qualified, kind="rows",
            description=f"no default, constraint, view rule or sequence of {spec.qualified} refers to a legacy schema",
            query=_rendered(conn, sql.SQL(
                "SELECT d.classid::regclass::text AS dependent, rn.nspname || '.' || r.relname AS legacy_object "
                "FROM pg_depend d JOIN pg_class r ON d.refclassid = 'pg_class'::regclass AND r.oid = d.refobjid "
                "JOIN pg_namespace rn ON rn.oid = r.relnamespace "
                "WHERE rn.nspname = ANY({legacy}) AND ("
                " (d.classid = 'pg_class'::regclass AND d.objid = to_regclass({r})) OR"
                " (d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = to_regclass({r}))) OR"
                " (d.classid = 'pg_constraint'::regclass AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = to_regclass({r}))) OR"
                " (d.classid = 'pg_rewrite'::regclass AND d.objid IN (SELECT oid FROM pg_rewrite WHERE ev_class = to_regclass({r}))))"
            ).format(legacy=sql.Literal(legacy), r=reg))))
    return checks + objects_recreated(conn, plan)  # functions, types and triggers of the plan's `objects:`


def _expected_columns(spec: TargetSpec) -> list[tuple[str, str]]:
    if spec.kind == "view" or not spec.exists_before_plan:
        cols = [(c.name, c.type) for c in spec.columns]
        if cols:
            return cols
    seen: dict[str, str] = {}
    for step in spec.steps:
        for f in spec.flows.get(step.name, []):
            seen.setdefault(f.target, f.type)
    return list(seen.items())
