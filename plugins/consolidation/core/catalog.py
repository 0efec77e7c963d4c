"""Read the live catalog: relations, columns, keys, dependencies, grants, row counts;
and the names, existence and row checksums of relations.

Everything comes from pg_catalog in a handful of queries per call; row counts are
exact (count(*)), since the plan is judged against the data, not estimates.

The row checksum of a relation is `count:sum` of a 64-bit hash of each row's text
(`hashtextextended(ROW(t.*)::text, 0) AS h`, summed as numeric): equal multisets of rows
give equal checksums, whatever their physical order, and it is one order-free scan (no
sort, no string built, constant memory, no size limit: the former md5 over the sorted
row md5s failed past 33,554,431 rows). Sums add up, so the checksum of a table is the sum
of its segments' (checks.segments bisects by key hash to name differing rows). Backups,
the 4B reconciliation, the approval fingerprint and the 4D gate all take it from here,
so the values they compare (and an approval stored in a database is bound to) are one
computation. The text of a value depends on the session's output settings: callers that
compare checksums across sessions pin them (phases.backup.pin_output).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Iterable

import psycopg
from psycopg import sql

KINDS = {"r": "table", "p": "table", "v": "view", "m": "matview", "S": "sequence", "f": "foreign table"}


@dataclass
class Column:
    name: str
    type: str
    not_null: bool
    default: str | None
    position: int
    identity: str = ""  # 'a' always, 'd' by default, '' none


@dataclass
class Relation:
    schema: str
    name: str
    kind: str
    columns: dict[str, Column] = field(default_factory=dict)
    primary_key: list[str] = field(default_factory=list)
    rows: int | None = None
    owned_by: str | None = None  # sequences: "schema.table.column"

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Dependency:
    kind: str  # foreign_key | view | sequence_owner | default_sequence
    dependent: str  # schema.object that would break
    referenced: str  # schema.object it needs
    detail: str = ""

    @property
    def crosses_schemas(self) -> bool:
        return self.dependent.split(".")[0] != self.referenced.split(".")[0]


@dataclass
class Catalog:
    schemas: list[str]
    relations: dict[tuple[str, str], Relation] = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    dependencies: list[Dependency] = field(default_factory=list)
    grants: dict[str, list[str]] = field(default_factory=dict)  # relation -> ["role:PRIV", ...]
    existing_schemas: set[str] = field(default_factory=set)
    _details: dict | None = field(default=None, repr=False, compare=False)

    def relation(self, schema: str, name: str) -> Relation | None:
        return self.relations.get((schema, name))

    def table_details(self, conn, schema: str, table: str) -> tuple[list[Constraint], list[Index]]:
        """table_details() of a relation of the catalog's schemas, read for all of them at once on
        first use (deriving the specs asked once per step source: thousands of queries a phase)."""
        if schema not in self.schemas:
            return table_details(conn, schema, table)
        if self._details is None:
            self._details = _details(conn, "n.nspname = ANY(%(schemas)s)", {"schemas": list(self.schemas)})
        return self._details.get((schema, table), ([], []))

    def columns(self, schema: str, name: str) -> dict[str, str] | None:
        rel = self.relation(schema, name)
        return None if rel is None else {c.name: c.type for c in rel.columns.values()}

    def primary_key(self, schema: str, name: str) -> list[str] | None:
        rel = self.relation(schema, name)
        return None if rel is None else rel.primary_key

    def in_schema(self, schema: str, kinds: Iterable[str] | None = None) -> list[Relation]:
        kinds = set(kinds) if kinds else None
        return sorted(
            (r for (s, _), r in self.relations.items() if s == schema and (kinds is None or r.kind in kinds)),
            key=lambda r: r.name,
        )

    def to_dict(self) -> dict:
        return {
            "schemas": self.schemas,
            "relations": [asdict(r) for r in self.relations.values()],
            "functions": self.functions,
            "types": self.types,
            "dependencies": [asdict(d) for d in self.dependencies],
            "grants": self.grants,
        }


def introspect(conn, schemas: Iterable[str], *, count_rows: bool = True) -> Catalog:
    """Catalog of the given schemas (missing schemas are simply empty)."""
    schemas = list(dict.fromkeys(schemas))
    cat = read_catalog(conn, lambda: _structure(conn, schemas))
    if count_rows:
        for rel in cat.relations.values():
            if rel.kind in ("table", "view", "matview"):
                rel.rows = count_rows_of(conn, rel.schema, rel.name)
    return cat


# pg_get_indexdef(), pg_get_constraintdef() and their kin look objects up in the catalog as
# it is now, not as the statement's snapshot saw it: when a concurrent step drops an index or
# foreign key and re-creates it (phases.load.bulk defers them) and commits mid-statement, they
# return NULL or raise "cache lookup failed". A new statement sees the new objects, so
# reading again converges.
READ_ATTEMPTS = 50


class _ChangedUnderfoot(Exception):
    """A definition function found no object where the statement's snapshot had one."""


def read_catalog(conn, read):
    """read() (catalog queries on conn) in a savepoint, again while concurrent DDL makes the
    definition functions miss an object the statement's snapshot still saw."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            with conn.transaction():
                return read()
        except (psycopg.errors.InternalError_, _ChangedUnderfoot) as exc:
            if isinstance(exc, psycopg.errors.InternalError_) and "cache lookup failed" not in str(exc):
                raise
            if attempt == READ_ATTEMPTS:
                raise psycopg.errors.ObjectInUse(
                    f"the catalog kept changing while it was read ({attempt} attempts; last: {str(exc) or 'a definition vanished'}); "
                    "run again when the concurrent DDL is done") from None
            time.sleep(min(0.002 * attempt, 0.05))
    raise AssertionError("unreachable")


def _defined(text: str | None) -> str:
    if text is None:
        raise _ChangedUnderfoot()
    return text


def _structure(conn, schemas: list[str]) -> Catalog:
    cat = Catalog(schemas=schemas)
    cur = conn.cursor()
    cur.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (schemas,))
    cat.existing_schemas = {r[0] for r in cur.fetchall()}

    cur.execute(
        """
        SELECT n.nspname, c.relname, c.relkind
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = ANY(%s) AND c.relkind IN ('r','p','v','m','S','f')
           AND NOT c.relispartition
        """,
        (schemas,),
    )
    for schema, name, kind in cur.fetchall():
        cat.relations[(schema, name)] = Relation(schema, name, KINDS[kind])

    cur.execute(
        """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attnum, a.attidentity
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = ANY(%s) AND c.relkind IN ('r','p','v','m','f')
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY a.attnum
        """,
        (schemas,),
    )
    for schema, rel, col, typ, notnull, default, pos, ident in cur.fetchall():
        r = cat.relations.get((schema, rel))
        if r is not None:
            r.columns[col] = Column(col, typ, notnull, default, pos, ident or "")

    cur.execute(
        """
        SELECT n.nspname, c.relname, array_agg(a.attname ORDER BY k.ord)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
         WHERE con.contype = 'p' AND n.nspname = ANY(%s)
         GROUP BY n.nspname, c.relname
        """,
        (schemas,),
    )
    for schema, rel, cols in cur.fetchall():
        if (schema, rel) in cat.relations:
            cat.relations[(schema, rel)].primary_key = list(cols)

    # Foreign keys touching these schemas, in either direction.
    cur.execute(
        """
        SELECT sn.nspname || '.' || sc.relname, tn.nspname || '.' || tc.relname,
               con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con
          JOIN pg_class sc ON sc.oid = con.conrelid JOIN pg_namespace sn ON sn.oid = sc.relnamespace
          JOIN pg_class tc ON tc.oid = con.confrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
         WHERE con.contype = 'f' AND (sn.nspname = ANY(%s) OR tn.nspname = ANY(%s))
        """,
        (schemas, schemas),
    )
    for dep, ref, name, definition in cur.fetchall():
        cat.dependencies.append(Dependency("foreign_key", dep, ref, f"{name}: {_defined(definition)}"))

    # Views (and matviews) and the relations they read.
    cur.execute(
        """
        SELECT DISTINCT vn.nspname || '.' || v.relname, tn.nspname || '.' || t.relname
          FROM pg_depend d
          JOIN pg_rewrite rw ON rw.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
          JOIN pg_class v ON v.oid = rw.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
          JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
          JOIN pg_namespace tn ON tn.oid = t.relnamespace
         WHERE v.oid <> t.oid AND (vn.nspname = ANY(%s) OR tn.nspname = ANY(%s))
        """,
        (schemas, schemas),
    )
    for dep, ref in cur.fetchall():
        cat.dependencies.append(Dependency("view", dep, ref, "view reads it"))

    # Sequence ownership, and column defaults that call a sequence (possibly in another schema).
    cur.execute(
        """
        SELECT sn.nspname, s.relname, tn.nspname || '.' || t.relname, a.attname, d.deptype
          FROM pg_depend d
          JOIN pg_class s ON s.oid = d.objid AND d.classid = 'pg_class'::regclass AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
          JOIN pg_class t ON t.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
          JOIN pg_namespace tn ON tn.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE d.deptype IN ('a', 'i') AND (sn.nspname = ANY(%s) OR tn.nspname = ANY(%s))
        """,
        (schemas, schemas),
    )
    for seq_schema, seq, table, column, _ in cur.fetchall():
        rel = cat.relations.get((seq_schema, seq))
        if rel is not None:
            rel.owned_by = f"{table}.{column}"
        cat.dependencies.append(Dependency("sequence_owner", f"{seq_schema}.{seq}", table, f"owned by {table}.{column}"))
    cur.execute(
        """
        SELECT tn.nspname || '.' || t.relname, a.attname, sn.nspname || '.' || s.relname
          FROM pg_attrdef ad
          JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
          JOIN pg_class s ON s.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass AND s.relkind = 'S'
          JOIN pg_namespace sn ON sn.oid = s.relnamespace
          JOIN pg_class t ON t.oid = ad.adrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
          JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ad.adnum
         WHERE sn.nspname = ANY(%s) OR tn.nspname = ANY(%s)
        """,
        (schemas, schemas),
    )
    for table, column, seq in cur.fetchall():
        cat.dependencies.append(Dependency("default_sequence", f"{table}.{column}", seq, "column default calls nextval()"))

    cur.execute(
        """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = ANY(%s)
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
         ORDER BY 1
        """,
        (schemas,),
    )
    cat.functions = [r[0] for r in cur.fetchall()]
    cur.execute(
        """
        SELECT n.nspname || '.' || t.typname
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = ANY(%s) AND t.typtype IN ('c','e','d','r')
           AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
         ORDER BY 1
        """,
        (schemas,),
    )
    cat.types = [r[0] for r in cur.fetchall()]

    cur.execute(
        """
        SELECT table_schema || '.' || table_name, grantee, string_agg(privilege_type, ',' ORDER BY privilege_type)
          FROM information_schema.role_table_grants
         WHERE table_schema = ANY(%s) AND grantee <> current_user AND grantee <> 'PUBLIC'
         GROUP BY 1, 2 ORDER BY 1, 2
        """,
        (schemas,),
    )
    for rel, grantee, privs in cur.fetchall():
        cat.grants.setdefault(rel, []).append(f"{grantee}:{privs}")
    return cat


def count_rows_of(conn, schema: str, name: str) -> int:
    q = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
    return conn.execute(q).fetchone()[0]


@dataclass
class Constraint:
    name: str
    type: str  # p, u, c, f
    columns: list[str]
    definition: str
    ref_schema: str | None = None
    ref_table: str | None = None
    ref_columns: list[str] = field(default_factory=list)


@dataclass
class Index:
    name: str
    columns: list[str]  # empty when the index has expressions
    unique: bool
    method: str
    definition: str
    predicate: str | None = None


def table_details(conn, schema: str, table: str) -> tuple[list[Constraint], list[Index]]:
    """Constraints and non-constraint indexes of one relation, structured (read now)."""
    return _details(conn, "n.nspname = %(s)s AND c.relname = %(t)s", {"s": schema, "t": table}).get(
        (schema, table), ([], []))


def _details(conn, where: str, params: dict) -> dict[tuple[str, str], tuple[list[Constraint], list[Index]]]:
    """{(schema, relation): (constraints, indexes)} of the relations `where` (a fixed condition
    on n and c, with `params`) selects; constraints by type and name, indexes by name."""
    return read_catalog(conn, lambda: _read_details(conn, where, params))


def _read_details(conn, where: str, params: dict) -> dict[tuple[str, str], tuple[list[Constraint], list[Index]]]:
    found: dict[tuple[str, str], tuple[list[Constraint], list[Index]]] = {}
    cur = conn.execute(
        """
        SELECT n.nspname, c.relname, con.conname, con.contype,
               ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
               pg_get_constraintdef(con.oid),
               rn.nspname, rc.relname,
               ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_class rc ON rc.oid = con.confrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE """ + where + """ AND con.contype IN ('p','u','c','f')
         ORDER BY n.nspname, c.relname, con.contype, con.conname
        """,
        params,
    )
    for schema, rel, name, typ, cols, definition, rs, rt, rcols in cur.fetchall():
        found.setdefault((schema, rel), ([], []))[0].append(
            Constraint(name, typ, list(cols), _defined(definition), rs, rt, list(rcols or [])))
    cur = conn.execute(
        """
        SELECT n.nspname, c.relname, i.relname, ix.indisunique, am.amname, pg_get_indexdef(ix.indexrelid),
               pg_get_expr(ix.indpred, ix.indrelid),
               CASE WHEN ix.indexprs IS NULL THEN
                 ARRAY(SELECT a.attname FROM unnest(ix.indkey::int2[]) WITH ORDINALITY k(n, o)
                       JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n ORDER BY k.o)
               END
          FROM pg_index ix
          JOIN pg_class i ON i.oid = ix.indexrelid
          JOIN pg_class c ON c.oid = ix.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_am am ON am.oid = i.relam
         WHERE """ + where + """
           AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = ix.indexrelid)
         ORDER BY n.nspname, c.relname, i.relname
        """,
        params,
    )
    for schema, rel, name, uniq, method, definition, pred, cols in cur.fetchall():
        found.setdefault((schema, rel), ([], []))[1].append(
            Index(name, list(cols or []), uniq, method, _defined(definition), pred))
    return found


# ------------------------------------------------------------------ names, existence, row checksums
# the aggregate over a column `h` of 64-bit row hashes: 'count:sum' ('0:0' when empty); the
# sum of bigints is numeric in PostgreSQL, so it never overflows
CHECKSUM = sql.SQL("(count(*)::text || ':' || coalesce(sum(h), 0)::text)")


def row_hash_of(text: sql.Composable) -> sql.Composed:
    """The 64-bit hash of a row's text that every checksum sums (one formula for the engine)."""
    return sql.SQL("hashtextextended({}, 0)").format(text)


def qualified_ident(qualified: str) -> sql.Identifier:
    """`schema.table` as a quoted, qualified identifier."""
    schema, table = qualified.split(".", 1)
    return sql.Identifier(schema, table)


def relation_exists(conn, schema: str, table: str) -> bool:
    """Whether the relation schema.table exists (any kind: table, view, sequence, ...)."""
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]


class QualifiedName:
    """For dataclasses with `schema` and `table` fields: the relation's name and identifier."""

    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def row_hashes(relation: sql.Composable, alias: str = "t") -> sql.Composed:
    """`SELECT hashtextextended(ROW(t.*)::text, 0) AS h FROM relation AS t`: one hash per row."""
    if not alias.isidentifier():
        raise ValueError(f"alias {alias!r} is not a plain name")
    return sql.SQL("SELECT {h} AS h FROM {r} AS {a}").format(
        h=row_hash_of(sql.SQL("ROW({}.*)::text").format(sql.SQL(alias))), a=sql.SQL(alias), r=relation)


def checksum_query(hashes: sql.Composable) -> sql.Composed:
    """`SELECT checksum, count(*)` over a query returning row hashes as column `h`."""
    return sql.SQL("SELECT {}, count(*) FROM ({}) AS x").format(CHECKSUM, hashes)


def table_checksum_query(relation: sql.Composable) -> sql.Composed:
    """`SELECT checksum, count(*)` of every row of a relation."""
    return checksum_query(row_hashes(relation))
