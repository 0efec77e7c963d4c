"""Phases and their gates: what each phase requires before it starts, and what its
Great Expectations checkpoint proves before the next one may run.

The DAGs call these functions; so can a test or a shell. Each gate's checks are SQL
built here from the plan and the catalog, run by gates.run_gate as one GX checkpoint,
and the outcome is written to the ledger, where the next phase looks for it.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core import ledger
from consolidation.actions import action_for
from consolidation.phases.extend import load_specs
from consolidation.checks.gx import Check, GateFailed, GateResult, run_gate
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan
from consolidation.checks.reconcile import count_query, extra_rows, missing_rows, sides
from consolidation.core.spec import TargetSpec

PREVIOUS = {"4B": "4A", "4C": "4B", "4D": "4C"}
DAG_OF = {"4A": "phase4a_schema_extension", "4B": "phase4b_data_migration",
          "4C": "phase4c_service_updates", "4D": "phase4d_legacy_cleanup"}


class PhaseRefused(RuntimeError):
    """A phase may not start: the gate before it has not passed."""


def require_gate(conn, plan: Plan, phase: str) -> dict:
    """The latest gate of the phase before `phase` must have passed; returns its ledger row."""
    before = PREVIOUS[phase]
    if not ledger.tool_tables_exist(conn, plan):
        raise PhaseRefused(f"{phase} refused: no {before} gate has run yet (no ledger in {plan.tool_schema}); "
                           f"trigger {DAG_OF[before]} first")
    row = ledger.latest(conn, plan, phase=before, kind="gate")
    if row is None:
        raise PhaseRefused(f"{phase} refused: no {before} gate has run yet; trigger {DAG_OF[before]} first")
    if row["status"] != ledger.SUCCESS:
        raise PhaseRefused(
            f"{phase} refused: the latest {before} gate (run {row['run_id']}, finished {row['finished_at']:%Y-%m-%d %H:%M:%S %Z}) "
            f"did not pass: {row['message'] or row['status']}; fix it and re-run {DAG_OF[before]}")
    rolled = conn.execute(sql.SQL("SELECT finished_at FROM {} WHERE kind = 'rollback' AND status = 'success' "
                                  "AND id > %s ORDER BY id DESC LIMIT 1").format(tool_ident(plan, "ledger")),
                          (row["id"],)).fetchone()
    if rolled:  # a rollback (phase4_rollback) undid what that gate proved
        raise PhaseRefused(f"{phase} refused: Phase 4 was rolled back at {rolled[0]:%Y-%m-%d %H:%M:%S %Z}, after "
                           f"the {before} gate of run {row['run_id']} passed; start again with {DAG_OF['4A']}")
    if row.get("details", {}).get("plan_sha256") not in (None, plan.sha256):
        raise PhaseRefused(f"{phase} refused: the {before} gate passed for another version of the plan; "
                           f"re-run {DAG_OF[before]} with the current plan")
    return row


def record_gate(conn, plan: Plan, phase: str, result: GateResult, *, run_id: str, user: str | None) -> None:
    ledger.record(conn, plan, status=ledger.SUCCESS if result.passed else ledger.FAILED,
                  message=None if result.passed else result.summary(),
                  run_id=run_id, phase=phase, kind="gate", name=f"gate_{phase}", triggered_by=user,
                  details=result.to_dict() | {"plan_sha256": plan.sha256})
    conn.commit()


def run_phase_gate(conn, dsn: str, plan: Plan, phase: str, checks: list[Check], *, run_id: str,
                   user: str | None) -> GateResult:
    """Run a gate's checkpoint, record it, and raise GateFailed when it did not pass."""
    result = run_gate(dsn, phase, checks)
    record_gate(conn, plan, phase, result, run_id=run_id, user=user)
    if not result.passed:
        raise GateFailed(result)
    return result


def _rendered(conn, q: sql.Composable) -> str:
    return q.as_string(conn)


# --------------------------------------------------------------------- 4A
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
    return checks


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


# --------------------------------------------------------------------- 4B
def gate_4b_checks(conn, plan: Plan) -> list[Check]:
    """For every step, proven against the data: no source row missing, counts reconcile,
    quarantine within threshold, keys unique and not null, foreign keys resolve."""
    _, specs = load_specs(conn, plan)
    checks: list[Check] = []
    q = tool_ident(plan, "quarantine")
    for step in plan.migrating_steps():
        spec = specs[step.target]
        s = sides(plan, step, spec)
        checks.append(Check(
            name="rows_present", table=spec.qualified, step=step.name, kind="rows",
            description=f"every row of {step.source} is in {spec.qualified} with the same values "
                        f"(hashed over {'all mapped columns' if step.action != 'merge' else 'key and enriched columns'})",
            query=_rendered(conn, missing_rows(s))))
        if step.action != "merge" and (not spec.exists_before_plan) and (len(spec.steps) == 1 or step.action == "union"):
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
        if not step.is_recreated_view:
            threshold = step.quarantine_threshold
            checks.append(Check(
                name="quarantine_within_threshold", table=spec.qualified, step=step.name, kind="rows",
                description=f"quarantined rows of {step.source} <= {threshold}",
                query=_rendered(conn, sql.SQL(
                    "SELECT step, count(*) AS quarantined, min(reason) AS first_reason FROM {q} WHERE step = {n} "
                    "GROUP BY step HAVING count(*) > {t}").format(q=q, n=sql.Literal(step.name), t=sql.Literal(threshold)))))
        if step.action == "merge":
            keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.key)
            checks.append(Check(
                name="source_keys_present", table=spec.qualified, step=step.name, kind="rows",
                description=f"{spec.qualified} holds every business key of {step.source}",
                query=_rendered(conn, sql.SQL("SELECT {k} FROM ({src}) AS x EXCEPT SELECT {k} FROM {t}").format(
                    k=keys, src=s.source, t=spec.ident))))
    for spec in specs.values():
        if spec.kind != "table":
            continue
        if len(spec.key) == 1:
            checks.append(Check(name="key_unique", table=spec.qualified, kind="unique", column=spec.key[0],
                                description=f"{spec.qualified}.{spec.key[0]} is unique"))
            checks.append(Check(name="key_not_null", table=spec.qualified, kind="not_null", column=spec.key[0],
                                description=f"{spec.qualified}.{spec.key[0]} is never null"))
        elif spec.key:
            checks.append(Check(name="key_unique", table=spec.qualified, kind="compound_unique",
                                column=",".join(spec.key),
                                description=f"({', '.join(spec.key)}) is unique in {spec.qualified}"))
            for k in spec.key:
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


def undo_notes(plan: Plan, specs: dict[str, TargetSpec]) -> dict[str, str]:
    return {s.name: action_for(s).undo_note(s, specs.get(s.target)) for s in plan.steps}


# --------------------------------------------------------------------- 4C
def gate_4c_checks(conn, plan: Plan, *, export_file=None, smoke_folder=None) -> list[Check]:
    """Every migrated table registered at its consolidated home, resolvable, returning exactly
    its legacy rows; the services' smoke queries return the same rows through the registry;
    the JSON export (when given) equals the registry table. See registry.py and smoke.py."""
    from consolidation.phases.registry import registry_checks
    from consolidation.phases.smoke import smoke_checks

    return registry_checks(conn, plan, export_file=export_file) + smoke_checks(conn, plan, smoke_folder)
