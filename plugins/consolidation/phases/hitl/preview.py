"""What 4D would destroy, shown before it does: the DROP statements per legacy schema, the rows
of each table they drop, the quarantined rows, and the approval body made from them.

The statements follow cleanup.drop_schema_objects' order (views first, planned foreign keys
from other schemas, tables referencing others before the tables they reference, then the
schema unless the plan keeps it), read from the catalog now; nothing here writes. Anything
unplanned in the way is listed as a blocker, as the drop itself would refuse it.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core import ledger
from consolidation.core.catalog import relation_exists
from consolidation.core.plan import Plan
from consolidation.phases import cleanup
from consolidation.phases.objects import recreate


def _q(name: str) -> sql.Composed:
    schema, table = name.split(".", 1)
    return sql.Identifier(schema, table)


def drop_preview(conn, plan: Plan) -> dict[str, dict]:
    """{schema: {"statements": [...], "tables": {name: rows}, "blockers": [...]}} in drop order."""
    planned_all = cleanup._planned_sources(plan)  # the steps' relations and the `objects:` dropped
    out: dict[str, dict] = {}
    for schema in plan.legacy_schemas:
        entry: dict = {"statements": [], "tables": {}, "blockers": [], "exists": True}
        out[schema] = entry
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone():
            entry["exists"] = False
            continue
        present = [(n, cleanup._relkind(conn, n)) for n in [s.source for s in plan.steps_for_schema(schema)]
                   + recreate.dropped_relations(plan, schema)]
        present = [(n, k) for n, k in present if k]
        stmts = entry["statements"]
        seen: set[str] = set()

        def drop_view(name: str, kind: str | None) -> None:
            if name in seen:
                return
            for dep in cleanup._dependents(conn, name):  # planned views reading it go first
                if dep["kind"] == "view" and dep["object"] in planned_all:
                    drop_view(dep["object"], cleanup._relkind(conn, dep["object"]))
            seen.add(name)
            what = "MATERIALIZED VIEW" if kind == "m" else "VIEW"
            stmts.append(sql.SQL("DROP {} {} RESTRICT;").format(sql.SQL(what), _q(name)).as_string(conn))

        for name, kind in present:
            if kind in ("v", "m"):
                drop_view(name, kind)
        tables = [n for n, k in present if k in ("r", "p", "f")]
        for name in tables:
            for dep in cleanup._dependents(conn, name):
                obj = dep["object"]
                if dep["kind"] == "foreign_key" and obj in planned_all and obj.split(".")[0] != schema:
                    stmts.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} RESTRICT;").format(
                        _q(obj), sql.Identifier(dep["constraint"])).as_string(conn))
                elif not (dep["kind"] in ("view", "foreign_key") and obj in planned_all):
                    entry["blockers"].append(f"{dep['kind'].replace('_', ' ')} {obj} depends on {name} "
                                             "and is not in the plan")
        remaining = list(tables)
        while remaining:
            ready = [n for n in remaining if not any(
                d["kind"] == "foreign_key" and d["object"] in remaining and d["object"] != n
                for d in cleanup._dependents(conn, n))]
            if not ready:
                entry["blockers"].append(f"tables reference each other in a cycle: {', '.join(remaining)}")
                break
            for name in ready:
                rows, = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(_q(name))).fetchone()
                entry["tables"][name] = rows
                stmts.append(sql.SQL("DROP TABLE {} RESTRICT;").format(_q(name)).as_string(conn)
                             + f"  -- {rows} rows")
                remaining.remove(name)
        for obj, stmt in recreate.drop_statements(conn, plan, schema):  # functions and types of `objects:`
            stmts.append(stmt.as_string(conn) + ";  -- plan: objects")
        entry["blockers"] += cleanup.unplanned_in_schema(conn, plan, schema)
        if plan.legacy_schemas[schema].drop_schema:
            stmts.append(sql.SQL("DROP SCHEMA {} RESTRICT;").format(sql.Identifier(schema)).as_string(conn))
        else:
            stmts.append(f"-- schema {schema} is kept, emptied (plan: legacy_schemas.{schema}.drop_schema is false)")
    conn.rollback()
    return out


def quarantined(conn, plan: Plan) -> dict[str, int]:
    """Rows in the quarantine per step (what 4B could not move), {} when there is none."""
    if not relation_exists(conn, *plan.tool_table("quarantine")):
        return {}
    rows = conn.execute(sql.SQL("SELECT step, count(*) FROM {} GROUP BY step ORDER BY step").format(
        ledger.tool_ident(plan, "quarantine"))).fetchall()
    conn.rollback()
    return {step: n for step, n in rows}


def preview_sql(preview: dict[str, dict]) -> list[str]:
    """The statements as a script: one comment line per schema, then its statements."""
    lines = []
    for schema, entry in preview.items():
        if not entry["exists"]:
            lines.append(f"-- {schema}: does not exist, nothing to drop")
            continue
        lines.append(f"-- {schema}: {len(entry['tables'])} tables, {sum(entry['tables'].values())} rows"
                     + (f"; BLOCKED: {'; '.join(entry['blockers'])}" if entry["blockers"] else ""))
        lines += entry["statements"]
    return lines


def approval_body(req, preview: dict[str, dict], quarantine: dict[str, int], backup_to: str) -> str:
    """The Markdown an approver reads in Required Actions."""
    lines = [f"**Cleanup request {req.id}** of run `{req.run_id}`, asked by {req.requested_by or '-'}.",
             "", f"Fingerprint `{req.fingerprint}` (plan sha256 `{req.plan_sha256[:12]}`, reconciliation "
             f"digest `{req.digest[:12]}`): the approval is used only while the data keeps it.",
             "", f"Backups (pg_dump, one per schema) go to `{backup_to}` before anything is dropped.", ""]
    for schema, entry in preview.items():
        if not entry["exists"]:
            continue
        rows = sum(entry["tables"].values())
        lines.append(f"### {schema}: {len(entry['tables'])} tables, {rows:,} rows dropped")
        if entry["blockers"]:
            lines.append(f"Blocked: {'; '.join(entry['blockers'])}")
        lines += ["```sql", *entry["statements"], "```", ""]
    lines.append("### Quarantined rows (not migrated; kept in the quarantine table)")
    lines += [f"- {step}: {n}" for step, n in quarantine.items()] or ["- none"]
    lines += ["", "Approve only after reviewing the 4B/4C gates; give the reason you decide so."]
    return "\n".join(lines)
