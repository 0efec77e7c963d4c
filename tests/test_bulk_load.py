"""4B loads an empty target 4A created as pg_restore does (phases.load.bulk): rows first,
foreign keys and secondary indexes after; the same definitions come back, and a row that
breaks a foreign key still reaches the quarantine through the per-row path."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from consolidation.core import ledger
from consolidation.phases.migrate import StepFailed, run_step

from phase_helpers import PLAN

pytestmark = pytest.mark.engine

PARENT, CHILD = "copy__public__sbr_raw_html", "copy__public__sbr_parsed_games"
TARGET = "raw_data.sbr_parsed_games"


def definitions(conn, table: str) -> dict[str, str]:
    """Every constraint and index of a table, by name, as the server prints it."""
    rows = conn.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
        "UNION ALL SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s::regclass", (table, table)).fetchall()
    return dict(rows)


def test_empty_created_target_is_bulk_loaded_with_its_constraints_rebuilt(db_4a):
    with psycopg.connect(db_4a) as conn:
        before = definitions(conn, TARGET)
        assert any(d.startswith("FOREIGN KEY") for d in before.values())
        assert any("CREATE INDEX" in d for d in before.values())  # a secondary index, rebuilt after the load
        run_step(conn, PLAN, PARENT, run_id="t-bulk", user="test")
        r = run_step(conn, PLAN, CHILD, run_id="t-bulk", user="test")
        assert r.path == "bulk load"
        assert r.read == r.inserted > 0 and r.quarantined == 0 and r.source_checksum == r.target_checksum
        assert definitions(conn, TARGET) == before  # same names, same definitions
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*TARGET.split(".")))).fetchone()[0]
        assert n == r.read
        # a re-run into the now full target takes the idempotent path and inserts nothing
        again = run_step(conn, PLAN, CHILD, run_id="t-bulk-2", user="test")
        assert (again.path, again.inserted, again.already_present) == ("set-based", 0, r.read)


def test_foreign_key_violation_after_bulk_load_falls_back_to_quarantine(db_4a):
    """The foreign key is validated after the load; the violation rolls the load back and the
    per-row path quarantines exactly the offending row, with every constraint in place."""
    with psycopg.connect(db_4a) as conn:
        before = definitions(conn, TARGET)
        fk = conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'public.sbr_parsed_games'::regclass "
                          "AND contype = 'f'").fetchone()[0]
        conn.execute(sql.SQL("ALTER TABLE public.sbr_parsed_games DROP CONSTRAINT {}").format(sql.Identifier(fk)))
        bad = conn.execute("UPDATE public.sbr_parsed_games SET raw_html_id = -42 "
                           "WHERE id = (SELECT min(id) FROM public.sbr_parsed_games) RETURNING id").fetchone()[0]
        conn.commit()
        run_step(conn, PLAN, PARENT, run_id="t-bulk-fk", user="test")
        with pytest.raises(StepFailed, match="1 row"):
            run_step(conn, PLAN, CHILD, run_id="t-bulk-fk", user="test")
        entry = ledger.rows(conn, PLAN, "phase = '4B' AND kind = 'step' AND name = %s", (CHILD,))[-1]
        assert entry["details"]["path"] == "per-row" and entry["rows_quarantined"] == 1
        assert entry["rows_inserted"] == entry["rows_read"] - 1
        q = conn.execute("SELECT original->>'id', reason FROM operational.consolidation_quarantine "
                         "WHERE step = %s", (CHILD,)).fetchall()
        assert len(q) == 1 and int(q[0][0]) == bad and "foreign key" in q[0][1]
        assert definitions(conn, TARGET) == before
