"""Loading an empty target that 4A created, as pg_restore does: rows first, then the
foreign keys and secondary indexes, each built once over the loaded table.

A foreign key checked row by row (a trigger per inserted row) and an index maintained
row by row cost more than one validating query and one sorted index build after the load
(measured: benchmarks/bench_floor.py). Everything happens inside the step's savepoint:
if the load or a re-added constraint fails, the savepoint rolls back the drops too and
the step falls back to its per-row path with every constraint in place. Primary keys and
unique constraints stay (other targets' foreign keys reference them; they also catch
duplicate keys during the load). Definitions are the server's own (pg_get_constraintdef,
pg_get_indexdef), re-applied verbatim, so names and options are kept.

Dropping a foreign key locks the referenced table ACCESS EXCLUSIVE until the step commits:
a step loading another child of that table waits for it (lock_parents takes those locks
first, in one order, so steps running side by side wait and never deadlock).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from consolidation.core.spec import TargetSpec


@dataclass
class Deferred:
    foreign_keys: list[tuple[str, str]] = field(default_factory=list)  # (name, definition)
    indexes: list[tuple[str, str]] = field(default_factory=list)  # (name, CREATE INDEX ...)


def applies(conn, spec: TargetSpec) -> bool:
    """The target is a table this plan created and it holds no row (checked, not assumed)."""
    if spec.kind != "table" or not spec.created_by_plan:
        return False
    return not conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(spec.ident)).fetchone()[0]


def lock_parents(conn, spec: TargetSpec, *, exclusive: bool) -> list[str]:
    """Lock the tables the target's foreign keys reference, one by one in a fixed order (by oid),
    before the step touches them otherwise; returns their names.

    Steps run side by side in 4B. Dropping a foreign key (defer) takes an ACCESS EXCLUSIVE lock
    on the referenced table too, and an insert's foreign-key checks take ROW SHARE locks on
    the referenced tables in trigger order: two steps whose targets reference the same tables
    in another order could each hold one and wait for the other (a deadlock, which would
    send the victim's rows down the per-row path). Taken up front, in one order, by every
    step (`exclusive` for a bulk load, ROW SHARE otherwise), the second step waits for the
    first instead. Two steps into the same target never run at once (migrate.order_steps)."""
    parents = conn.execute(
        "SELECT DISTINCT c.confrelid::bigint, n.nspname, r.relname FROM pg_constraint c "
        "JOIN pg_class r ON r.oid = c.confrelid JOIN pg_namespace n ON n.oid = r.relnamespace "
        "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'f' AND c.confrelid <> c.conrelid ORDER BY 1",
        (spec.ident.as_string(conn),)).fetchall()
    mode = sql.SQL("ACCESS EXCLUSIVE" if exclusive else "ROW SHARE")
    for _, schema, table in parents:
        try:
            with conn.transaction():  # a savepoint; a granted lock stays with the transaction
                conn.execute(sql.SQL("LOCK TABLE {} IN {} MODE").format(sql.Identifier(schema, table), mode))
        except psycopg.errors.InsufficientPrivilege:
            pass  # a table this role may only read: its checks take their lock as they go
    return [f"{schema}.{table}" for _, schema, table in parents]


def defer(conn, spec: TargetSpec) -> Deferred:
    """Drop the target's foreign keys and secondary (non-constraint) indexes; return them."""
    reg = spec.ident.as_string(conn)
    d = Deferred(
        foreign_keys=[tuple(r) for r in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'f' ORDER BY conname", (reg,)).fetchall()],
        indexes=[tuple(r) for r in conn.execute(
            "SELECT i.relname, pg_get_indexdef(ix.indexrelid) FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "WHERE ix.indrelid = %s::regclass AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid) ORDER BY 1", (reg,)).fetchall()])
    for name, _ in d.foreign_keys:
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(spec.ident, sql.Identifier(name)))
    for name, _ in d.indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(spec.schema, name)))
    return d


def restore(conn, spec: TargetSpec, d: Deferred) -> None:
    """Re-create what `defer` dropped, over the loaded rows (a violation raises: the caller's
    savepoint then undoes the load and the drops)."""
    for _, definition in d.indexes:
        conn.execute(sql.SQL(definition))
    for name, definition in d.foreign_keys:
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
            spec.ident, sql.Identifier(name), sql.SQL(definition)))


def load(conn, spec: TargetSpec, statement: sql.Composable) -> int:
    """Run a plain INSERT ... SELECT into the empty target with its foreign keys and indexes
    built after; returns the rows inserted."""
    d = defer(conn, spec)
    inserted = conn.execute(statement).rowcount
    restore(conn, spec, d)
    return inserted
