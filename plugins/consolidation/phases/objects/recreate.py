"""Functions, procedures, types and triggers of the legacy schemas: copied by 4A, dropped by 4D.

What the plan decides for each object is checks.legacy_objects'. Here:

- `ddl(conn, plan)`: what 4A runs (phases.extend.finalize, once every target table exists), as
  (kind, object, statements, ledger details): first the types given `recreate:` (enum, domain,
  standalone composite, built from the catalog: labels, base type, default, NOT NULL, CHECKs,
  attributes), then the functions and procedures given `recreate:` - pg_get_functiondef's text
  with only its header re-pointed (the header the catalog gives for the legacy name, checked, is
  replaced by the target's name; the body is kept verbatim) - then every trigger carried to its
  copy step's target, built from pg_trigger (timing, events, UPDATE OF columns through the step's
  renames, level, transition tables, arguments, disabled state) calling the recreated function.
  The legacy originals are not touched: they stay until 4D. An object already in the target that
  equals the copy is left as it is (4A re-runs converge); one that differs is refused, named.
- `drop_statements(conn, plan, schema)`: what 4D drops after the schema's tables, all RESTRICT:
  routines, then composite types, domains, ranges, enums (`drop:` and `recreate:` entries; a
  relation with `drop:` is dropped with the tables, `dropped_relations`).
The 4A gate's proof that each copy exists is checks.legacy_objects.gate_checks.

Every name reaches SQL through sql.Identifier; definitions come from the catalog.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.checks.legacy_objects import ROUTINE_KINDS, LegacyObject, legacy_objects, problems
from consolidation.core.errors import PlanError
from consolidation.core.plan import Plan, Step

_TYPE_ORDER = ("composite type", "domain", "range type", "enum type")


class ObjectConflict(PlanError):
    """A consolidated schema already holds an object of that name that is not the legacy one's copy."""


def _refuse_problems(objs: list[LegacyObject]) -> None:
    bad = problems(objs)
    if bad:
        raise PlanError("; ".join(o.problem for o in bad))


# ------------------------------------------------------------------ 4A
def ddl(conn, plan: Plan) -> list[tuple[str, str, list[sql.Composable], dict]]:
    objs = legacy_objects(conn, plan)
    _refuse_problems(objs)
    out = []
    recreated = {o.oid: o for o in objs if o.decision == "recreate"}
    for o in sorted((o for o in recreated.values() if o.kind not in ROUTINE_KINDS),
                    key=lambda o: (_TYPE_ORDER.index(o.kind), o.name)):
        stmt = _type_ddl(conn, o.oid, o.kind, sql.Identifier(o.target, o.name))
        if _type_done(conn, o, stmt):
            continue
        out.append(("type", f"{o.target}.{o.name}", [stmt], {"kind": "type", "type_kind": o.kind,
                                                              "copy_of": o.qualified}))
    for o in (o for o in recreated.values() if o.kind in ROUTINE_KINDS):
        text = _function_ddl(conn, o)
        existing = _existing_function_def(conn, o)
        if existing is not None:
            if existing.strip() != text.strip():
                raise ObjectConflict(f"{o.target}.{o.name}({o.detail}) already exists and is not the copy of "
                                     f"{o.display}: rename or remove it, or give {o.qualified} `drop: reason`")
            continue
        out.append(("function", f"{o.target}.{o.name}({o.detail})", [sql.SQL(text)],
                    {"kind": "function", "routine_kind": o.kind, "copy_of": o.display}))
    for o in objs:
        if o.decision == "carried":
            stmts = _trigger_ddl(conn, plan, o, recreated)
            if stmts:
                out.append(("trigger", f"{o.target}.{o.name.split('.', 1)[1]}", stmts,
                            {"kind": "trigger", "copy_of": o.qualified, "table": o.target}))
    return out


def _function_ddl(conn, o: LegacyObject) -> str:
    # the target's header quoted as pg_get_functiondef quotes (quote_ident), so a copy compares equal
    text, header, new_header, prokind = conn.execute("""
        SELECT pg_get_functiondef(p.oid), quote_ident(n.nspname) || '.' || quote_ident(p.proname),
               quote_ident(%s) || '.' || quote_ident(p.proname), p.prokind
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = %s""",
                                                     (o.target, o.oid)).fetchone()
    what = "PROCEDURE" if prokind == "p" else "FUNCTION"
    legacy_head = f"CREATE OR REPLACE {what} {header}("
    if not text.startswith(legacy_head):
        raise PlanError(f"{o.display}: its definition does not start with {legacy_head!r}; recreate it yourself "
                        "and give it `drop: reason`")
    return f"CREATE OR REPLACE {what} {new_header}(" + text[len(legacy_head):]


def _existing_function_def(conn, o: LegacyObject) -> str | None:
    row = conn.execute("""
        SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %s AND p.proname = %s AND pg_get_function_identity_arguments(p.oid) = %s""",
                       (o.target, o.name, o.detail)).fetchone()
    return row[0] if row else None


def _type_ddl(conn, oid: int, kind: str, ident: sql.Composable) -> sql.Composed:
    if kind == "enum type":
        labels = conn.execute("SELECT enumlabel FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder",
                              (oid,)).fetchall()
        return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(ident, sql.SQL(", ").join(sql.Literal(r[0]) for r in labels))
    if kind == "composite type":
        attrs = conn.execute("""
            SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_type t
              JOIN pg_attribute a ON a.attrelid = t.typrelid WHERE t.oid = %s AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum""", (oid,)).fetchall()
        return sql.SQL("CREATE TYPE {} AS ({})").format(ident, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in attrs))
    base, not_null, default = conn.execute(
        "SELECT format_type(typbasetype, typtypmod), typnotnull, typdefault FROM pg_type WHERE oid = %s",
        (oid,)).fetchone()
    checks = conn.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = %s "
                          "AND contype = 'c' ORDER BY conname", (oid,)).fetchall()
    parts = [sql.SQL("CREATE DOMAIN {} AS {}").format(ident, sql.SQL(base))]
    if default is not None:
        parts.append(sql.SQL("DEFAULT {}").format(sql.SQL(default)))
    if not_null:
        parts.append(sql.SQL("NOT NULL"))
    parts += [sql.SQL("CONSTRAINT {} {}").format(sql.Identifier(n), sql.SQL(d)) for n, d in checks]
    return sql.SQL(" ").join(parts)


def _type_done(conn, o: LegacyObject, stmt: sql.Composed) -> bool:
    row = conn.execute("SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                       "WHERE n.nspname = %s AND t.typname = %s", (o.target, o.name)).fetchone()
    if row is None:
        return False
    kind = {"e": "enum type", "d": "domain", "c": "composite type", "r": "range type"}.get(
        conn.execute("SELECT typtype FROM pg_type WHERE oid = %s", (row[0],)).fetchone()[0])
    same = kind == o.kind and _type_ddl(conn, row[0], kind, sql.Identifier(o.target, o.name)).as_string(conn) \
        == stmt.as_string(conn)
    if not same:
        raise ObjectConflict(f"{o.target}.{o.name} already exists and is not the copy of {o.qualified} ({o.kind}): "
                             f"rename or remove it, or give {o.qualified} `drop: reason`")
    return True


_TIMING = ((64, "INSTEAD OF"), (2, "BEFORE"))
_EVENTS = ((4, "INSERT"), (8, "DELETE"), (16, "UPDATE"), (32, "TRUNCATE"))


def _trigger_ddl(conn, plan: Plan, o: LegacyObject, recreated: dict[int, LegacyObject]) -> list[sql.Composable]:
    tgname, tgtype, nargs, args, attrs, old_table, new_table, enabled, fn_schema, fn_name = conn.execute("""
        SELECT tg.tgname, tg.tgtype, tg.tgnargs, tg.tgargs,
               ARRAY(SELECT a.attname::text FROM unnest(tg.tgattr::int2[]) AS k(n)
                       JOIN pg_attribute a ON a.attrelid = tg.tgrelid AND a.attnum = k.n),
               tg.tgoldtable, tg.tgnewtable, tg.tgenabled, n.nspname, p.proname
          FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE tg.oid = %s""", (o.oid,)).fetchone()
    step = plan.step_for_source(o.schema, o.detail)
    target = sql.Identifier(step.target_schema, step.target_table)
    fn = recreated.get(o.function_oid)
    function = sql.Identifier(fn.target, fn.name) if fn else sql.Identifier(fn_schema, fn_name)
    existing = conn.execute("""
        SELECT n.nspname, p.proname, tg.tgtype FROM pg_trigger tg JOIN pg_proc p ON p.oid = tg.tgfoid
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE tg.tgrelid = to_regclass(%s) AND tg.tgname = %s""", (target.as_string(conn), tgname)).fetchone()
    if existing is not None:
        if existing == ((fn.target, fn.name) if fn else (fn_schema, fn_name)) + (tgtype,):
            return []
        raise ObjectConflict(f"{step.target} already has a trigger {tgname} that is not the copy of {o.qualified}: "
                             f"rename or remove it, or give {o.qualified} `drop: reason`")
    timing = next((w for bit, w in _TIMING if tgtype & bit), "AFTER")
    events = []
    for bit, word in _EVENTS:
        if tgtype & bit:
            if word == "UPDATE" and attrs:
                events.append(sql.SQL("UPDATE OF {}").format(sql.SQL(", ").join(
                    sql.Identifier(_target_column(step, a)) for a in attrs)))
            else:
                events.append(sql.SQL(word))
    referencing = []
    if old_table:
        referencing.append(sql.SQL("OLD TABLE AS {}").format(sql.Identifier(old_table)))
    if new_table:
        referencing.append(sql.SQL("NEW TABLE AS {}").format(sql.Identifier(new_table)))
    values = [a.decode() for a in bytes(args).split(b"\x00")[:nargs]] if nargs else []
    stmts: list[sql.Composable] = [sql.SQL(
        "CREATE TRIGGER {name} {timing} {events} ON {table}{ref} FOR EACH {level} EXECUTE FUNCTION {fn}({args})").format(
        name=sql.Identifier(tgname), timing=sql.SQL(timing), events=sql.SQL(" OR ").join(events), table=target,
        ref=sql.SQL(" REFERENCING {}").format(sql.SQL(" ").join(referencing)) if referencing else sql.SQL(""),
        level=sql.SQL("ROW" if tgtype & 1 else "STATEMENT"), fn=function,
        args=sql.SQL(", ").join(sql.Literal(v) for v in values))]
    if enabled == "D":
        stmts.append(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(target, sql.Identifier(tgname)))
    return stmts


def _target_column(step: Step, source_column: str) -> str:
    """The target column a copy step fills from `source_column` (its own name unless mapped)."""
    return next((t for t, m in step.columns.items() if m.source == source_column), source_column)


# ------------------------------------------------------------------ 4D
def dropped_relations(plan: Plan, schema: str) -> list[str]:
    """The relations of `schema` the plan's `objects:` drops (schema.name; tables, views, sequences)."""
    return [o.qualified for o in plan.objects if o.schema == schema and o.drop is not None and not o.is_trigger]


def drop_statements(conn, plan: Plan, schema: str) -> list[tuple[str, sql.Composed]]:
    """(object, DROP ... RESTRICT) for the routines and types of `schema` the plan drops or recreated,
    routines first, in the order their dependencies allow; relations are dropped with the tables."""
    objs = [o for o in legacy_objects(conn, plan, [schema]) if o.decision in ("drop", "recreate")
            and o.kind not in ("trigger",) and (o.kind in ROUTINE_KINDS or o.kind in _TYPE_ORDER)]
    out = []
    for o in sorted(objs, key=lambda o: (-1 if o.kind in ROUTINE_KINDS else _TYPE_ORDER.index(o.kind), o.name)):
        ident = sql.Identifier(o.schema, o.name)
        if o.kind in ROUTINE_KINDS:
            what = {"procedure": "PROCEDURE", "aggregate": "AGGREGATE"}.get(o.kind, "FUNCTION")
            # identity arguments as the catalog formats them (types quoted by format_type)
            stmt = sql.SQL("DROP {} {}({}) RESTRICT").format(sql.SQL(what), ident, sql.SQL(o.detail))
        else:
            stmt = sql.SQL("DROP {} {} RESTRICT").format(sql.SQL("DOMAIN" if o.kind == "domain" else "TYPE"), ident)
        out.append((o.display, stmt))
    return out
