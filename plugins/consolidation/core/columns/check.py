"""The database's verdict on SQL text a plan gives: types, expressions, SELECTs.

Nothing here executes the text: the database parses and analyses it (a server-side
prepared statement of a `LIMIT 0` query, inside a savepoint that is rolled back), which
refuses what is not what the plan says it is, with the server's own message.

* normalise_type: a type as people write it (`varchar(20)`, `int`, `numeric(8,4)`) as the
  server spells it (format_type of the parsed type, modifiers kept), so comparisons with the
  catalog and the SQL the engine writes use one spelling;
* expression_type: ONE scalar expression over the source row `s` - no `;`, no comment, no
  dollar quote, balanced parentheses; placed in a WHERE clause as well, where the server
  refuses aggregates, window functions and set-returning functions; a data-modifying
  subquery is refused by the server too; returns the expression's type;
* volatile_functions: the volatile functions an expression calls (nextval, random(), ...), read
  from the dependencies the database records for it: such a column is refused (the 4B gate
  recomputes each expression on the source side, which would never match);
* select_problem: ONE SELECT (e.g. a view definition), nothing more.
"""
from __future__ import annotations

import weakref

import psycopg
from psycopg import sql

from consolidation.core.errors import PlanError

_TYPE_CACHE: "weakref.WeakKeyDictionary[psycopg.Connection, dict[str, str]]" = weakref.WeakKeyDictionary()


class _Refused(Exception):
    pass


def normalise_type(conn, type_text: str, where: str) -> str:
    """`type_text` as format_type spells it (with its modifiers), or a PlanError naming `where`."""
    cache = _TYPE_CACHE.setdefault(conn, {})
    if type_text in cache:
        return cache[type_text]
    try:
        with conn.transaction():
            # to_regtype parses a type name and nothing else (a bound parameter: never spliced)
            known = conn.execute("SELECT to_regtype(%s) IS NOT NULL", (type_text,)).fetchone()[0]
            if not known:
                raise _Refused()
            cur = conn.execute(sql.SQL("SELECT CAST(NULL AS {}) AS t LIMIT 0").format(sql.SQL(type_text)), prepare=True)
            oid, mod = cur.pgresult.ftype(0), cur.pgresult.fmod(0)
            name = conn.execute("SELECT format_type(%s, %s)", (oid, mod if mod >= 0 else None)).fetchone()[0]
    except (_Refused, psycopg.Error):
        raise PlanError(f"{where}: type {type_text!r} is not a PostgreSQL type here; write a type such as "
                        "integer, varchar(20), numeric(8,4), timestamptz, or create it first") from None
    cache[type_text] = name
    return name


def lexical_problem(text: str, what: str = "an expression") -> str | None:
    """What makes `text` more than one piece of SQL, before the server sees it (None: fine).

    Literals ('...', E'...') and quoted identifiers are skipped; outside them no `;`, no
    comment (it would swallow the rest of the statement the text is placed in), no dollar
    quote, and parentheses balance (the text cannot close the parenthesis it sits in).
    """
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "'":
            escapes = i > 0 and text[i - 1] in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == "_"))
            i += 1
            while i < n:
                if escapes and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == "'":
                    if i + 1 < n and text[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            if i >= n:
                return f"{what} has an unterminated string literal"
        elif c == '"':
            end = text.find('"', i + 1)
            while end != -1 and end + 1 < n and text[end + 1] == '"':
                end = text.find('"', end + 2)
            if end == -1:
                return f"{what} has an unterminated quoted identifier"
            i = end
        elif c == ";":
            return f"{what} may not contain `;` (it is one expression, not statements)"
        elif text.startswith("--", i) or text.startswith("/*", i):
            return f"{what} may not contain a comment"
        elif c == "$":
            return f"{what} may not use $ (dollar quoting or parameters); write literals in '...'"
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return f"{what} closes a parenthesis it did not open"
        i += 1
    if depth:
        return f"{what} leaves {depth} parenthesis(es) open"
    return None


def expression_type(conn, expression: sql.Composable, source: sql.Composable, where: str,
                    raw_text: str | None = None) -> str:
    """The type of `expression` (SQL over the source row `s` of `source`), as format_type spells
    it; a PlanError naming `where` with the database's message when it is not one scalar
    expression there. `raw_text`: the plan's own text, checked lexically first."""
    if raw_text is not None:
        problem = lexical_problem(raw_text)
        if problem:
            raise PlanError(f"{where}: {problem}")
    query = sql.SQL("SELECT {e} AS v FROM {src} AS s WHERE ({e}) IS NULL OR TRUE LIMIT 0").format(
        e=expression, src=source)
    try:
        with conn.transaction():
            cur = conn.execute(query, prepare=True)
            oid, mod = cur.pgresult.ftype(0), cur.pgresult.fmod(0)
            name = conn.execute("SELECT format_type(%s, %s)", (oid, mod if mod >= 0 else None)).fetchone()[0]
            raise psycopg.Rollback()
    except psycopg.Error as exc:
        message = (exc.diag.message_primary or str(exc)).strip()
        if "WHERE" in message:  # the server refused it in our WHERE probe: say what that means
            message += " (an expression is computed per source row: no aggregate, window or set-returning function)"
        raise PlanError(f"{where}: the database refuses it: {message}") from None
    return name


def volatile_functions(conn, expressions: list[sql.Composable], source: sql.Composable) -> list[str]:
    """The volatile functions (pg_proc.provolatile = 'v': nextval, random, clock_timestamp,
    gen_random_uuid, ...) the expressions call, directly, through an operator or in a subquery,
    as the database resolved them: a temporary view over the source row `s` is created (and
    rolled back) and the function ids of its stored query tree read. [] when there are none."""
    cols = sql.SQL(", ").join(sql.SQL("{} AS {}").format(e, sql.Identifier(f"c{i}")) for i, e in enumerate(expressions))
    found: list[str] = []
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE TEMPORARY VIEW consolidation_volatility_probe AS SELECT {} FROM {} AS s").format(
                cols, source))
            # the stored rule is the parsed, resolved query: every function call (:funcid) and operator
            # (:opno, whose function is pg_operator.oprcode) it makes, subqueries included; pg_depend
            # would not do (it records no dependency on built-in, pinned functions such as random())
            found = [r[0] for r in conn.execute(r"""
                SELECT DISTINCT p.oid::regprocedure::text
                  FROM pg_rewrite AS rw
                 CROSS JOIN LATERAL regexp_matches(rw.ev_action::text, ':(funcid|opno) (\d+)', 'g') AS m
                  JOIN pg_proc AS p ON p.oid = CASE m[1] WHEN 'funcid' THEN m[2]::oid
                       ELSE (SELECT o.oprcode::oid FROM pg_operator AS o WHERE o.oid = m[2]::oid) END
                 WHERE rw.ev_class = 'consolidation_volatility_probe'::regclass AND p.provolatile = 'v'
                 ORDER BY 1""").fetchall()]
            raise psycopg.Rollback()
    except psycopg.Error:
        return []  # not an expression the database accepts: expression_type says why
    return found


def select_problem(conn, text: str, what: str = "the definition") -> str | None:
    """Why `text` is not ONE SELECT the database accepts (None: it is). A trailing `;` is allowed."""
    body = text.strip()
    if body.endswith(";"):
        body = body[:-1]
    problem = lexical_problem(body, what)
    if problem:
        return problem
    try:
        with conn.transaction():
            # as a subquery: anything but a SELECT (or VALUES / TABLE) is a syntax error there
            conn.execute(sql.SQL("SELECT * FROM ({}) AS q LIMIT 0").format(sql.SQL(body)), prepare=True)
            raise psycopg.Rollback()
    except psycopg.Error as exc:
        return f"{what} is not one SELECT the database accepts: {(exc.diag.message_primary or str(exc)).strip()}"
    return None
