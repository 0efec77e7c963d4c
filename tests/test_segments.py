"""Order-free, segmented checksums (checks.segments): one scan per side, segments that add
up to the whole, and a bisection that names the differing keys; against the 4B stage."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from consolidation.checks import reconcile, segments
from consolidation.checks.gx import GateFailed
from consolidation.core.catalog import CHECKSUM, table_checksum_query
from consolidation.core.session import load_specs

from phase_helpers import PLAN, run_gate

pytestmark = pytest.mark.engine

STEP = "copy__public__sbr_parsed_games"  # the biggest copy (a 4A-created target, integer key)


def _step(name: str = STEP):
    return next(s for s in PLAN.steps if s.name == name)


def test_checksum_is_count_and_sum_and_segments_add_up(db_4b):
    """The checksum is `count:sum` of 64-bit row hashes, no string built; forced to tiny
    segments (16 and 256 of them), their counts and sums add up to the whole table's."""
    with psycopg.connect(db_4b) as conn:
        _, specs = load_specs(conn, PLAN)
        s = reconcile.sides(PLAN, _step(), specs[_step().target])
        total, rows = conn.execute(segments.checksum_query(s.target)).fetchone()
        n, hsum = total.split(":")
        assert int(n) == rows > 1000
        for depth in (0, 1):
            parts = {}
            for value in range(16 ** depth):
                for seg, (cnt, ssum) in segments._sums(conn, s.target, s.key, depth, value).items():
                    parts[(value, seg)] = (cnt, ssum)
            assert len(parts) == 16 ** (depth + 1)  # every segment holds rows: the hash spreads them
            assert sum(c for c, _ in parts.values()) == rows
            assert sum(v for _, v in parts.values()) == int(hsum)
        # the table checksum (backups, drop check, 4D gate) is the same formula over whole rows
        t, tn = conn.execute(table_checksum_query(specs[_step().target].ident)).fetchone()
        assert tn == rows and t.startswith(f"{rows}:")
        empty = conn.execute(sql.SQL("SELECT {} FROM (SELECT 1::bigint AS h WHERE false) AS x").format(
            CHECKSUM)).fetchone()[0]
        assert empty == "0:0"


def test_one_changed_row_is_named_by_key_through_the_recursion(db_4b):
    """Change one value, delete one row and add one in the target: tiny segments (2 rows)
    force the bisection down several levels; it names exactly those keys, reading only
    the segments that differ; the step proof counts them; the 4B gate fails naming them."""
    step = _step()
    with psycopg.connect(db_4b) as conn:
        _, specs = load_specs(conn, PLAN)
        spec = specs[step.target]
        key = spec.key[0]
        before = reconcile.checksums(conn, PLAN, step, spec)
        assert before["source_checksum"] == before["target_checksum"]
        assert reconcile.differences(conn, PLAN, step, spec, rows_per_segment=2).equal
        ids = [r[0] for r in conn.execute(sql.SQL("SELECT {k} FROM {t} ORDER BY {k} LIMIT 3").format(
            k=sql.Identifier(key), t=spec.ident)).fetchall()]
        changed, deleted = ids[1], ids[2]
        text_col = next(c.name for c in spec.columns if c.type in ("text", "character varying") and c.name != key)
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(spec.ident))
        conn.execute(sql.SQL("UPDATE {t} SET {c} = coalesce({c}, '') || ' (edited)' WHERE {k} = %s").format(
            t=spec.ident, c=sql.Identifier(text_col), k=sql.Identifier(key)), (changed,))
        conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(spec.ident, sql.Identifier(key)), (deleted,))
        conn.commit()

        d = reconcile.differences(conn, PLAN, step, spec, rows_per_segment=2)
        assert not d.equal
        assert sorted((x.kind, x.key[key]) for x in d.differences) == sorted(
            [("changed", changed), ("missing", deleted)])
        assert d.segments >= 3  # it split more than once (tiny segments), but only where sums differ
        assert d.segments < 2 * 16  # ... never every segment of a level
        assert f"changed {key}={changed}" in d.keys_line()

        after = reconcile.checksums(conn, PLAN, step, spec)
        assert after["source_rows"] == before["source_rows"]
        assert after["target_rows"] == before["target_rows"] - 1
        assert after["present"] == before["present"] - 2  # the changed row and the deleted one
        assert after["target_checksum"] != before["target_checksum"]
    with pytest.raises(GateFailed) as exc:
        run_gate(db_4b, "4B")
    failed = {(r.check.table, r.check.name): r for r in exc.value.result.failures()}
    # values_equal names the changed row's column too; nothing else is blamed
    assert set(failed) == {(step.target, "rows_present"), (step.target, "counts_reconcile"),
                           (step.target, "no_unexpected_rows"), (step.target, "values_equal")}
    assert failed[(step.target, "values_equal")].observed == 1  # the changed row, by key and column
    assert failed[(step.target, "rows_present")].observed == 2  # the changed and the deleted row
    assert failed[(step.target, "no_unexpected_rows")].observed == 1  # the changed row's new value


def test_keyless_side_is_segmented_by_row_hash(db_4b):
    """Sides without a key (a recreated view, a view snapshot) bisect on the row hash."""
    with psycopg.connect(db_4b) as conn:
        conn.execute("CREATE TEMP TABLE a AS SELECT g AS n, md5(g::text) AS v FROM generate_series(1, 500) g")
        conn.execute("CREATE TEMP TABLE b AS SELECT * FROM a")
        conn.execute("UPDATE b SET v = 'different' WHERE n = 77")
        side = "SELECT hashtextextended(ROW(x.*)::text, 0) AS h FROM {} AS x"
        d = segments.diff(conn, sql.SQL(side).format(sql.Identifier("a")), sql.SQL(side).format(sql.Identifier("b")),
                          [], rows_per_segment=3)
        assert sorted(x.kind for x in d.differences) == ["extra", "missing"]
        assert d.left[1] == d.right[1] == 500 and d.left[0] != d.right[0]


def test_segment_rows_setting_is_checked(monkeypatch):
    monkeypatch.setenv("CONSOLIDATION_SEGMENT_ROWS", "lots")
    with pytest.raises(ValueError, match="CONSOLIDATION_SEGMENT_ROWS='lots' is not a whole number"):
        segments.segment_rows()
    monkeypatch.setenv("CONSOLIDATION_SEGMENT_ROWS", "7")
    assert segments.segment_rows() == 7
