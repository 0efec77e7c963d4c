"""The catalog is read while other steps change it: 4B runs steps in parallel, and a bulk load
drops its target's foreign keys and secondary indexes and re-creates them (phases.load.bulk).
pg_get_indexdef() and pg_get_constraintdef() look objects up as the catalog is now, not as the
statement's snapshot saw it, so a step deriving its specs while another commits such DDL got
"cache lookup failed for attribute 1 of relation N" (seen: a 4B step on a Celery worker).
"""
from __future__ import annotations

import threading

import psycopg

from consolidation.core import catalog

TABLES = 12


def _build(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA s")
        for i in range(TABLES):
            conn.execute(f"CREATE TABLE s.t{i} (id int PRIMARY KEY, a int, b text, ref int)")
            conn.execute(f"CREATE INDEX t{i}_a ON s.t{i} (a, b)")
            if i:
                conn.execute(f"ALTER TABLE s.t{i} ADD CONSTRAINT t{i}_ref FOREIGN KEY (ref) REFERENCES s.t{i - 1} (id)")


def _churn(dsn: str, stop: threading.Event) -> None:
    """What a bulk load does to its target, committed over and over: drop, re-create (a
    commit every 10 ms: far more often than steps that each load rows)."""
    with psycopg.connect(dsn) as conn:
        while not stop.is_set():
            for i in range(1, TABLES):
                stop.wait(0.01)
                conn.execute(f"ALTER TABLE s.t{i} DROP CONSTRAINT t{i}_ref")
                conn.execute(f"DROP INDEX s.t{i}_a")
                conn.execute(f"CREATE INDEX t{i}_a ON s.t{i} (a, b)")
                conn.execute(f"ALTER TABLE s.t{i} ADD CONSTRAINT t{i}_ref FOREIGN KEY (ref) REFERENCES s.t{i - 1} (id)")
                conn.commit()


def _read_while_churning(dsn: str, reads: int, *, until_error: bool = False) -> tuple[list, int]:
    """Up to `reads` catalog reads (introspect + every table's details) in one transaction, as
    a step reads them (`until_error`: until one gives up); what they returned, how many gave up."""
    stop = threading.Event()
    worker = threading.Thread(target=_churn, args=(dsn, stop))
    worker.start()
    seen, errors = [], 0
    try:
        with psycopg.connect(dsn) as conn:
            for _ in range(reads):
                try:
                    with conn.transaction():
                        cat = catalog.introspect(conn, ["s"], count_rows=False)
                        seen.append(({d.detail for d in cat.dependencies if d.kind == "foreign_key"},
                                     {t: cat.table_details(conn, "s", f"t{t}") for t in range(TABLES)}))
                except psycopg.errors.ObjectInUse:  # the catalog read gave up
                    errors += 1
                    if until_error:
                        break
    finally:
        stop.set()
        worker.join()
    return seen, errors


def test_the_catalog_reads_what_is_there_while_a_concurrent_step_drops_and_recreates_indexes(db_dsn, monkeypatch):
    _build(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        quiet = catalog.introspect(conn, ["s"], count_rows=False)
        expected = ({d.detail for d in quiet.dependencies if d.kind == "foreign_key"},
                    {t: quiet.table_details(conn, "s", f"t{t}") for t in range(TABLES)})
    assert len(expected[0]) == TABLES - 1 and all(len(idx) == 1 for _, idx in expected[1].values())

    # the race is real here: read once, without reading again, and some reads fail
    monkeypatch.setattr(catalog, "READ_ATTEMPTS", 1)
    _, errors = _read_while_churning(db_dsn, 300, until_error=True)
    assert errors > 0, "the churn never raced the catalog read: this test proves nothing on this machine"

    monkeypatch.undo()
    seen, errors = _read_while_churning(db_dsn, 60)
    assert errors == 0
    # each statement sees the churn's last commit, and every commit leaves all objects there
    assert seen and all(read == expected for read in seen)
