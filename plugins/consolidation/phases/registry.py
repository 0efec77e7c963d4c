"""The table registry: where an application service finds a table after the consolidation.

One row per migrated legacy object, in the plan's tool schema (`plan.tool_table("registry")`,
operational.consolidation_registry), written by Phase 4C and read by services - from the
database with `resolve(conn_or_dsn, "tracking.active_strategy_configs")`, or from the JSON
export with `resolve_file(path, name)` (no database needed):

    logical_name     the legacy qualified name ("tracking.active_strategy_configs"); legacy
                     names are unique, so logical names never collide
    legacy_*         schema, table and kind (table | view) it replaces
    physical_*       the consolidated relation that now holds its rows
    action, plan_step
    filter_*         for a target fed by several sources, which of its rows are the legacy
                     table's: `source_table = 'tracking.active_strategy_configs'` for a union
                     (the provenance column), `<column> IS NOT NULL` for a merge (an enriched
                     column only this source fills: see actions/merge.py, merge_filter)
    columns          the column map, in legacy column order: [{name, column, type,
                     physical_type[, default]}] = legacy name, consolidated column, legacy type,
                     consolidated type (and the plan's default for NULL sources, if any)
    status           'consolidated'; 'rolled_back' after a rollback: the entry then points at
                     the legacy table again (restored, or never dropped), legacy columns as they are
    set_by_run, set_by_user, set_at: the run that last CHANGED the entry (re-running 4C with
                     the same plan leaves entries untouched: the upsert is idempotent)

Column renames live in the registry, not in the queries: `Resolved.relation()` is a
subquery presenting the legacy shape - legacy column names, legacy types (cast back only
where the type changed), only the legacy table's rows - so a query written against the
legacy table runs unchanged against it (consolidation.phases.smoke renders queries that way).
Which columns are exposed, and why:

* copy / union / snapshot: every migrated column (plan `ignore`d columns are not); a union
  source's primary key is its provenance key (text), cast back to the legacy type;
* merge: the business key and the `enrich` columns only - the columns 4B proves equal to
  the source. Other mapped columns (e.g. dim_teams.full_name -> teams.name) keep the
  consolidated table's value where they differ (recorded as conflicts), so they are not
  offered under the legacy name; a service reads them from the physical table;
* recreated views: every column, same names;
* columns the plan fills with a `default` for NULL sources (splits.games.source ->
  data_source, default 'splits') show the default where the legacy row had NULL; the
  entry records `default` so the 4C gate compares the legacy side with it applied.

Services run as the roles that read the legacy tables: 4C grants those roles SELECT on the
registry and, where missing, on each entry's consolidated table (additive; listed in the
ledger row of the group).

The 4C gate (registry_checks) proves every claim above against the data: each migrated
step has its entry, no entry points into a legacy schema, every entry resolves (relation,
columns, filter column), every legacy reader can read the registry and the entry's table,
and each entry returns exactly the legacy table's rows.
Nothing here returns a legacy schema: the resolvers refuse an entry pointing into one.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.actions import action_for
from consolidation.actions.base import ActionError
from consolidation.core import config, ledger
from consolidation.core.files import atomic_write
from consolidation.core.ledger import tool_ident
from consolidation.core.plan import Plan, Step
from consolidation.core.catalog import QualifiedName, relation_exists

PHASE = "4C"
CONSOLIDATED = "consolidated"
ROLLED_BACK = "rolled_back"
FORMAT = "consolidation-registry/1"
EXPORT_DIR_ENV = "CONSOLIDATION_REGISTRY_DIR"
EXPORT_FILE = "registry.json"
_TYPE = re.compile(r'^[A-Za-z_][A-Za-z0-9_ ]*(\.[A-Za-z_][A-Za-z0-9_ ]*)?(\(\s*\d+\s*(,\s*\d+\s*)?\))?( ?\[\])*$')


class RegistryError(Refusal):
    """The registry cannot be written or read as asked; the message names the entry and the fix."""


class NotRegistered(LookupError):
    """No usable registry entry for a name."""


# ----------------------------------------------------------------------- resolving
@dataclass(frozen=True)
class Column:
    name: str  # the legacy column name services use
    column: str  # the consolidated column holding it
    type: str  # the legacy type (what services get)
    physical_type: str
    default: Any = None  # the plan's default for NULL sources, if any


INSERTED = "inserted"  # filter op: the rows this step inserted into a target that held others before
INSERTED_KEYS = "inserted_keys"  # a view of the undo log's insert keys, readable by services (not the before-images)


@dataclass(frozen=True)
class Filter:
    column: str  # for INSERTED: the target's key columns, comma-separated
    op: str  # '=' | 'is not null' | 'inserted'
    value: str | None = None  # for INSERTED: {"log": [schema, table] of the undo log, "step": name} as JSON

    def condition(self, alias: str = "t") -> sql.Composed:
        if self.op == INSERTED:
            # a copy into a pre-existing target: 4B recorded each inserted row's key in the undo log
            where = json.loads(self.value)
            key = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(k), sql.Identifier(alias, k))
                                     for k in self.column.split(","))
            return sql.SQL("EXISTS (SELECT 1 FROM {log} AS u WHERE u.step = {step} "
                           "AND u.key = jsonb_build_object({key}))").format(
                log=sql.Identifier(*where["log"]), step=sql.Literal(where["step"]), key=key)
        col = sql.Identifier(alias, self.column)
        if self.op == "=":
            return sql.SQL("{} = {}").format(col, sql.Literal(self.value))
        return sql.SQL("{} IS NOT NULL").format(col)

    def text(self) -> str:
        if self.op == INSERTED:
            return f"rows inserted by step {json.loads(self.value)['step']} (keys in {'.'.join(json.loads(self.value)['log'])})"
        if self.op == "=":
            return f"{self.column} = {self.value!r}"
        return f"{self.column} IS NOT NULL"


@dataclass(frozen=True)
class Resolved(QualifiedName):
    """Where a legacy table's rows live now, and how to read them under their legacy shape."""

    logical_name: str
    schema: str
    table: str
    filter: Filter | None
    columns: tuple[Column, ...]
    status: str = CONSOLIDATED
    set_by_run: str | None = None
    set_at: str | None = None

    def physical(self, legacy_column: str) -> str:
        """The consolidated column holding a legacy column."""
        for c in self.columns:
            if c.name == legacy_column:
                return c.column
        raise NotRegistered(f"{self.logical_name} has no column {legacy_column!r} in the registry "
                            f"(it maps {', '.join(c.name for c in self.columns)})")

    def relation(self) -> sql.Composed:
        """`(SELECT ... FROM physical WHERE filter)`: the legacy table's rows, names and types;
        use it where the legacy table was named (give it an alias)."""
        cols = []
        for c in self.columns:
            expr: sql.Composable = sql.Identifier("t", c.column)
            if c.type != c.physical_type:
                expr = sql.SQL("CAST({} AS {})").format(expr, sql.SQL(c.type))
            cols.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(c.name)))
        q = sql.SQL("SELECT {} FROM {} AS t").format(sql.SQL(", ").join(cols), self.ident)
        if self.filter is not None:
            q = sql.SQL("{} WHERE {}").format(q, self.filter.condition("t"))
        return sql.SQL("({})").format(q)


def _resolved(entry: dict, legacy_schemas: set[str], where: str) -> Resolved:
    name = entry.get("logical_name")
    schema, table = entry.get("physical_schema"), entry.get("physical_table")
    if not schema or not table:
        raise NotRegistered(f"{name}: the registry entry in {where} has no physical table; re-run phase4c_service_updates")
    if schema in legacy_schemas and entry.get("status") != ROLLED_BACK:
        raise NotRegistered(f"{name}: the registry entry in {where} points into legacy schema {schema} "
                            f"({schema}.{table}); re-run phase4c_service_updates to point it at its consolidated home")
    columns = []
    for c in entry.get("columns") or []:
        for key in ("type", "physical_type"):
            if not _TYPE.match(str(c.get(key, ""))):
                raise NotRegistered(f"{name}: column {c.get('name')!r} has an unreadable {key} {c.get(key)!r} in {where}")
        columns.append(Column(c["name"], c["column"], c["type"], c["physical_type"], c.get("default")))
    if not columns:
        raise NotRegistered(f"{name}: the registry entry in {where} maps no column; re-run phase4c_service_updates")
    filt = None
    if entry.get("filter_column"):
        filt = Filter(entry["filter_column"], entry["filter_op"], entry.get("filter_value"))
    return Resolved(name, schema, table, filt, tuple(columns), entry.get("status") or CONSOLIDATED,
                    entry.get("set_by_run"), entry.get("set_at"))


def resolve(source, name: str, *, plan: Plan | None = None) -> Resolved:
    """Where `name` (a legacy "schema.table") lives now, read from the registry table.

    `source` is an open psycopg connection (nothing is committed) or a DSN; a pathlib.Path
    reads an exported JSON file instead (see resolve_file). The registry's location comes
    from the plan (default: the bundled plan). Raises NotRegistered when the name has no
    entry, or its entry points into a legacy schema.
    """
    if isinstance(source, Path):
        return resolve_file(source, name)
    if plan is None:
        from consolidation.core.plan import load_plan

        plan = load_plan()
    reg = tool_ident(plan, "registry")
    where = ".".join(plan.tool_table("registry"))
    query = sql.SQL("SELECT {e}, ARRAY(SELECT DISTINCT legacy_schema FROM {reg}) FROM {reg} AS r "
                    "WHERE r.logical_name = %s").format(e=entry_json("r"), reg=reg)

    def _read(conn):
        if not _exists(conn, plan):
            raise NotRegistered(f"{name}: no registry in this database ({where} missing); "
                                "run phase4c_service_updates first")
        return conn.execute(query, (name,)).fetchone()

    if isinstance(source, str):
        from consolidation.core import db

        with db.connect(source, autocommit=True) as conn:
            row = _read(conn)
    else:
        row = _read(source)
    if row is None:
        raise NotRegistered(f"{name} is not in the registry {where}; it is not a migrated legacy table "
                            "(check the plan's steps) or phase4c_service_updates has not run")
    entry, legacy = row
    return _resolved(entry, set(legacy) | set(plan.legacy_schemas), where)


def resolve_file(path: str | Path | None, name: str) -> Resolved:
    """Like resolve(), from a JSON export (default: export_path()); no database needed."""
    path = Path(path) if path else export_path()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotRegistered(f"{name}: registry file {path} does not exist; run phase4c_service_updates "
                            "or `python -m consolidation registry export`") from None
    except ValueError as exc:
        raise NotRegistered(f"{name}: registry file {path} is not valid JSON ({exc}); export it again") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise NotRegistered(f"{name}: {path} is not a registry export ({FORMAT}); export it again")
    entries = doc.get("entries") or []
    legacy = set(doc.get("legacy_schemas") or []) | {e.get("legacy_schema") for e in entries}
    for entry in entries:
        if entry.get("logical_name") == name:
            return _resolved(entry, legacy, str(path))
    raise NotRegistered(f"{name} is not in the registry file {path}; it is not a migrated legacy table "
                        "(check the plan's steps) or the file predates phase4c_service_updates")


# ----------------------------------------------------------------------- the table
def ensure_registry(conn, plan: Plan) -> list[str]:
    """Create the registry table if missing and let the legacy tables' readers read it
    (additive, idempotent); returns those roles."""
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(plan.tool_schema)))
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {reg} (
            logical_name    text PRIMARY KEY,
            legacy_schema   text NOT NULL,
            legacy_table    text NOT NULL,
            legacy_kind     text NOT NULL,
            physical_schema text NOT NULL,
            physical_table  text NOT NULL,
            action          text NOT NULL,
            plan_step       text NOT NULL,
            filter_column   text,
            filter_op       text CONSTRAINT {op_check} CHECK (filter_op IN ('=', 'is not null', 'inserted')),
            filter_value    text,
            columns         jsonb NOT NULL,
            status          text NOT NULL,
            set_by_run      text NOT NULL,
            set_by_user     text NOT NULL,
            set_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
            CHECK ((filter_column IS NULL) = (filter_op IS NULL)),
            CHECK (filter_op IS DISTINCT FROM '=' OR filter_value IS NOT NULL)
        )""").format(reg=tool_ident(plan, "registry"), op_check=sql.Identifier(_op_check(plan))))
    _allow_inserted_filter(conn, plan)
    return grant_readers(conn, plan)


def _op_check(plan: Plan) -> str:
    return f"{plan.tool_table('registry')[1]}_filter_op_check"  # PostgreSQL's own name for it, kept


def _allow_inserted_filter(conn, plan: Plan) -> None:
    """A registry made by an earlier version refuses the 'inserted' filter op: widen its CHECK."""
    reg = tool_ident(plan, "registry")
    current = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                           "AND conname = %s", (reg.as_string(conn), _op_check(plan))).fetchone()
    if current is not None and "inserted" not in current[0]:
        conn.execute(sql.SQL("ALTER TABLE {reg} DROP CONSTRAINT {c}, ADD CONSTRAINT {c} "
                             "CHECK (filter_op IN ('=', 'is not null', 'inserted'))").format(
            reg=reg, c=sql.Identifier(_op_check(plan))))


def grant_readers(conn, plan: Plan) -> list[str]:
    """Let every role that may read a legacy table read the registry: services run as those
    roles (carry_read_grants does the same for each entry's consolidated table). Idempotent."""
    roles = [r[0] for r in conn.execute(
        "SELECT DISTINCT r.rolname FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace CROSS JOIN LATERAL aclexplode(c.relacl) AS a "
        "JOIN pg_roles AS r ON r.oid = a.grantee "
        "WHERE n.nspname = ANY(%s) AND a.privilege_type = 'SELECT' AND a.grantee <> c.relowner "
        "ORDER BY 1", (list(plan.legacy_schemas),)).fetchall()]
    keys = relation_exists(conn, *plan.tool_table("undo"))
    if keys:  # what an 'inserted' filter reads: step and key of each inserted row, nothing else of the undo log
        conn.execute(sql.SQL("CREATE OR REPLACE VIEW {v} AS SELECT step, key FROM {u} WHERE op = 'insert'").format(
            v=tool_ident(plan, INSERTED_KEYS), u=tool_ident(plan, "undo")))
    for role in roles:
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(plan.tool_schema), ident))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tool_ident(plan, "registry"), ident))
        if keys:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(tool_ident(plan, INSERTED_KEYS), ident))
    return roles


def _exists(conn, plan: Plan) -> bool:
    return relation_exists(conn, *plan.tool_table("registry"))


def target_name(alias: str) -> sql.Composed:
    """The qualified name (quoted as needed) of the relation an entry (aliased `alias`) points at."""
    return sql.SQL("quote_ident({a}.{s}) || '.' || quote_ident({a}.{t})").format(
        a=sql.Identifier(alias), s=sql.Identifier(TARGET_COLUMNS[0]), t=sql.Identifier(TARGET_COLUMNS[1]))


def entry_json(alias: str) -> sql.Composed:
    """An entry as jsonb, set_at in UTC: the same text whatever the session's TimeZone."""
    a = sql.Identifier(alias)
    return sql.SQL("(to_jsonb({a}) || jsonb_build_object('set_at', "
                   "to_char({a}.set_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')))").format(a=a)


def entries(conn, plan: Plan) -> list[dict]:
    """Every registry entry (as exported), by logical name; [] when there is no registry."""
    if not _exists(conn, plan):
        return []
    row = conn.execute(sql.SQL("SELECT coalesce(jsonb_agg({e} ORDER BY r.logical_name), '[]'::jsonb) "
                               "FROM {reg} AS r").format(e=entry_json("r"), reg=tool_ident(plan, "registry"))).fetchone()
    return row[0]


def planned_entries(conn, plan: Plan, legacy_schema: str | None = None, *, catalog=None, specs=None) -> list[dict]:
    """The entries the plan and the live catalog call for (every non-delete step, or one schema's)."""
    if specs is None:
        from consolidation.core.session import load_specs

        catalog, specs = load_specs(conn, plan)
    out = []
    for step in plan.migrating_steps():
        if legacy_schema is None or step.source_schema == legacy_schema:
            out.append(_entry_for(conn, plan, step, specs[step.target], catalog))
    return out


def _entry_for(conn, plan: Plan, step: Step, spec, catalog) -> dict:
    source = catalog.relation(step.source_schema, step.source_table)
    if source is None:
        raise RegistryError(f"{step.label}: {step.source} is gone, so its registry entry cannot be derived; "
                            "the registry must be written before Phase 4D drops the legacy tables")
    target = catalog.relation(step.target_schema, step.target_table)
    if target is None:
        raise RegistryError(f"{step.label}: target {step.target} does not exist; run phase4a_schema_extension "
                            "and phase4b_data_migration first")
    # The step's action says which columns are offered under their legacy names, and which
    # rows of a shared target are this step's (a union's provenance, a merge's enriched column).
    action = action_for(step)
    try:
        filt = action.registry_filter(conn, step, spec, source)
        by_legacy: dict[str, tuple[str, Any]] = action.registry_columns(step, spec, source)
    except ActionError as exc:
        raise RegistryError(str(exc)) from None
    if filt is None and spec.exists_before_plan and spec.key and relation_exists(conn, *plan.tool_table(INSERTED_KEYS)):
        # the target holds rows of its own besides the migrated ones: this step's rows are the ones it inserted
        candidate = Filter(",".join(spec.key), INSERTED,
                           json.dumps({"log": list(plan.tool_table(INSERTED_KEYS)), "step": step.name}))
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE NOT {})").format(
                spec.ident, candidate.condition("t"))).fetchone()[0]:
            filt = (candidate.column, candidate.op, candidate.value)
    columns = []
    for col in sorted(source.columns.values(), key=lambda c: c.position):
        if col.name not in by_legacy:
            continue
        physical, default = by_legacy[col.name]
        tcol = target.columns.get(physical)
        if tcol is None:
            raise RegistryError(f"{step.label}: {step.target} has no column {physical} (for {step.source}.{col.name}); "
                                "re-run phase4a_schema_extension")
        c = {"name": col.name, "column": physical, "type": col.type, "physical_type": tcol.type}
        if default is not None:
            c["default"] = default
        columns.append(c)
    return {
        "logical_name": step.source, "legacy_schema": step.source_schema, "legacy_table": step.source_table,
        "legacy_kind": step.object, "physical_schema": step.target_schema, "physical_table": step.target_table,
        "action": step.action, "plan_step": step.name,
        "filter_column": filt[0] if filt else None, "filter_op": filt[1] if filt else None,
        "filter_value": filt[2] if filt else None, "columns": columns, "status": CONSOLIDATED,
    }


_UPSERT_COLUMNS = ("logical_name", "legacy_schema", "legacy_table", "legacy_kind", "physical_schema",
                   "physical_table", "action", "plan_step", "filter_column", "filter_op", "filter_value",
                   "columns", "status")
# The registry's columns (ensure_registry), and the ones that name an entry's consolidated
# relation, hold its column map ([{name, column, ...}] as jsonb) and its filter column: what
# readers of the table rely on (phases.nightly_checks checks them).
COLUMNS = _UPSERT_COLUMNS + ("set_by_run", "set_by_user", "set_at")
TARGET_COLUMNS = ("physical_schema", "physical_table")
COLUMN_MAP = "columns"
FILTER_COLUMN = "filter_column"


def upsert(conn, plan: Plan, rows: list[dict], *, run_id: str, user: str | None) -> list[str]:
    """Insert or update entries in one statement; an unchanged entry is left alone
    (it keeps the run that set it). Returns the logical names inserted or changed."""
    if not rows:
        return []
    reg = tool_ident(plan, "registry")
    cols = [sql.Identifier(c) for c in _UPSERT_COLUMNS]
    record = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL("jsonb" if c == "columns" else "text"))
                                for c in _UPSERT_COLUMNS)
    changed = sql.SQL("({}) IS DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.Identifier("r", c) for c in _UPSERT_COLUMNS[1:]),
        sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in _UPSERT_COLUMNS[1:]))
    q = sql.SQL("""
        INSERT INTO {reg} AS r ({cols}, set_by_run, set_by_user, set_at)
        SELECT {cols}, %(run)s, %(user)s, clock_timestamp()
          FROM jsonb_to_recordset(%(rows)s::jsonb) AS e({record})
        ON CONFLICT (logical_name) DO UPDATE SET {sets}, set_by_run = EXCLUDED.set_by_run,
               set_by_user = EXCLUDED.set_by_user, set_at = EXCLUDED.set_at
         WHERE {changed}
        RETURNING r.logical_name""").format(
        reg=reg, cols=sql.SQL(", ").join(cols), record=record, changed=changed,
        sets=sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(c, c) for c in cols[1:]))
    done = conn.execute(q, {"run": run_id, "user": user or ledger.operator_name(),
                            "rows": json.dumps(rows, default=str)}).fetchall()
    return sorted(r[0] for r in done)


def mark_rolled_back(conn, plan: Plan, *, run_id: str, user: str | None) -> int:
    """After a rollback (in its transaction): every entry points at its legacy table again, under
    its legacy columns, no filter, status rolled_back; returns how many entries changed. A later
    4C run points them at their consolidated homes again."""
    if not _exists(conn, plan):
        return 0
    cur = conn.execute(sql.SQL("""
        UPDATE {reg} AS r SET status = {rb}, physical_schema = r.legacy_schema, physical_table = r.legacy_table,
               filter_column = NULL, filter_op = NULL, filter_value = NULL,
               columns = (SELECT coalesce(jsonb_agg((c - 'default') || jsonb_build_object(
                                     'column', c->>'name', 'physical_type', c->>'type') ORDER BY n), '[]'::jsonb)
                            FROM jsonb_array_elements(r.columns) WITH ORDINALITY AS x(c, n)),
               set_by_run = %s, set_by_user = %s, set_at = clock_timestamp()
         WHERE r.status IS DISTINCT FROM {rb}""").format(reg=tool_ident(plan, "registry"), rb=sql.Literal(ROLLED_BACK)),
        (run_id, user or ledger.operator_name()))
    return cur.rowcount


def register_group(conn, plan: Plan, legacy_schema: str, *, run_id: str, user: str | None) -> list[str]:
    """Point every migrated table of one legacy schema at its consolidated home (one TaskGroup).

    One transaction: the entries and the ledger row commit together. Returns one line per entry.
    """
    from consolidation.core.session import load_specs

    steps = [s for s in plan.migrating_steps() if s.source_schema == legacy_schema]
    if not steps:
        return []
    ensure_registry(conn, plan)
    conn.commit()
    entry = ledger.open_entry(conn, plan, run_id=run_id, phase=PHASE, kind="step", name=f"register__{legacy_schema}",
                              source=legacy_schema, target=".".join(plan.tool_table("registry")), triggered_by=user)
    conn.commit()
    try:
        catalog, specs = load_specs(conn, plan)
        rows = planned_entries(conn, plan, legacy_schema, catalog=catalog, specs=specs)
        changed = upsert(conn, plan, rows, run_id=run_id, user=user)
        granted = carry_read_grants(conn, rows)
        lines = [f"{r['logical_name']} -> {r['physical_schema']}.{r['physical_table']}"
                 + (f" ({_filter_text(r)})" if r["filter_column"] else "")
                 + ("" if r["logical_name"] in changed else " (unchanged)") for r in rows]
        lines += [f"granted {g['role']} SELECT on {g['target']} (it reads {g['logical_name']})" for g in granted]
        entry.finish(conn, ledger.SUCCESS, f"{len(rows)} entries, {len(changed)} set or changed, "
                     f"{len(granted)} read grants carried over",
                     details={"entries": [r["logical_name"] for r in rows], "changed": changed, "granted": granted})
        conn.commit()
        return lines
    except Exception as exc:
        conn.rollback()
        entry.finish(conn, ledger.FAILED, f"{type(exc).__name__}: {exc}")
        conn.commit()
        raise


def missing_read_grants(entries_from: sql.Composable) -> sql.Composed:
    """Roles that may SELECT a legacy table but not its registered home (or its schema).

    `entries_from` is a FROM item aliased e with logical_name, legacy_schema, legacy_table,
    physical_schema, physical_table. Columns: logical_name, role, target, missing.
    """
    return sql.SQL("""
        SELECT e.logical_name, ro.rolname AS role, e.physical_schema || '.' || e.physical_table AS target,
               CASE WHEN NOT has_schema_privilege(ro.oid, e.physical_schema, 'USAGE') THEN 'USAGE on schema'
                    ELSE 'SELECT' END AS missing
          FROM {src}
          JOIN pg_class AS c ON c.oid = to_regclass(quote_ident(e.legacy_schema) || '.' || quote_ident(e.legacy_table))
         CROSS JOIN LATERAL aclexplode(c.relacl) AS a
          JOIN pg_roles AS ro ON ro.oid = a.grantee
         WHERE a.privilege_type = 'SELECT' AND a.grantee <> c.relowner
           AND to_regclass(quote_ident(e.physical_schema) || '.' || quote_ident(e.physical_table)) IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = e.physical_schema)
           AND NOT (has_schema_privilege(ro.oid, e.physical_schema, 'USAGE') AND has_table_privilege(ro.oid,
                    to_regclass(quote_ident(e.physical_schema) || '.' || quote_ident(e.physical_table)), 'SELECT'))""").format(
        src=entries_from)


def carry_read_grants(conn, rows: list[dict]) -> list[dict]:
    """A service that could read a legacy table can read its consolidated home: grant SELECT
    (and USAGE on the schema) where missing. Additive; returns what was granted."""
    src = sql.SQL("jsonb_to_recordset(%s::jsonb) AS e(logical_name text, legacy_schema text, legacy_table text, "
                  "physical_schema text, physical_table text)")
    cur = conn.execute(missing_read_grants(src), (json.dumps(rows, default=str),))
    granted = [dict(zip([d.name for d in cur.description], r)) for r in cur.fetchall()]
    for g in granted:
        schema, table = next((r["physical_schema"], r["physical_table"]) for r in rows
                             if r["logical_name"] == g["logical_name"])
        role = sql.Identifier(g["role"])
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(schema, table), role))
    return granted


def _filter_text(e: dict) -> str:
    return Filter(e["filter_column"], e["filter_op"], e.get("filter_value")).text()


# ----------------------------------------------------------------------- the export
def export_path(folder: str | Path | None = None) -> Path:
    """Where the JSON export goes: `folder`, else $CONSOLIDATION_REGISTRY_DIR, else state_dir()/registry."""
    base = Path(folder) if folder else Path(os.environ.get(EXPORT_DIR_ENV) or config.state_dir() / "registry")
    return base / EXPORT_FILE


def export(conn, plan: Plan, folder: str | Path | None = None, *, run_id: str, user: str | None) -> Path:
    """Write the registry as JSON (atomically) for services that read files; ledger row kind 'report'."""
    import hashlib

    if not _exists(conn, plan):
        raise RegistryError(f"no registry in {plan.tool_schema}; run phase4c_service_updates first")
    path = export_path(folder)
    doc = {
        "format": FORMAT,
        "registry": ".".join(plan.tool_table("registry")),
        "plan": plan.name,
        "plan_sha256": plan.sha256,
        "legacy_schemas": sorted(plan.legacy_schemas),
        "exported_by_run": run_id,
        "exported_by": user or ledger.operator_name(),
        "entries": entries(conn, plan),
    }
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    ledger.record(conn, plan, status=ledger.SUCCESS, message=f"{len(doc['entries'])} entries -> {path}",
                  run_id=run_id, phase=PHASE, kind="report", name="registry_export",
                  target=str(path), triggered_by=user,
                  details={"path": str(path), "entries": len(doc["entries"]),
                           "sha256": hashlib.sha256(text.encode()).hexdigest()})
    conn.commit()
    return path


def exported_in_run(conn, plan: Plan, run_id: str | None) -> Path | None:
    """The file the export of run `run_id` (None: of any run, the latest) wrote, from the ledger."""
    if not ledger.tool_tables_exist(conn, plan):
        return None
    row = conn.execute(sql.SQL(
        "SELECT details->>'path' FROM {} WHERE phase = %s AND kind = 'report' AND name = 'registry_export' "
        "AND run_id = coalesce(%s, run_id) AND status = 'success' ORDER BY id DESC LIMIT 1").format(
        tool_ident(plan, "ledger")), (PHASE, run_id)).fetchone()
    return Path(row[0]) if row else None
