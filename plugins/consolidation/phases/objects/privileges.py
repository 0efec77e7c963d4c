"""Privileges carried from each legacy table to its target, pre-existing targets included.

Every role's privileges on a legacy table (its ACL, owner and PUBLIC aside) are granted on
the step's target; its privileges on the legacy table's sequences (serial or identity) are
granted on the target's sequences; a role that may INSERT into the legacy table gets USAGE
on the target's sequences (a serial default calls nextval), and USAGE on the target's
schema. A view target gets SELECT only. 4A grants what is missing (finalize, once every
target exists); the 4C gate proves the same list empty, per role, with has_table_privilege,
has_sequence_privilege and has_schema_privilege. One query inside the database computes it;
role and relation names come from the catalog and reach SQL through sql.Identifier.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.plan import Plan


_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN", "USAGE"}


def _pairs(conn, plan: Plan) -> sql.Composable | None:
    rows = [sql.SQL("({}, {}, {})").format(sql.Literal(sql.Identifier(s.source_schema, s.source_table).as_string(conn)),
                                           sql.Literal(sql.Identifier(s.target_schema, s.target_table).as_string(conn)),
                                           sql.Literal(s.source))
            for s in plan.migrating_steps()]
    return sql.SQL(", ").join(rows) if rows else None


def missing_query(conn, plan: Plan) -> sql.Composed | None:
    """SELECT kind, schema, name, role, privilege, legacy: each privilege a role holds on a legacy
    table (or its sequences) and lacks on the target (or its sequences, or the target's schema)."""
    pairs = _pairs(conn, plan)
    if pairs is None:
        return None
    return sql.SQL("""
        WITH p AS (SELECT to_regclass(x.src) AS src, to_regclass(x.tgt) AS tgt, x.legacy
                     FROM (VALUES {pairs}) AS x(src, tgt, legacy)),
        pp AS (SELECT p.*, c.relkind AS tgt_kind, c.relnamespace AS tgt_ns FROM p JOIN pg_class AS c ON c.oid = p.tgt
                WHERE p.src IS NOT NULL),
        tbl AS (SELECT pp.tgt, pp.tgt_kind, pp.tgt_ns, pp.legacy, a.grantee, a.privilege_type AS priv
                  FROM pp JOIN pg_class AS c ON c.oid = pp.src CROSS JOIN LATERAL aclexplode(c.relacl) AS a
                 WHERE a.grantee <> c.relowner AND a.grantee <> 0),
        seqs AS (SELECT d.refobjid AS rel, s.oid AS seq, s.relacl, s.relowner FROM pg_depend AS d
                   JOIN pg_class AS s ON s.oid = d.objid AND s.relkind = 'S'
                  WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')),
        src_seq AS (SELECT pp.tgt, pp.legacy, a.grantee, a.privilege_type AS priv FROM pp JOIN seqs AS s ON s.rel = pp.src
                      CROSS JOIN LATERAL aclexplode(s.relacl) AS a WHERE a.grantee <> s.relowner AND a.grantee <> 0
                    UNION SELECT tgt, legacy, grantee, 'USAGE' FROM tbl WHERE priv = 'INSERT'),
        wanted AS (
            SELECT 'table' AS kind, t.tgt AS obj, t.grantee, t.priv, t.legacy FROM tbl AS t
             WHERE t.tgt_kind NOT IN ('v', 'm') OR t.priv = 'SELECT'
            UNION SELECT 'sequence', s.seq, x.grantee, x.priv, x.legacy FROM src_seq AS x JOIN seqs AS s ON s.rel = x.tgt
            UNION SELECT 'schema', t.tgt_ns, t.grantee, 'USAGE', t.legacy FROM tbl AS t)
        SELECT w.kind, n.nspname AS schema, c.relname AS name, r.rolname AS role, w.priv AS privilege, w.legacy
          FROM wanted AS w JOIN pg_roles AS r ON r.oid = w.grantee
          LEFT JOIN pg_class AS c ON w.kind <> 'schema' AND c.oid = w.obj
          JOIN pg_namespace AS n ON n.oid = CASE WHEN w.kind = 'schema' THEN w.obj ELSE c.relnamespace END
         WHERE CASE w.kind WHEN 'table' THEN NOT has_table_privilege(r.oid, w.obj, w.priv)
                           WHEN 'sequence' THEN NOT has_sequence_privilege(r.oid, w.obj, w.priv)
                           ELSE NOT has_schema_privilege(r.oid, w.obj, w.priv) END
         ORDER BY 1, 2, 3, 4, 5""").format(pairs=pairs)


def missing(conn, plan: Plan) -> list[tuple]:
    q = missing_query(conn, plan)
    return conn.execute(q).fetchall() if q is not None else []


def grant_statements(conn, plan: Plan) -> list[tuple[str, sql.Composed]]:
    """(target, GRANT ...) for each missing privilege; empty when every privilege is carried."""
    out = []
    for kind, schema, name, role, priv, _legacy in missing(conn, plan):
        if priv not in _PRIVILEGES:
            continue  # a privilege this server knows and the tool does not carry (never formatted into SQL)
        if kind == "schema":
            out.append((schema, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role))))
        else:
            out.append((f"{schema}.{name}", sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(priv), sql.SQL("SEQUENCE" if kind == "sequence" else "TABLE"),
                sql.Identifier(schema, name), sql.Identifier(role))))
    return out


__all__ = ["missing_query", "missing", "grant_statements"]
