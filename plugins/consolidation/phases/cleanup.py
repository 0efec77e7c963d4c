"""Phase 4D: remove the legacy schemas, once proven, approved and backed up.

Order of a cleanup (dags/phase4d_legacy_cleanup.py wires it; each function here is
usable from a shell or a test):

1. `preflight`: the inventory again (a blocking finding, or an object elsewhere that
   depends on a legacy one, blocks; an object of a legacy schema the plan does not name
   blocks only the drop of its schema, step 4), then the 4B reconciliation again. Rows that reached a legacy table after 4B ("late rows": a service still
   writing to an old name) block the cleanup, named with their counts - unless the run
   says `resync_late_rows`, in which case the affected 4B steps are re-run
   (migrate.run_step, idempotent: only the missing rows move) and proven again. Either
   way the 4B gate checks are run as a Great Expectations checkpoint (ledger: phase
   4D, gate `reconcile_4D`) and must pass before anyone is asked.
2. An approval request bound to the fingerprint of the data (approvals.open_request
   with reconcile.digest), and the wait for a person's decision (airflow.approval.CleanupApproval, Airflow HITL).
3. The backup (backup.take_backup): the approved fingerprint is re-computed in the
   snapshot the archives are dumped from; every table's checksum is recorded.
4. `drop_schema_objects`, one legacy schema per transaction: the schema's planned
   objects are locked, their checksums compared with the backup (a row written since
   stops the drop), then the planned views, the planned tables in dependency order and
   the schema itself are dropped with RESTRICT. A dependent that is itself a planned
   legacy object (a planned view reading the table, a foreign key from a planned table
   of another legacy schema) is dropped explicitly first and recorded, with its
   definition; any other dependent - or any unplanned object in the schema - stops the
   drop, named, and the transaction rolls back: nothing of that schema is dropped. The
   plan's `objects:` of the schema go with it: relations given `drop:` with the tables
   (locked and checked against the backup like them), then its functions and types
   (`drop:` and the legacy originals of `recreate:`; phases.objects.recreate).
   `legacy_schemas.<name>.drop_schema: false` (the default for public) keeps the
   emptied schema.
5. The post-cleanup gate (`gate_4d_checks`, phase 4D, `gate_4D`).
"""
from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.checks.legacy_objects import legacy_objects, unplanned
from consolidation.phases import backup as backups
from consolidation.phases.objects import recreate
from consolidation.core import dsn as dsns, ledger
from consolidation.core.plan import Plan
from consolidation.core.catalog import CHECKSUM, qualified_ident as _q, row_hashes

PHASE = "4D"
RECONCILE_GATE = "reconcile_4D"


class CleanupBlocked(Refusal):
    """The cleanup may not go on; the message names the objects, the counts and the fix."""


def pinned_dsn(dsn: str) -> str:
    """The DSN with the output settings pinned (for gate queries that compare checksums)."""
    return dsns.with_settings(dsn, backups._PINNED)


# ------------------------------------------------------------------ 1. preflight
def inventory_problems(conn, plan: Plan):
    """(inventory, blocking findings): the inventory's blocking findings plus objects
    outside the legacy schemas that depend on a legacy object (they break on the drop)."""
    from consolidation.checks.inventory import take_inventory

    inv = take_inventory(conn, plan)
    blocking = inv.blocking + [f for f in inv.findings if f.code == "depends_on_legacy"]
    return inv, blocking


def late_rows(conn, plan: Plan) -> list[dict]:
    """Steps whose legacy table holds rows that are not (identically) in the target."""
    from consolidation.core.session import load_specs
    from consolidation.checks.reconcile import checksums

    _, specs = load_specs(conn, plan)
    out = []
    for step in plan.migrating_steps():
        if not step.migrates_rows:  # a recreated view: no rows of its own to be late
            continue
        c = checksums(conn, plan, step, specs[step.target])
        missing = c["read"] - c["present"] - c["quarantined"]
        if missing:
            out.append({"step": step.name, "source": step.source, "target": step.target, "read": c["read"],
                        "present": c["present"], "quarantined": c["quarantined"], "missing": missing})
    conn.commit()
    return out


def resync(conn, plan: Plan, late: list[dict], *, run_id: str, user: str | None) -> list[dict]:
    """Re-run the 4B steps of the late rows, upstream steps first; returns their results."""
    from consolidation.core.session import load_specs
    from consolidation.phases.migrate import execution_order, run_step

    _, specs = load_specs(conn, plan)
    done = [s.name for s in execution_order(plan, specs, only={r["step"] for r in late})]
    results = []
    for name in done:
        r = run_step(conn, plan, name, run_id=run_id, user=user)
        results.append({"step": name, "inserted": r.inserted, "merged": r.merged, "quarantined": r.quarantined})
    return results


def describe_late(late: list[dict]) -> str:
    return "\n  ".join(
        f"{r['source']}: {r['missing']} row(s) not in {r['target']} (legacy {r['read']}, found in target "
        f"{r['present']}, quarantined {r['quarantined']})" for r in late)


def verify_dropped(conn, dsn: str, plan: Plan, *, run_id: str, user: str | None) -> dict[str, dict]:
    """The legacy schemas an earlier (interrupted) 4D run already dropped, each checked against
    the backup its drop recorded: the archive is there, its sha256 and data entries are as
    recorded, and every dropped table's checksum equals the one in the backup. Recorded in
    the ledger (resume_4D); CleanupBlocked, naming the archive, when a backup fails that."""
    from consolidation.core.runs.dropped import dropped_schemas

    dropped = dropped_schemas(conn, plan)
    if not dropped:
        return {}
    env = backups.pg_env(dsn)
    out: dict[str, dict] = {}
    for schema, row in dropped.items():
        backup_id = row["details"].get("backup_ledger_id")
        found = ledger.rows(conn, plan, "id = %s AND kind = 'backup' AND status = 'success'", (backup_id,))
        if not found:
            raise CleanupBlocked(f"schema {schema} was dropped by run {row['run_id']}, but the backup its drop "
                                 f"names (ledger id {backup_id}) is not recorded; restore cannot be proven - "
                                 "investigate before anything else is dropped")
        d = found[0]["details"]
        try:
            backups.verify_archive(Path(d["path"]), sha256=d["sha256"], tables=d["tables"], env=env)
        except backups.BackupFailed as exc:
            raise CleanupBlocked(f"schema {schema} was dropped by run {row['run_id']}, but its backup cannot be "
                                 f"trusted: {exc}; nothing more is dropped until it is back") from None
        drops = ledger.rows(conn, plan, "phase = '4D' AND kind = 'ddl' AND status = 'success' AND run_id = %s "
                                        "AND details->>'kind' = 'drop_table' AND details->>'schema' = %s",
                            (row["run_id"], schema))
        differ = [r["source"] for r in drops if d["tables"].get(r["source"], {}).get("checksum")
                  != r["details"].get("checksum")]
        if differ:
            raise CleanupBlocked(f"schema {schema} was dropped by run {row['run_id']}, but the checksums its drop "
                                 f"recorded for {', '.join(differ)} differ from the backup {d['path']}")
        out[schema] = {"dropped_by": row["run_id"], "at": row["finished_at"], "archive": d["path"],
                       "sha256": d["sha256"], "tables": len(d["tables"]),
                       "rows": sum(t.get("rows", 0) for t in d["tables"].values())}
    ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="run", name="resume_4D",
                  triggered_by=user, details={"dropped": out,
                                              "dropped_by_runs": sorted({v["dropped_by"] for v in out.values()})},
                  message="resumed after an interrupted cleanup; already dropped, backups verified: " + "; ".join(
                      f"{s} (run {v['dropped_by']}, {v['tables']} tables, {v['rows']:,} rows in {v['archive']}, "
                      f"sha256 {v['sha256'][:12]})" for s, v in out.items()))
    conn.commit()
    return out


def preflight(conn, dsn: str, plan: Plan, *, resync_late_rows: bool, run_id: str, user: str | None) -> dict:
    """Inventory, late rows (block or re-sync), and the reconciliation re-proven as a GX gate.
    After an interrupted cleanup, the schemas it dropped are verified against their backups
    and left out (verify_dropped); the rest is checked as usual."""
    from consolidation.checks.gate_4b import gate_4b_checks
    from consolidation.checks.gates import run_phase_gate
    from consolidation.core.runs.dropped import remaining

    full = plan
    resumed = verify_dropped(conn, dsn, plan, run_id=run_id, user=user)
    plan = remaining(plan, resumed)
    inv, blocking = inventory_problems(conn, plan)
    before = {
        "schema_totals": inv.schema_totals,
        "objects": [{"object": f"{o.schema}.{o.name}", "kind": o.kind, "rows": o.rows, "action": o.action,
                     "target": o.target} for o in inv.objects],
        "findings": [{"severity": f.severity, "code": f.code, "object": f.object, "message": f.message}
                     for f in inv.findings if f.severity != "info"],
        "schemas": schema_summary(conn, list(plan.legacy_schemas) + list(plan.consolidated_schemas)),
    }
    ledger.record(conn, plan, status=ledger.FAILED if blocking else ledger.SUCCESS, run_id=run_id, phase=PHASE,
                  kind="run", name="inventory_4D", triggered_by=user, details=before,
                  message=f"{len(blocking)} blocking finding(s)" if blocking else "nothing unplanned")
    conn.commit()
    if blocking:
        lines = [f"{f.object}: {f.message}" + (f" (fix: {f.fix})" if f.fix else "") for f in blocking]
        raise CleanupBlocked("the cleanup is blocked before anything is asked or dropped:\n  " + "\n  ".join(lines))

    late = late_rows(conn, plan)
    synced: list[dict] = []
    if late:
        ledger.record(conn, plan, status=ledger.SUCCESS if resync_late_rows else ledger.FAILED, run_id=run_id,
                      phase=PHASE, kind="run", name="late_rows", triggered_by=user,
                      message=("re-synced: " if resync_late_rows else "blocked: ") + describe_late(late),
                      details={"late": late, "resync": resync_late_rows})
        conn.commit()
        if not resync_late_rows:
            raise CleanupBlocked(
                "rows were written to legacy tables after 4B (a service still writes to the old names?):\n  "
                + describe_late(late) + "\nfix: point the writer at the consolidated table, then re-run "
                "phase4d_legacy_cleanup with resync_late_rows=true (re-runs those 4B steps and proves them "
                "again) or re-run phase4b_data_migration")
        synced = resync(conn, plan, late, run_id=run_id, user=user)

    checks = gate_4b_checks(conn, plan)
    conn.commit()
    result = run_phase_gate(conn, dsn, full, PHASE, checks, run_id=run_id, user=user, gate=RECONCILE_GATE,
                            details={"resynced": synced, "resumed": sorted(resumed)})
    return {"late": late, "resynced": synced, "checks": len(result.results), "resumed": resumed}


def schema_summary(conn, schemas: list[str]) -> dict[str, dict]:
    """{schema: {"exists", "tables", "views", "rows"}} from the catalog (exact counts)."""
    from consolidation.core.catalog import introspect

    cat = introspect(conn, schemas)
    out = {}
    for s in schemas:
        rels = cat.in_schema(s)
        out[s] = {"exists": s in cat.existing_schemas,
                  "tables": sum(1 for r in rels if r.kind == "table"),
                  "views": sum(1 for r in rels if r.kind in ("view", "matview")),
                  "rows": sum(r.rows or 0 for r in rels if r.kind == "table")}
    return out


# ------------------------------------------------------------------ 4. drop
def _relkind(conn, name: str) -> str | None:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)",
                       (_q(name).as_string(conn),)).fetchone()
    return row[0] if row else None


def _dependents(conn, name: str) -> list[dict]:
    """Objects that depend on relation `name` (other than its own parts): views reading
    it, foreign keys pointing at it from other tables, and anything else pg_depend knows."""
    reg = _q(name).as_string(conn)
    rows = conn.execute("""
        SELECT 'view' AS kind, vn.nspname || '.' || v.relname AS object, NULL::text AS con, NULL::text AS def
          FROM pg_depend d JOIN pg_rewrite rw ON d.classid = 'pg_rewrite'::regclass AND rw.oid = d.objid
          JOIN pg_class v ON v.oid = rw.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%(r)s) AND v.oid <> d.refobjid
        UNION
        SELECT 'foreign_key', cn.nspname || '.' || c.relname, con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
         WHERE con.contype = 'f' AND con.confrelid = to_regclass(%(r)s) AND con.conrelid <> con.confrelid
        UNION
        SELECT 'other', pg_describe_object(d.classid, d.objid, d.objsubid), NULL, NULL
          FROM pg_depend d
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%(r)s) AND d.deptype = 'n'
           AND d.classid NOT IN ('pg_rewrite'::regclass, 'pg_constraint'::regclass, 'pg_attrdef'::regclass)
           AND NOT (d.classid = 'pg_class'::regclass AND d.objid = d.refobjid)
        ORDER BY 1, 2, 3""", {"r": reg}).fetchall()
    return [{"kind": k, "object": o, "constraint": c, "definition": d} for k, o, c, d in rows]


def unplanned_in_schema(conn, plan: Plan, schema: str) -> list[str]:
    """What in a legacy schema the plan does not name (checks.legacy_objects: relations no step
    moves, functions, procedures, types, triggers not carried; sequences owned by a table and the
    row types of relations go with their owner), one message each saying what to add to the plan."""
    return [o.unplanned_message() for o in unplanned(legacy_objects(conn, plan, [schema]))]


def _planned_sources(plan: Plan) -> set[str]:
    """Relations the cleanup drops: the steps' tables and views, and the `objects:` it drops."""
    return {s.source for s in plan.steps} | {n for schema in plan.legacy_schemas
                                              for n in recreate.dropped_relations(plan, schema)}


def drop_schema_objects(conn, plan: Plan, schema: str, *, run_id: str, user: str | None,
                        backup_row: dict | None) -> list[str]:
    """Drop the plan's objects of one legacy schema, then the schema (per the plan), in
    ONE transaction; returns what was done. Refuses (rolls back, names the object) when
    a table changed since the backup, or anything unplanned is in the way."""
    exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if not exists:
        return [f"schema {schema} does not exist: nothing to drop"]
    if backup_row is None:
        raise CleanupBlocked(f"no backup of schema {schema} is recorded for this run; nothing of {schema} "
                             "is dropped without one - run the backup task first")
    planned_all = _planned_sources(plan)
    steps = plan.steps_for_schema(schema)
    done: list[str] = []
    try:
        with conn.transaction():
            present = [(n, _relkind(conn, n)) for n in [s.source for s in steps]
                       + recreate.dropped_relations(plan, schema)]
            present = [(n, k) for n, k in present if k]
            conn.execute("SELECT set_config('lock_timeout', '60s', true)")
            if present:  # nobody writes, reads into a new view or adds a key while we check and drop
                conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(_q(n) for n, _ in present)))
            unplanned = unplanned_in_schema(conn, plan, schema)
            if unplanned:
                raise CleanupBlocked(
                    f"schema {schema} is not dropped, nothing of it was: " + "; ".join(unplanned)
                    + f" (or move them out of {schema}), then re-run phase4d_legacy_cleanup")
            # the data about to be dropped must be exactly what the archive holds
            recorded = backup_row["details"]["tables"]
            backups.pin_output(conn)
            changed = []
            for name, kind in present:
                if kind not in ("r", "p"):
                    continue
                now = backups.table_checksum(conn, *name.split(".", 1))
                want = recorded.get(name)
                if want != now:
                    changed.append(f"{name} (backup: {want['rows'] if want else 'absent'} rows, now {now['rows']})")
            if changed:
                raise CleanupBlocked(
                    f"table(s) changed since the backup {backup_row['details']['path']}: {', '.join(changed)}; "
                    f"nothing of {schema} was dropped. Re-run phase4d_legacy_cleanup: the new rows are "
                    "reconciled, approved and backed up first")

            def record(kind: str, obj: str, message: str, **details) -> None:
                ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="ddl",
                              name=f"{kind}:{obj}", source=obj, target=backup_row["details"]["path"],
                              triggered_by=user, message=message,
                              details={"kind": kind, "schema": schema, "backup": backup_row["details"]["path"],
                                       "backup_ledger_id": backup_row["id"]} | details)
                done.append(message)

            def clear_dependents(name: str) -> None:
                """Drop what depends on `name` when it is itself planned; refuse otherwise."""
                for dep in _dependents(conn, name):
                    obj = dep["object"]
                    if dep["kind"] == "view" and obj in planned_all:
                        if _relkind(conn, obj):
                            clear_dependents(obj)
                            conn.execute(sql.SQL("DROP VIEW {} RESTRICT").format(_q(obj)))
                            record("drop_view", obj, f"dropped view {obj} (planned; it reads {name})")
                    elif dep["kind"] == "foreign_key" and obj in planned_all and obj.split(".")[0] != schema:
                        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {} RESTRICT").format(
                            _q(obj), sql.Identifier(dep["constraint"])))
                        record("drop_constraint", f"{obj}.{dep['constraint']}",
                               f"dropped foreign key {dep['constraint']} of {obj} -> {name} "
                               f"(both planned for the drop)", table=obj, constraint=dep["constraint"],
                               definition=dep["definition"], references=name)
                    elif dep["kind"] == "foreign_key" and obj in planned_all:
                        continue  # a table of this schema: dropped before `name` (ordering below)
                    else:
                        raise CleanupBlocked(
                            f"{dep['kind'].replace('_', ' ')} {obj}"
                            + (f" ({dep['constraint']}: {dep['definition']})" if dep["constraint"] else "")
                            + f" depends on {name} and is not in the plan; nothing of {schema} was dropped. "
                            f"Re-point or drop it yourself, then re-run phase4d_legacy_cleanup")

            views = [n for n, k in present if k in ("v", "m")]
            tables = [n for n, k in present if k in ("r", "p", "f")]
            for name in views:  # views first, each after the planned views that read it
                if _relkind(conn, name):
                    clear_dependents(name)
                    conn.execute(sql.SQL("DROP {} {} RESTRICT").format(
                        sql.SQL("MATERIALIZED VIEW" if _relkind(conn, name) == "m" else "VIEW"), _q(name)))
                    record("drop_view", name, f"dropped view {name}")
            remaining = list(tables)
            while remaining:  # tables: referencing tables before the tables they reference
                progressed = False
                for name in list(remaining):
                    clear_dependents(name)
                    still = [d["object"] for d in _dependents(conn, name)
                             if d["kind"] == "foreign_key" and d["object"] in remaining and d["object"] != name]
                    if still:
                        continue
                    rows = recorded.get(name, {}).get("rows")
                    conn.execute(sql.SQL("DROP TABLE {} RESTRICT").format(_q(name)))
                    record("drop_table", name, f"dropped table {name} ({rows} rows, in the backup)", rows=rows,
                           checksum=recorded.get(name, {}).get("checksum"))
                    remaining.remove(name)
                    progressed = True
                if not progressed:
                    raise CleanupBlocked(f"tables of {schema} reference each other in a cycle ({', '.join(remaining)}); "
                                         "drop one of the foreign keys yourself, then re-run")
            for obj, stmt in recreate.drop_statements(conn, plan, schema):  # routines, then types
                conn.execute(stmt)
                record("drop_object", obj, f"dropped {obj} (plan: objects; in the backup)")
            left = unplanned_in_schema(conn, plan, schema)
            if left:
                raise CleanupBlocked(f"after the planned drops, {schema} still holds {', '.join(left)}; "
                                     f"nothing of {schema} was dropped")
            if plan.legacy_schemas[schema].drop_schema:
                conn.execute(sql.SQL("DROP SCHEMA {} RESTRICT").format(sql.Identifier(schema)))
                record("drop_schema", schema, f"dropped schema {schema}")
            else:
                record("keep_schema", schema, f"kept schema {schema}, now empty "
                                              f"(plan: legacy_schemas.{schema}.drop_schema is false)")
    except psycopg.errors.DependentObjectsStillExist as exc:
        detail = (exc.diag.message_detail or "").replace("\n", "; ")
        raise CleanupBlocked(f"PostgreSQL refused a drop in {schema} (RESTRICT): {exc.diag.message_primary}"
                             f"{': ' + detail if detail else ''}; nothing of {schema} was dropped. Those objects "
                             "are not in the plan: move or drop them yourself, then re-run") from None
    conn.commit()
    return done


# ------------------------------------------------------------------ 5. gate
def gate_4d_checks(conn, plan: Plan, baseline: dict[str, dict]) -> list:
    """What must hold after the cleanup, as gate checks (rows queries = what is wrong)."""
    from consolidation.checks.gx import Check
    from consolidation.checks.probes import probe_insert

    lit = sql.Literal
    checks: list[Check] = []
    system = sql.SQL("left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema'")
    not_ext = ("NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cls}::regclass "
               "AND d.objid = {oid} AND d.deptype = 'e')")
    user_objects = sql.SQL(
        "SELECT n.nspname AS schema, x.object FROM pg_namespace n JOIN LATERAL ("
        " SELECT c.relname::text AS object FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind IN ('r','p','v','m','S','f') AND "
        + not_ext.format(cls="'pg_class'", oid="c.oid") +
        " UNION ALL SELECT p.proname::text FROM pg_proc p WHERE p.pronamespace = n.oid AND "
        + not_ext.format(cls="'pg_proc'", oid="p.oid") +
        " UNION ALL SELECT t.typname::text FROM pg_type t WHERE t.typnamespace = n.oid AND t.typtype IN ('e','d','r','m') AND "
        + not_ext.format(cls="'pg_type'", oid="t.oid") +
        ") x ON TRUE WHERE ")
    kept = [s for s, v in plan.legacy_schemas.items() if not v.drop_schema]
    dropped = [s for s, v in plan.legacy_schemas.items() if v.drop_schema]
    allowed = list(plan.consolidated_schemas) + kept
    checks.append(Check(
        name="only_consolidated_schemas", table="pg_catalog.pg_namespace", kind="rows",
        description=f"user objects live only in the consolidated schemas ({', '.join(plan.consolidated_schemas)})"
                    + (f" and the kept schema(s) {', '.join(kept)}" if kept else ""),
        query=sql.SQL("{} {} AND n.nspname <> ALL({})").format(user_objects, system, lit(allowed)).as_string(conn)))
    if kept:
        checks.append(Check(
            name="kept_legacy_schema_empty", table="pg_catalog.pg_namespace", kind="rows",
            description=f"the kept legacy schema(s) {', '.join(kept)} hold no user objects",
            query=sql.SQL("{} n.nspname = ANY({})").format(user_objects, lit(kept)).as_string(conn)))
    if dropped:
        checks.append(Check(
            name="legacy_schemas_dropped", table="pg_catalog.pg_namespace", kind="rows",
            description=f"the legacy schemas {', '.join(dropped)} no longer exist",
            query=sql.SQL("SELECT nspname FROM pg_namespace WHERE nspname = ANY({})").format(
                lit(dropped)).as_string(conn)))
    for name in backups.target_tables(plan):
        base = baseline.get(name)
        if base is not None:
            checks.append(Check(
                name="rows_unchanged", table=name, kind="rows",
                description=f"{name} holds exactly the rows it held when the approved data was backed up "
                            f"({base['rows']} rows, checksum {base['checksum'][:12]})",
                query=sql.SQL(
                    "SELECT x.n AS rows_now, {bn} AS rows_then, x.c AS checksum_now FROM (SELECT count(*) AS n, "
                    "{checksum} AS c FROM ({hashes}) AS y) AS x WHERE x.n <> {bn} OR x.c <> {bc}").format(
                    checksum=CHECKSUM, hashes=row_hashes(_q(name)), bn=lit(base["rows"]),
                    bc=lit(base["checksum"])).as_string(conn)))
        probe = probe_insert(conn, *name.split(".", 1))
        conn.rollback()
        checks.append(Check(
            name="accepts_insert", table=name, kind="rows",
            description=f"{name} accepts a new row with default keys (probe_insert, rolled back: "
                        + (f"got key {probe.key}" if probe.ok and probe.key else "ok" if probe.ok else
                           f"failed: {probe.error}") + ")",
            query=sql.SQL("SELECT {t} AS table_name, {e} AS error WHERE {bad}").format(
                t=lit(name), e=lit(probe.error), bad=sql.SQL("FALSE" if probe.ok else "TRUE")).as_string(conn)))
    return checks


def run_gate_4d(conn, dsn: str, plan: Plan, *, run_id: str, user: str | None):
    from consolidation.checks.gates import run_phase_gate

    base = backups.baseline(conn, plan, run_id)
    if base is None:
        raise CleanupBlocked(f"no baseline of the consolidated tables was recorded by run {run_id} (the backup "
                             "task records it); the post-cleanup gate has nothing to compare with")
    checks = gate_4d_checks(conn, plan, base)
    conn.commit()
    return run_phase_gate(conn, pinned_dsn(dsn), plan, PHASE, checks, run_id=run_id, user=user)
