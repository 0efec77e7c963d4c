"""Order-free, segmented comparison of two row sets (data-diff / reladiff's idea).

Each side is a query `SELECT <key...>, h` (h: the 64-bit row hash of core.catalog.row_hash_of).
A side's checksum is core.catalog.CHECKSUM, `count:sum(h)`: one scan, no sort, constant
memory, no size limit. Sums add up, so a side's rows split into segments whose checksums
add up to the whole; two sides that differ are compared segment by segment, and only the
segments that differ are split again, down to `segment_rows`, where the rows themselves
are compared (EXCEPT ALL, both ways) and the differing keys named.

Segments are ranges of a 64-bit hash of the key (`hashtextextended(ROW(key)::text, 1)`),
4 bits per level (16 segments per split): any key type, single or compound, and evenly
filled whatever the key's distribution (ranges of the key itself are empty or crowded on
skewed keys). A keyless side (a view snapshot) is segmented by its row hash.

The same SQL serves the step proof (reconcile.checksums), the 4B gate's row checks (one
level in SQL: reconcile.missing_rows / extra_rows), and the Python bisection (`diff`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from psycopg import sql

from consolidation.core.catalog import CHECKSUM

BITS = 4  # bits of the key hash per level: 16 segments per split
MAX_DEPTH = 64 // BITS - 1  # the mask of the deepest level must fit a bigint
GATE_LEVELS = 2  # the 4B gate's SQL splits once into 16**2 = 256 segments
DEFAULT_SEGMENT_ROWS = 50_000


def segment_rows() -> int:
    """Rows below which a differing segment is compared row by row (CONSOLIDATION_SEGMENT_ROWS)."""
    raw = os.environ.get("CONSOLIDATION_SEGMENT_ROWS", "")
    try:
        return max(1, int(raw)) if raw.strip() else DEFAULT_SEGMENT_ROWS
    except ValueError:
        raise ValueError(f"CONSOLIDATION_SEGMENT_ROWS={raw!r} is not a whole number; "
                         f"unset it (default {DEFAULT_SEGMENT_ROWS}) or give a row count") from None


def key_hash(alias: str, key: list[str]) -> sql.Composed:
    """The hash segments are cut from: of the key columns, or the row hash when keyless."""
    if not key:
        return sql.SQL("{}").format(sql.Identifier(alias, "h"))
    return sql.SQL("hashtextextended(ROW({})::text, 1)").format(
        sql.SQL(", ").join(sql.Identifier(alias, k) for k in key))


def _in_segment(kh: sql.Composable, depth: int, value: int) -> sql.Composed:
    """`kh` falls in the segment the first `depth` levels' digits `value` name."""
    if depth == 0:
        return sql.SQL("TRUE")
    mask = (1 << (BITS * depth)) - 1
    return sql.SQL("({} & {}::bigint) = {}::bigint").format(kh, sql.Literal(mask), sql.Literal(value))


def checksum_query(side: sql.Composable, where: sql.Composable = sql.SQL("TRUE")) -> sql.Composed:
    """`SELECT checksum, count(*)` of a side (rows satisfying `where`, alias x)."""
    return sql.SQL("SELECT {}, count(*) FROM ({}) AS x WHERE {}").format(CHECKSUM, side, where)


def segmented_except(left: sql.Composable, right: sql.Composable, key: list[str],
                     levels: int = GATE_LEVELS) -> sql.Composed:
    """Rows of `left` with no identical row in `right` (EXCEPT ALL), as one query: first each
    side's total (count and sum of the row hashes: one plain aggregate per side, no sort, parallel
    workers allowed); only when the totals differ, both sides summed per segment (16**levels
    segments of the key hash), then the rows compared only inside the segments whose sums
    differ. Equal sides cost one scan each; everything after is skipped (one-time filters).
    (Grouping by the segment first, as before, cost a sort of every row spilled to disk: the
    planner cannot know the segment expression has 16**levels values.)"""
    kh_x, kh_y = key_hash("x", key), key_hash("y", key)
    bucket = sql.Literal((1 << (BITS * levels)) - 1)

    def total(q):
        return sql.SQL("SELECT count(*) AS n, sum(x.h) AS s FROM ({q}) AS x").format(q=q)

    def sums(q):
        return sql.SQL("SELECT ({kh} & {b}::bigint) AS seg, count(*) AS n, sum(x.h) AS s FROM ({q}) AS x "
                       "WHERE EXISTS (SELECT 1 FROM differ) GROUP BY 1").format(kh=kh_x, b=bucket, q=q)

    def rows(q):
        return sql.SQL("SELECT y.* FROM ({q}) AS y WHERE EXISTS (SELECT 1 FROM bad) "
                       "AND ({kh} & {b}::bigint) IN (SELECT seg FROM bad)").format(q=q, kh=kh_y, b=bucket)

    return sql.SQL(
        "WITH differ AS MATERIALIZED (SELECT 1 FROM ({lt}) AS lt, ({rt}) AS rt "
        "WHERE lt.n IS DISTINCT FROM rt.n OR lt.s IS DISTINCT FROM rt.s), "
        "l AS ({ls}), r AS ({rs}), bad AS MATERIALIZED (SELECT seg FROM l FULL JOIN r USING (seg) "
        "WHERE l.n IS DISTINCT FROM r.n OR l.s IS DISTINCT FROM r.s) "
        "SELECT * FROM (({lr}) EXCEPT ALL ({rr})) AS d").format(
        lt=total(left), rt=total(right), ls=sums(left), rs=sums(right), lr=rows(left), rr=rows(right))


@dataclass
class Difference:
    key: dict  # key column -> value (keyless: {"row_hash": h})
    kind: str  # "missing" (only in left), "extra" (only in right), "changed" (key in both, values differ)


@dataclass
class Diff:
    left: tuple[str, int]  # (checksum, rows)
    right: tuple[str, int]
    differences: list[Difference] = field(default_factory=list)
    segments: int = 0  # segment pairs summed while bisecting
    complete: bool = True  # False: more differences than `limit`

    @property
    def equal(self) -> bool:
        return self.left == self.right

    def keys_line(self, n: int = 10) -> str:
        """'missing {...}, changed {...}' for a message (the first n)."""
        parts = [f"{d.kind} {', '.join(f'{k}={v}' for k, v in d.key.items())}" for d in self.differences[:n]]
        more = len(self.differences) - n
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "") + ("" if self.complete else " (first ones)")


def _sums(conn, side, key, depth: int, value: int) -> dict[int, tuple[int, object]]:
    kh = key_hash("x", key)
    q = sql.SQL("SELECT (({kh} >> {shift}) & {m}::bigint) AS seg, count(*), coalesce(sum(x.h), 0) "
                "FROM ({side}) AS x WHERE {where} GROUP BY 1").format(
        kh=kh, shift=sql.Literal(BITS * depth), m=sql.Literal((1 << BITS) - 1), side=side,
        where=_in_segment(kh, depth, value))
    return {seg: (n, s) for seg, n, s in conn.execute(q).fetchall()}


def _rows(conn, left, right, key, depth: int, value: int, limit: int) -> list[Difference]:
    """Rows that differ inside one segment, both ways, by key."""
    cols = [*key] if key else ["h"]

    def only(a, b):
        where_a = _in_segment(key_hash("a", key), depth, value)
        where_b = _in_segment(key_hash("b", key), depth, value)
        q = sql.SQL("SELECT {cols} FROM ((SELECT a.* FROM ({a}) AS a WHERE {wa}) EXCEPT ALL "
                    "(SELECT b.* FROM ({b}) AS b WHERE {wb})) AS d LIMIT {n}").format(
            cols=sql.SQL(", ").join(sql.Identifier("d", c) for c in cols), a=a, b=b, wa=where_a, wb=where_b,
            n=sql.Literal(limit))
        return [tuple(r) for r in conn.execute(q).fetchall()]

    missing, extra = only(left, right), only(right, left)
    names = key or ["row_hash"]
    out = []
    both = set(missing) & set(extra) if key else set()
    for r in missing:
        out.append(Difference(dict(zip(names, r)), "changed" if r in both else "missing"))
    out += [Difference(dict(zip(names, r)), "extra") for r in extra if r not in both]
    return out


def diff(conn, left: sql.Composable, right: sql.Composable, key: list[str], *,
         rows_per_segment: int | None = None, limit: int = 100) -> Diff:
    """Compare two sides by checksum; when they differ, bisect by key-hash segment and name
    the differing keys (up to `limit`). Equal sides cost one scan each."""
    per_segment = rows_per_segment or segment_rows()
    lsum, lrows = conn.execute(checksum_query(left)).fetchone()
    rsum, rrows = conn.execute(checksum_query(right)).fetchone()
    result = Diff((lsum, lrows), (rsum, rrows))
    if result.equal:
        return result

    def walk(depth: int, value: int, rows: int) -> None:
        if len(result.differences) >= limit:
            result.complete = False
            return
        if rows <= per_segment or depth > MAX_DEPTH:
            result.differences += _rows(conn, left, right, key, depth, value, limit - len(result.differences))
            return
        a, b = _sums(conn, left, key, depth, value), _sums(conn, right, key, depth, value)
        result.segments += 1
        for seg in sorted(set(a) | set(b)):
            if a.get(seg) != b.get(seg):
                walk(depth + 1, value | (seg << (BITS * depth)),
                     max(a.get(seg, (0, 0))[0], b.get(seg, (0, 0))[0]))

    walk(0, 0, max(lrows, rrows))
    if len(result.differences) > limit:
        result.differences, result.complete = result.differences[:limit], False
    return result


__all__ = ["diff", "Diff", "Difference", "segmented_except", "checksum_query", "key_hash", "segment_rows"]
