"""The SQL of a column mapping: one scalar expression over the source row, cast to the target type.

Both sides of every proof use this one rendering (the step's INSERT/MERGE and the 4B gate's
source side), so what is compared is computed exactly as it was written.
"""
from __future__ import annotations

from psycopg import sql

from consolidation.core.columns.mapping import ColumnMap


def value_sql(m: ColumnMap, typ: str, alias: str = "s") -> sql.Composed:
    """`m` as SQL over the source row `alias`, cast to `typ` (a type as format_type spells it).

    Plan-given text (an `expr`, and types) is spliced as SQL: callers check it in the database
    first (core.columns.check); names are identifiers, constants literals.
    """
    target = sql.SQL(typ)
    if m.expr is not None:
        base: sql.Composable = sql.SQL("({})").format(sql.SQL(m.expr))
    elif m.source is not None:
        base = sql.Identifier(alias, m.source)
    elif m.has_value:
        base = sql.Literal(m.value)
    else:
        base = sql.SQL("NULL")
    if m.cast:
        base = sql.SQL("CAST({} AS {})").format(base, sql.SQL(m.cast))
    if m.map is not None:
        # old values compare as text, as the plan writes them; new ones are typed by the target
        as_text = sql.SQL("CAST({} AS text)").format(base)
        whens = [sql.SQL("WHEN {} THEN CAST({} AS {})").format(
            sql.SQL("{} IS NULL").format(base) if old is None else sql.SQL("{} = {}").format(as_text, sql.Literal(old)),
            sql.Literal(new), target) for old, new in m.map]
        other = (sql.SQL("CAST({} AS {})").format(sql.Literal(m.otherwise), target) if m.has_else
                 else sql.SQL("CAST({} AS {})").format(base, target))
        base = sql.SQL("CASE {} ELSE {} END").format(sql.SQL(" ").join(whens), other)
    if m.default is not None:
        base = sql.SQL("COALESCE({}, CAST({} AS {}))").format(base, sql.Literal(m.default), target)
    return sql.SQL("CAST({} AS {})").format(base, target)
