"""Rollback of Phase 4: back to the database as it was before 4A.

Two parts, in this order (dags/phase4_rollback.py):

* `restore_legacy` - only after a cleanup: every legacy schema whose planned objects 4D
  dropped is restored from its 4D backup (backup.restore_schemas: one transaction, then
  every table proven equal to the checksum recorded at backup time). Foreign keys 4D
  dropped between legacy schemas are re-created when both tables are back. A schema
  that is only partly there is not touched: it is named and the rollback stops.
* `undo_migration` - removes exactly what 4A and 4B created, as the ledger and the
  undo log say: foreign keys, recreated views, tables and schemas 4A created (ledger
  rows phase 4A, kind ddl), the columns and unique constraints it added to existing
  tables, the rows 4B inserted into tables that existed before the plan (undo log,
  op 'insert') and the values a merge overwrote (undo log before-images, op 'update').
  One transaction, every drop RESTRICT. It refuses - naming the object, changing
  nothing - when a table it created holds rows that did not come from the plan (rows
  inserted or changed after 4B), when a column it added holds values the plan did not
  put there, or when anything it did not create depends on what it would remove.
  A successful undo is the ledger row kind 'rollback' (status success), after which
  extend.created_targets and phases.require_gate start from scratch.

What stays: the tool's own tables (ledger, undo log, quarantine, conflicts, approvals)
keep the history, including this rollback; a schema 4A created that holds them is kept.
"""
from __future__ import annotations

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.phases import backup as backups, registry
from consolidation.core.runs.dropped import dropped_schemas
from consolidation.core import ledger
from consolidation.phases.cleanup import _dependents, _q, _relkind
from consolidation.core.plan import Plan

PHASE = "rollback"


class RollbackRefused(Refusal):
    """The rollback would touch something Phase 4 did not create, or cannot be proven."""


# ------------------------------------------------------------------ state
def legacy_state(conn, plan: Plan) -> dict[str, dict]:
    """{schema: {"present": [...], "missing": [...]}} of the plan's legacy objects."""
    out = {}
    for schema in plan.legacy_schemas:
        present, missing = [], []
        for step in plan.steps_for_schema(schema):
            (present if _relkind(conn, step.source) else missing).append(step.source)
        out[schema] = {"present": present, "missing": missing}
    return out


def _last_rollback_id(conn, plan: Plan) -> int:
    row = conn.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {} WHERE kind = 'rollback' AND status = 'success'")
                       .format(ledger.tool_ident(plan, "ledger"))).fetchone()
    return row[0]


def live_ddl(conn, plan: Plan) -> list[dict]:
    """4A's DDL since the last successful rollback, newest first (the order to undo it)."""
    if not ledger.tool_tables_exist(conn, plan):
        return []
    rows = ledger.rows(conn, plan, "phase = '4A' AND kind = 'ddl' AND status = 'success' AND id > %s",
                       (_last_rollback_id(conn, plan),))
    return list(reversed(rows))


def assess(conn, plan: Plan) -> dict:
    state = legacy_state(conn, plan)
    ddl = live_ddl(conn, plan)
    undo = 0
    if ledger.tool_tables_exist(conn, plan):
        undo = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ledger.tool_ident(plan, "undo"))).fetchone()[0]
    return {"legacy": state, "needs_restore": [s for s, v in state.items() if v["missing"]],
            "ddl": [f"{r['details'].get('kind')} {r['target']}" for r in ddl], "undo_rows": undo}


# ------------------------------------------------------------------ restore (after a cleanup)
def restore_legacy(dsn: str, plan: Plan, *, run_id: str, user: str | None) -> dict:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        state = legacy_state(conn, plan)
        todo = [s for s, v in state.items() if v["missing"]]
        if not todo:
            return {"restored": [], "note": "every planned legacy object is present: nothing to restore"}
        partial = [f"{s} (present: {', '.join(state[s]['present'])}; missing: {', '.join(state[s]['missing'])})"
                   for s in todo if state[s]["present"]]
        if partial:
            raise RollbackRefused(
                "legacy schema(s) only partly there, a restore would collide with what is left: "
                + "; ".join(partial) + ". Inspect them; a 4D drop is all-or-nothing per schema, so someone "
                "else changed them")
        found = backups.latest_backups(conn, plan)
        # the backup each schema's first drop recorded: a resumed 4D backs up a kept, emptied schema again
        for s, drop in dropped_schemas(conn, plan).items():
            named = ledger.rows(conn, plan, "id = %s AND kind = 'backup'", (drop["details"].get("backup_ledger_id"),))
            if named:
                found[s] = named[0]
        missing = [s for s in todo if s not in found]
        if missing:
            raise RollbackRefused(f"no 4D backup is recorded for {', '.join(missing)}; "
                                  "nothing can be restored for it (see the ledger, kind 'backup')")
        # a schema that still exists (kept, emptied public) must really be empty of tables
        for s in todo:
            others = backups.tables_of(conn, s)
            if others:
                raise RollbackRefused(f"schema {s} holds tables the backup does not ({', '.join(others)}); "
                                      "move them out before restoring it")
    backups.restore_schemas(dsn, plan, {s: found[s] for s in todo}, run_id=run_id, user=user)
    readded = _readd_foreign_keys(dsn, plan, run_id=run_id, user=user)
    return {"restored": todo, "archives": {s: found[s]["details"]["path"] for s in todo}, "foreign_keys": readded}


def _readd_foreign_keys(dsn: str, plan: Plan, *, run_id: str, user: str | None) -> list[str]:
    """Foreign keys 4D dropped between legacy schemas, re-created where both ends exist again."""
    done = []
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        rows = ledger.rows(conn, plan, "phase = '4D' AND kind = 'ddl' AND status = 'success' "
                                       "AND details->>'kind' = 'drop_constraint' AND id > %s",
                           (_last_rollback_id(conn, plan),))
        for r in rows:
            d = r["details"]
            table, con, refs = d["table"], d["constraint"], d["references"]
            if not (_relkind(conn, table) and _relkind(conn, refs)):
                continue
            exists = conn.execute("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                                  (_q(table).as_string(conn), con)).fetchone()
            if exists:
                continue
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                _q(table), sql.Identifier(con), sql.SQL(d["definition"])))
            ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="ddl",
                          name=f"add_constraint:{table}.{con}", target=table, triggered_by=user,
                          message=f"re-created foreign key {con} of {table} -> {refs} (dropped by 4D)",
                          details={"kind": "restore_constraint", "definition": d["definition"]})
            done.append(f"{table}.{con}")
        conn.commit()
    return done


# ------------------------------------------------------------------ undo 4A/4B
def _plan_objects(ddl: list[dict]) -> tuple[set[str], set[tuple[str, str]]]:
    rels = {r["target"] for r in ddl if r["details"].get("kind") in ("table", "view")}
    fks = {(r["target"], r["details"]["constraint"]) for r in ddl if r["details"].get("kind") == "foreign_key"}
    return rels, fks


def refusals(conn, plan: Plan, ddl: list[dict]) -> list[str]:
    """Why undoing would destroy something Phase 4 did not create (empty: safe)."""
    from consolidation.core.session import load_specs
    from consolidation.checks.reconcile import checksums

    problems: list[str] = []
    created, created_fks = _plan_objects(ddl)
    missing_sources = [s.source for s in plan.steps if not _relkind(conn, s.source)]
    if missing_sources and ddl:
        return [f"the legacy objects {', '.join(missing_sources[:5])}{'...' if len(missing_sources) > 5 else ''} "
                "are gone (4D ran): without them it cannot be proven that the consolidated tables hold only "
                "migrated rows; restore them first (phase4_rollback does, when their backups are recorded)"]
    # anything not created by the plan that depends on what the undo removes
    for name in sorted(created):
        if not _relkind(conn, name):
            continue
        for dep in _dependents(conn, name):
            if dep["kind"] == "view" and dep["object"] in created:
                continue
            if dep["kind"] == "foreign_key" and (dep["object"], dep["constraint"]) in created_fks:
                continue
            if dep["kind"] == "foreign_key" and dep["object"] in created:
                continue
            problems.append(f"{dep['kind'].replace('_', ' ')} {dep['object']}"
                            + (f" ({dep['constraint']})" if dep["constraint"] else "")
                            + f" depends on {name}, which 4A created, but Phase 4 did not create it: "
                            "drop or re-point it yourself first")
    _, specs = load_specs(conn, plan)
    conn.commit()
    for spec in specs.values():
        if spec.kind != "table" or not spec.exists:
            continue
        if spec.created_by_plan:
            total = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(spec.ident)).fetchone()[0]
            proven = sum(checksums(conn, plan, s, spec)["present"] for s in spec.steps)
            if total > proven:
                problems.append(f"{spec.qualified} (created by 4A) holds {total - proven} row(s) that did not come "
                                f"from the plan ({total} rows, {proven} identical to a legacy row): rows inserted or "
                                "changed after 4B; dropping it would lose them - move them elsewhere first")
            continue
        for step in spec.steps:  # existing table: values in the columns 4A added
            added = [c for c in step.add_columns if c in {col.name for col in spec.columns}]
            if not added:
                continue
            filled = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
                spec.ident, sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in added))
            ).fetchone()[0]
            proven = checksums(conn, plan, step, spec)["present"]
            if filled > proven:
                problems.append(f"{spec.qualified}: the column(s) {', '.join(added)} that 4A added hold values in "
                                f"{filled} row(s), {filled - proven} more than {step.source} put there: written after "
                                "4B; dropping the columns would lose them - save them first")
    conn.commit()
    return problems


def _undo_rows(conn, plan: Plan) -> tuple[int, int]:
    """Restore merge before-images, delete rows 4B inserted into pre-existing tables."""
    undo = ledger.tool_ident(plan, "undo")
    restored = deleted = 0
    for step, target in conn.execute(sql.SQL("SELECT DISTINCT step, target FROM {} WHERE op = 'update'")
                                     .format(undo)).fetchall():
        cols = [r[0] for r in conn.execute(sql.SQL(
            "SELECT DISTINCT jsonb_object_keys(before) FROM {} WHERE op = 'update' AND step = %s ORDER BY 1")
            .format(undo), (step,)).fetchall()]
        keys = [r[0] for r in conn.execute(sql.SQL(
            "SELECT DISTINCT jsonb_object_keys(key) FROM {} WHERE op = 'update' AND step = %s ORDER BY 1")
            .format(undo), (step,)).fetchall()]
        if not cols:
            continue
        restored += conn.execute(sql.SQL(
            "UPDATE {t} AS t SET {sets} FROM {u} AS u, jsonb_populate_record(NULL::{t}, u.before) AS b, "
            "jsonb_populate_record(NULL::{t}, u.key) AS k WHERE u.op = 'update' AND u.step = %s AND {match}").format(
            t=_q(target), u=undo,
            sets=sql.SQL(", ").join(sql.SQL("{} = b.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols),
            match=sql.SQL(" AND ").join(sql.SQL("t.{} = k.{}").format(sql.Identifier(k), sql.Identifier(k))
                                        for k in keys)), (step,)).rowcount
    for step, target in conn.execute(sql.SQL("SELECT DISTINCT step, target FROM {} WHERE op = 'insert'")
                                     .format(undo)).fetchall():
        if not _relkind(conn, target):
            continue
        keys = [r[0] for r in conn.execute(sql.SQL(
            "SELECT DISTINCT jsonb_object_keys(key) FROM {} WHERE op = 'insert' AND step = %s ORDER BY 1")
            .format(undo), (step,)).fetchall()]
        deleted += conn.execute(sql.SQL(
            "DELETE FROM {t} AS t USING {u} AS u, jsonb_populate_record(NULL::{t}, u.key) AS k "
            "WHERE u.op = 'insert' AND u.step = %s AND {match}").format(
            t=_q(target), u=undo,
            match=sql.SQL(" AND ").join(sql.SQL("t.{} = k.{}").format(sql.Identifier(k), sql.Identifier(k))
                                        for k in keys)), (step,)).rowcount
    return restored, deleted


def _undo_statement(conn, plan: Plan, row: dict) -> tuple[sql.Composable | None, str]:
    d, target = row["details"], row["target"]
    kind = d.get("kind")
    if kind == "schema":
        if target == plan.tool_schema:
            return None, f"kept schema {target}: it holds the tool's ledger (created by 4A)"
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (target,)).fetchone():
            return None, f"schema {target} is already gone"
        return sql.SQL("DROP SCHEMA {} RESTRICT").format(sql.Identifier(target)), f"dropped schema {target}"
    exists = _relkind(conn, target)
    if not exists:
        return None, f"{target} is already gone ({kind} not undone)"
    if kind == "table":
        return sql.SQL("DROP TABLE {} RESTRICT").format(_q(target)), f"dropped table {target}"
    if kind == "view":
        return sql.SQL("DROP VIEW {} RESTRICT").format(_q(target)), f"dropped view {target}"
    if kind in ("foreign_key", "unique"):
        con = d["constraint"]
        there = conn.execute("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
                             (_q(target).as_string(conn), con)).fetchone()
        if not there:
            return None, f"constraint {con} of {target} is already gone"
        return (sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} RESTRICT").format(_q(target), sql.Identifier(con)),
                f"dropped {kind.replace('_', ' ')} {con} of {target}")
    if kind == "add_column":
        col = d["column"]
        return (sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {} RESTRICT").format(_q(target), sql.Identifier(col)),
                f"dropped column {target}.{col}")
    if kind == "index":
        return sql.SQL("DROP INDEX IF EXISTS {} RESTRICT").format(
            sql.Identifier(target.split(".")[0], d.get("index", ""))), f"dropped index {d.get('index')}"
    return None, f"{kind} {target}: nothing to undo"


def undo_migration(conn, plan: Plan, *, run_id: str, user: str | None, mode: str = "before cleanup") -> dict:
    """Remove what 4A/4B created (one transaction) and record the rollback; refuse with
    the objects named when anything else would be touched."""
    if not ledger.tool_tables_exist(conn, plan):
        return {"undone": [], "note": "no ledger: Phase 4 never ran here"}
    ddl = live_ddl(conn, plan)
    undo_rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(ledger.tool_ident(plan, "undo"))).fetchone()[0]
    if not ddl and not undo_rows:
        return {"undone": [], "note": "nothing of 4A/4B is recorded since the last rollback"}
    problems = refusals(conn, plan, ddl)
    if problems:
        ledger.record(conn, plan, status=ledger.REFUSED, run_id=run_id, phase=PHASE, kind="rollback",
                      name="undo_4A_4B", triggered_by=user, message="; ".join(problems),
                      details={"problems": problems, "mode": mode})
        conn.commit()
        raise RollbackRefused("rollback refused, nothing was changed:\n  " + "\n  ".join(problems))
    done: list[str] = []
    try:
        with conn.transaction():
            restored, deleted = _undo_rows(conn, plan)
            if restored:
                done.append(f"restored {restored} overwritten row value(s) from the undo log")
            if deleted:
                done.append(f"deleted {deleted} row(s) 4B inserted into existing tables")
            for row in ddl:
                stmt, text = _undo_statement(conn, plan, row)
                if stmt is not None:
                    conn.execute(stmt)
                done.append(text)
            conn.execute(sql.SQL("DELETE FROM {}").format(ledger.tool_ident(plan, "undo")))
            # services that resolve through the registry read the legacy tables again
            repointed = registry.mark_rolled_back(conn, plan, run_id=run_id, user=user)
            if repointed:
                done.append(f"registry: {repointed} entr{'y' if repointed == 1 else 'ies'} point at the legacy "
                            f"tables again (status {registry.ROLLED_BACK})")
            ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="rollback",
                          name="undo_4A_4B", triggered_by=user,
                          message=f"removed what 4A/4B created ({len(ddl)} change(s), {undo_rows} undo-log row(s))",
                          details={"undone": done, "mode": mode, "ddl_ids": [r["id"] for r in ddl]})
    except psycopg.errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        msg = (f"PostgreSQL refused (RESTRICT): {exc.diag.message_primary}{': ' + detail if detail else ''}; "
               "nothing was changed. Those objects were not created by Phase 4: drop or re-point them first")
        ledger.record(conn, plan, status=ledger.REFUSED, run_id=run_id, phase=PHASE, kind="rollback",
                      name="undo_4A_4B", triggered_by=user, message=msg, details={"mode": mode})
        conn.commit()
        raise RollbackRefused(msg) from None
    conn.commit()
    exported = registry.exported_in_run(conn, plan, None)
    if repointed and exported is not None:  # services that read the JSON export see it too
        done.append(f"registry export rewritten: {registry.export(conn, plan, exported.parent, run_id=run_id, user=user)}")
    return {"undone": done}
