"""The 4C gate: every migrated table registered at its consolidated home, resolvable,
returning exactly its legacy rows, readable by the legacy tables' readers; the services'
smoke queries (phases.smoke) return the same rows through the registry; the JSON export
equals the registry table."""
from __future__ import annotations

import json
from pathlib import Path

from psycopg import sql

from consolidation.actions.base import not_quarantined
from consolidation.checks import quarantine
from consolidation.checks.gx import Check
from consolidation.checks.reconcile import multiset_diff
from consolidation.core.catalog import relation_exists
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan
from consolidation.phases.registry import (CONSOLIDATED, NotRegistered, _resolved, entries, entry_json,
                                           missing_read_grants, target_name)
from consolidation.phases.objects import privileges
from consolidation.phases.smoke import smoke_checks


def gate_4c_checks(conn, plan: Plan, *, export_file=None, smoke_folder=None) -> list[Check]:
    """Every migrated table registered at its consolidated home, resolvable, returning exactly
    its legacy rows; the services' smoke queries return the same rows through the registry;
    the JSON export (when given) equals the registry table. See registry.py and smoke.py."""
    return registry_checks(conn, plan, export_file=export_file) + smoke_checks(conn, plan, smoke_folder)


def registry_checks(conn, plan: Plan, *, export_file: Path | None = None) -> list[Check]:
    """The registry part of the 4C gate (consolidation.phases.smoke adds the service queries)."""
    reg = tool_ident(plan, "registry")
    reg_name = ".".join(plan.tool_table("registry"))
    lit = sql.Literal
    expected = sql.SQL(", ").join(
        sql.SQL("({}, {}, {})").format(lit(s.source), lit(s.target_schema), lit(s.target_table))
        for s in plan.migrating_steps())
    relation = sql.SQL("to_regclass({})").format(target_name("r"))

    def render(q: sql.Composable) -> str:
        return q.as_string(conn)

    checks = [
        Check(name="every_migrated_table_registered", table=reg_name, kind="rows",
              description="every migrated legacy table (each non-delete plan step) has a 'consolidated' entry "
                          "pointing at its planned target",
              query=render(sql.SQL(
                  "SELECT e.logical_name, e.schema || '.' || e.tbl AS planned_target, "
                  "coalesce(r.physical_schema || '.' || r.physical_table, 'no entry') AS registered, r.status "
                  "FROM (VALUES {v}) AS e(logical_name, schema, tbl) LEFT JOIN {reg} AS r ON r.logical_name = e.logical_name "
                  "WHERE r.logical_name IS NULL OR r.physical_schema <> e.schema OR r.physical_table <> e.tbl "
                  "OR r.status <> {ok}").format(v=expected, reg=reg, ok=lit(CONSOLIDATED)))),
        Check(name="no_entry_points_into_legacy", table=reg_name, kind="rows",
              description=f"no registry entry points into a legacy schema ({', '.join(plan.legacy_schemas)}) "
                          "or outside the consolidated schemas",
              query=render(sql.SQL(
                  "SELECT r.logical_name, r.physical_schema || '.' || r.physical_table AS points_at "
                  "FROM {reg} AS r WHERE r.physical_schema = ANY({legacy}) OR NOT r.physical_schema = ANY({ok})").format(
                  reg=reg, legacy=lit(list(plan.legacy_schemas)), ok=lit(list(plan.consolidated_schemas))))),
        Check(name="every_entry_resolves", table=reg_name, kind="rows",
              description="every registry entry names an existing relation with every mapped column and its filter column",
              query=render(sql.SQL(
                  "SELECT r.logical_name, r.physical_schema || '.' || r.physical_table AS points_at, "
                  "'relation does not exist' AS problem FROM {reg} AS r WHERE {rel} IS NULL "
                  "UNION ALL "
                  "SELECT r.logical_name, r.physical_schema || '.' || r.physical_table, 'column ' || c.col || ' does not exist' "
                  "FROM {reg} AS r CROSS JOIN LATERAL ("
                  "  SELECT x->>'column' AS col FROM jsonb_array_elements(r.columns) AS x "
                  "  UNION SELECT unnest(string_to_array(r.filter_column, ',')) WHERE r.filter_column IS NOT NULL) AS c "
                  "WHERE {rel} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = {rel} "
                  "AND a.attname = c.col AND a.attnum > 0 AND NOT a.attisdropped) "
                  "UNION ALL "
                  "SELECT r.logical_name, r.physical_schema || '.' || r.physical_table, 'maps no column' "
                  "FROM {reg} AS r WHERE jsonb_array_length(r.columns) = 0").format(reg=reg, rel=relation))),
    ]
    checks.append(Check(
        name="legacy_readers_can_read", table=reg_name, kind="rows",
        description="every role that may read a legacy table may read the registry and the entry's consolidated table",
        query=render(sql.SQL(
            "{missing} UNION ALL "
            "SELECT DISTINCT e.logical_name, ro.rolname, {reg_lit}, 'SELECT on the registry' "
            "FROM {reg} AS e JOIN pg_class AS c ON c.oid = to_regclass(quote_ident(e.legacy_schema) || '.' || "
            "quote_ident(e.legacy_table)) CROSS JOIN LATERAL aclexplode(c.relacl) AS a "
            "JOIN pg_roles AS ro ON ro.oid = a.grantee WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner "
            "AND NOT has_table_privilege(ro.oid, {reg_lit}, 'SELECT')").format(
            missing=missing_read_grants(sql.SQL("{} AS e").format(reg)), reg=reg,
            reg_lit=lit(sql.Identifier(*plan.tool_table("registry")).as_string(conn))))))
    granted = privileges.missing_query(conn, plan)
    if granted is not None:
        checks.append(Check(
            name="privileges_carried", table=reg_name, kind="rows",
            description="every role's privileges on each legacy table and its sequences are held on its target and "
                        "the target's sequences and schema (has_table_privilege / has_sequence_privilege / "
                        "has_schema_privilege, per role)",
            query=render(granted)))
    checks += _same_rows_checks(conn, plan)
    checks += _quarantine_checks(conn, plan)
    if export_file is not None:
        checks.append(_export_check(conn, plan, export_file))
    return checks


def _same_rows_checks(conn, plan: Plan) -> list[Check]:
    """Per entry: resolving the legacy name returns exactly the legacy table's rows."""
    checks = []
    quarantined = quarantine.counts(conn, plan)
    for e in entries(conn, plan):
        name = e["logical_name"]
        if not relation_exists(conn, e["legacy_schema"], e["legacy_table"]):
            continue  # the legacy table is gone (after 4D): nothing left to compare with
        try:
            resolved = _resolved(e, set(plan.legacy_schemas), "the registry")
        except NotRegistered as exc:
            # no_entry_points_into_legacy / every_entry_resolves report it; this names the entry too
            checks.append(Check(name="same_rows_as_legacy", table=f"{e['physical_schema']}.{e['physical_table']}",
                                step=name, kind="rows", description=f"{name} resolves to exactly its legacy rows",
                                query=sql.SQL("SELECT {} AS logical_name, {} AS problem").format(
                                    sql.Literal(name), sql.Literal(str(exc))).as_string(conn)))
            continue
        legacy_cols = []
        for c in resolved.columns:
            col: sql.Composable = sql.Identifier("s", c.name)
            if c.type != c.physical_type:  # the plan's cast and back, as the registry serves it ('+118' -> 118 -> '118')
                col = sql.SQL("CAST(CAST({} AS {}) AS {})").format(col, sql.SQL(c.physical_type), sql.SQL(c.type))
            if c.default is not None:  # the plan's declared transformation, applied to the legacy side
                col = sql.SQL("COALESCE({}, CAST({} AS {}))").format(col, sql.Literal(c.default), sql.SQL(c.type))
            legacy_cols.append(col)
        left = sql.SQL("SELECT ROW({}) AS r FROM {} AS s").format(
            sql.SQL(", ").join(legacy_cols), sql.Identifier(e["legacy_schema"], e["legacy_table"]))
        step = plan.step_for_source(e["legacy_schema"], e["legacy_table"])
        held = quarantined.get(step.name, 0) if step is not None else 0
        if held:  # quarantined rows are accounted for, not migrated: the registry cannot return them
            left = sql.SQL("{} WHERE {}").format(left, not_quarantined(plan, step))
        right = sql.SQL("SELECT ROW(q.*) AS r FROM {} AS q").format(resolved.relation())
        defaults = [c.name for c in resolved.columns if c.default is not None]
        checks.append(Check(
            name="same_rows_as_legacy", table=resolved.qualified, step=name, kind="rows",
            description=f"reading {name} through the registry returns exactly the rows of the legacy table "
                        + (f"minus its {held} quarantined row(s) (kept in {quarantine.table_name(plan)}, "
                           f"step = '{step.name}') " if held else "")
                        + f"({len(resolved.columns)} columns" + (f"; {', '.join(defaults)} with the plan's default for NULL"
                                                                 if defaults else "") + ")",
            query=multiset_diff(left, right, "legacy", "registry").as_string(conn)))
    return checks


def _quarantine_checks(conn, plan: Plan) -> list[Check]:
    """The quarantine, listed (the check's description) and accounted for: every quarantined
    row is still in its legacy table until 4D backs it up, so it is neither migrated nor lost."""
    out = []
    for d in quarantine.summary(conn, plan):
        step = next((s for s in plan.steps if s.name == d["step"]), None)
        if step is None or not relation_exists(conn, step.source_schema, step.source_table):
            continue
        out.append(Check(
            name="quarantine_accounted", table=quarantine.table_name(plan), step=step.name, kind="rows",
            description=quarantine.lines([d])[0] + "; each such row is still in the legacy table",
            query=sql.SQL("SELECT q.id, left(q.original::text, 300) AS original, q.reason FROM {q} AS q "
                          "WHERE q.step = {n} AND NOT EXISTS (SELECT 1 FROM {src} AS s WHERE to_jsonb(s) = q.original)").format(
                q=tool_ident(plan, "quarantine"), n=sql.Literal(step.name),
                src=sql.Identifier(step.source_schema, step.source_table)).as_string(conn)))
    return out


def _export_check(conn, plan: Plan, path: Path) -> Check:
    reg_name = ".".join(plan.tool_table("registry"))
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        file_entries = doc["entries"]
        problem = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        file_entries, problem = [], f"cannot read {path}: {exc}"
    description = f"the JSON export {path} holds exactly the registry table's entries"
    if problem:
        query = sql.SQL("SELECT {} AS problem").format(sql.Literal(problem))
    else:
        query = sql.SQL(
            "WITH f AS (SELECT x AS e FROM jsonb_array_elements({doc}::jsonb) AS x), "
            "t AS (SELECT {e} AS e FROM {reg} AS r) "
            "SELECT 'only in the file' AS side, d.e->>'logical_name' AS logical_name "
            "FROM (SELECT e FROM f EXCEPT ALL SELECT e FROM t) AS d "
            "UNION ALL SELECT 'only in the table', d.e->>'logical_name' "
            "FROM (SELECT e FROM t EXCEPT ALL SELECT e FROM f) AS d").format(
            doc=sql.Literal(json.dumps(file_entries)), e=entry_json("r"), reg=tool_ident(plan, "registry"))
    return Check(name="export_matches_table", table=reg_name, kind="rows", description=description,
                 query=query.as_string(conn))
