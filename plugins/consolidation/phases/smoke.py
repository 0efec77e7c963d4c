"""Service smoke checks: the queries services run, through the legacy names and the registry.

Each file in the plan's `smoke_dir` (a folder relative to the plan file, e.g. the demo's
include/plans/smoke/phase4/; $CONSOLIDATION_SMOKE_DIR or a run's folder param wins) is one SELECT
written the way a service queries its tables - joins, filters, aggregates, ORDER BY -
naming every table by its legacy logical name in double braces, with an alias:

    -- Pre-game recommendations with the game they are for.
    SELECT r.strategy_name, g.home, g.away
      FROM {{tracking.pre_game_recommendations}} AS r
      JOIN {{splits.games}} AS g ON g.game_id = r.game_id

Leading `--` lines are its description. A placeholder is `{{schema.table}}` (a name other
than letters, digits and _ double-quoted as in SQL: `{{"Legacy App"."Bets"}}`) followed by `AS alias` (the registry side is a subquery, and PostgreSQL 15
requires an alias on one). One statement per file; a trailing `;` is allowed.

The query is rendered twice: once with each placeholder as the legacy table itself, once
with what the registry resolves (registry.Resolved.relation(): the consolidated table
under the legacy column names and types, filtered to the legacy table's rows). The
registry records the column renames, so the query text never changes: `g.game_id` above
reads core_betting.supplementary_games.external_game_id cast back to text, `home`
reads home_team. Both renderings must return the same multiset of rows (md5 of each row's
text, EXCEPT ALL both ways, inside the database); the 4C gate has one check per file,
named after it, that returns the differing rows.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from psycopg import sql

from consolidation.actions.base import not_quarantined
from consolidation.checks import quarantine
from consolidation.core.catalog import relation_exists
from consolidation.checks.gx import Check
from consolidation.core.columns.check import lexical_problem, select_problem
from consolidation.core.plan import Plan, PlanError
from consolidation.checks.reconcile import multiset_diff
from consolidation.phases.registry import NotRegistered, resolve

SMOKE_DIR_ENV = "CONSOLIDATION_SMOKE_DIR"
# a name is plain (letters, digits, _ and $, used as written) or double-quoted as in SQL
# ("UPPER Case", "odd""name": a doubled quote is one), so any name a plan can hold can be named
_NAME = r'([A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
PLACEHOLDER = re.compile(r"\{\{\s*" + _NAME + r"\." + _NAME + r"\s*\}\}")
_ALIAS_AFTER = re.compile(r"\s+AS\s+[A-Za-z_][A-Za-z0-9_$]*", re.IGNORECASE)


class SmokeError(PlanError):
    """A smoke query file that cannot be used; the message names the file and the fix (a
    PlanError: SQL the plan's user supplies, refused in one line like the plan's own)."""


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def logical_name(m: re.Match) -> str:
    """The legacy "schema.table" a placeholder names (quotes removed)."""
    return f"{_unquote(m.group(1))}.{_unquote(m.group(2))}"


@dataclass
class SmokeQuery:
    name: str  # the file's stem: names the gate check
    path: Path
    description: str
    text: str
    names: list[str] = field(default_factory=list)  # legacy logical names, in order of appearance

    def render(self, relation_for: Callable[[str], sql.Composable]) -> sql.Composed:
        """The query with each placeholder replaced by relation_for(logical name)."""
        parts: list[sql.Composable] = []
        pos = 0
        for m in PLACEHOLDER.finditer(self.text):
            parts.append(sql.SQL(self.text[pos:m.start()]))
            parts.append(relation_for(logical_name(m)))
            pos = m.end()
        parts.append(sql.SQL(self.text[pos:]))
        return sql.Composed(parts)

    def legacy(self, plan: Plan | None = None, held: dict[str, int] | None = None) -> sql.Composed:
        """The query over the legacy tables; a table with quarantined rows (`held`: rows per
        step name, checks.quarantine.counts) without them: they are accounted for, not migrated."""
        def relation(name: str) -> sql.Composable:
            ident = sql.Identifier(*name.split("."))
            step = plan.step_for_source(*name.split(".")) if plan is not None and held else None
            if step is None or not held.get(step.name):
                return ident
            return sql.SQL("(SELECT * FROM {} AS s WHERE {})").format(ident, not_quarantined(plan, step))
        return self.render(relation)

    def through_registry(self, conn, plan: Plan) -> sql.Composed:
        """Raises registry.NotRegistered naming the first placeholder the registry cannot resolve."""
        resolved = {n: resolve(conn, n, plan=plan) for n in self.names}
        return self.render(lambda name: resolved[name].relation())


def smoke_dir(folder: str | Path | None = None, plan: Plan | None = None) -> Path | None:
    """The smoke-query folder: the one given (a run param, `--dir`), else $CONSOLIDATION_SMOKE_DIR,
    else the plan's `smoke_dir` (relative to the plan file); None when none is named."""
    chosen = folder or os.environ.get(SMOKE_DIR_ENV)
    if chosen:
        return Path(chosen)
    if plan is None:  # the configured plan (CONSOLIDATION_PLAN, else the bundled one)
        from consolidation.core.plan import load_plan
        plan = load_plan()
    return plan.smoke_folder()


def load_queries(folder: str | Path | None = None, plan: Plan | None = None) -> list[SmokeQuery]:
    """Every *.sql file of the smoke folder, by file name, validated."""
    base = smoke_dir(folder, plan)
    if base is None:
        where = f"plan file {plan.path}" if plan is not None and plan.path else "the plan"
        raise SmokeError(f"{where} names no smoke-query folder: add `smoke_dir: FOLDER` (relative to the plan file) "
                         "holding the services' queries as *.sql (see the README, 'Service smoke queries'), "
                         f"or set {SMOKE_DIR_ENV}")
    files = sorted(base.glob("*.sql"))
    if not files:
        raise SmokeError(f"no smoke queries in {base}: add at least one *.sql file "
                         f"(the plan's `smoke_dir`, or {SMOKE_DIR_ENV}, names this folder)")
    return [parse(p.read_text(encoding="utf-8"), p) for p in files]


def parse(text: str, path: Path) -> SmokeQuery:
    lines = text.strip().splitlines()
    doc = []
    for line in lines:
        if not line.lstrip().startswith("--"):
            break
        doc.append(line.lstrip()[2:].strip())
    body = text.strip().rstrip(";").strip()
    where = f"smoke query {path}"
    # a `;` outside literals and quoted names ends the statement (quoted names may hold one)
    if "may not contain `;`" in (lexical_problem(_without_doc(body), "the query") or ""):
        raise SmokeError(f"{where}: one statement per file; split it or remove the inner ';'")
    # after its leading `--` description: one SELECT, literals read as the server reads them
    query = "\n".join(lines[len(doc):]).strip().rstrip(";").strip()
    problem = lexical_problem(query, "the query")
    if problem or not query.lower().startswith(("select", "with", "values", "table", "(")):
        raise SmokeError(f"{where}: {problem or 'the query does not start with SELECT'}; write one SELECT "
                         "(its description in leading -- lines only)")
    if "{{" in PLACEHOLDER.sub("", body):
        raise SmokeError(f"{where}: a placeholder is malformed; write {{{{schema.table}}}} (a name that is not "
                         'letters, digits and _ in double quotes, as in SQL: {{"My Schema"."Table"}})')
    matches = list(PLACEHOLDER.finditer(body))
    if not matches:
        raise SmokeError(f"{where}: names no table; refer to tables as {{{{schema.table}}}} AS alias")
    for m in matches:
        if not _ALIAS_AFTER.match(body, m.end()):
            raise SmokeError(f"{where}: {m.group(0)} needs an alias: write `{m.group(0)} AS x` "
                             "(the registry side is a subquery)")
    names = list(dict.fromkeys(logical_name(m) for m in matches))
    return SmokeQuery(path.stem, path, " ".join(d for d in doc if d), body, names)


def _without_doc(text: str) -> str:
    """The query without its leading `--` description lines."""
    lines = text.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def _legacy_exists(conn, name: str) -> bool:
    return relation_exists(conn, *name.split(".", 1))


def _rows(query: sql.Composable) -> sql.Composed:
    return sql.SQL("SELECT ROW(q.*) AS r FROM ({}) AS q").format(query)


def comparison(conn, plan: Plan, q: SmokeQuery) -> tuple[sql.Composed, str]:
    """(SQL returning the rows that differ, what it proves) for one smoke query."""
    what = f"smoke query {q.path.name}" + (f" ({q.description})" if q.description else "")
    try:
        through = q.through_registry(conn, plan)
    except NotRegistered as exc:
        return (sql.SQL("SELECT {} AS smoke_query, {} AS problem").format(sql.Literal(q.path.name), sql.Literal(str(exc))),
                f"{what} resolves every table through the registry")
    gone = [n for n in q.names if not _legacy_exists(conn, n)]
    if gone:  # after 4D: nothing to compare with, but the query must still run
        return (sql.SQL("SELECT NULL::text AS only_in, NULL::text AS row_text FROM ({}) AS q WHERE false").format(through),
                f"{what} runs through the registry (legacy {', '.join(gone)} gone: not compared)")
    held = quarantine.counts(conn, plan)
    minus = [n for n in q.names if (st := plan.step_for_source(*n.split("."))) is not None and held.get(st.name)]
    return (multiset_diff(_rows(q.legacy(plan, held)), _rows(through), "legacy", "registry"),
            f"{what} returns the same rows through the registry as from the legacy tables"
            + (f" (without the quarantined rows of {', '.join(minus)})" if minus else ""))


def smoke_checks(conn, plan: Plan, folder: str | Path | None = None) -> list[Check]:
    """One gate check per smoke query: the rows that differ between both renderings."""
    table = ".".join(plan.tool_table("registry"))
    checks = []
    for q in load_queries(folder, plan):
        if all(_legacy_exists(conn, n) for n in q.names):  # the database reads it before the gate runs it
            problem = select_problem(conn, _without_doc(q.legacy().as_string(conn)), "the query")
            if problem:
                raise SmokeError(f"smoke query {q.path}: {problem}; write one SELECT over {{{{schema.table}}}} AS alias")
        query, description = comparison(conn, plan, q)
        checks.append(Check(name=f"smoke_{q.name}", table=table, kind="rows", description=description,
                            query=query.as_string(conn)))
    return checks


@dataclass
class SmokeOutcome:
    name: str
    legacy_rows: int | None
    registry_rows: int | None
    differing: int | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.differing == 0


def run_smoke(conn, plan: Plan, folder: str | Path | None = None) -> list[SmokeOutcome]:
    """The smoke comparison without Great Expectations (CLI, diagnosis); reads, never writes."""
    import psycopg

    out = []
    held = quarantine.counts(conn, plan)
    for q in load_queries(folder, plan):
        try:
            through = q.through_registry(conn, plan)
            legacy = q.legacy(plan, held)
            legacy_n = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS q").format(legacy)).fetchone()[0]
            reg_n = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS q").format(through)).fetchone()[0]
            diff = conn.execute(sql.SQL("SELECT count(*) FROM ({}) AS d").format(
                multiset_diff(_rows(legacy), _rows(through), "legacy", "registry"))).fetchone()[0]
            out.append(SmokeOutcome(q.name, legacy_n, reg_n, diff))
        except (NotRegistered, psycopg.Error) as exc:
            conn.rollback()
            out.append(SmokeOutcome(q.name, None, None, None, " ".join(str(exc).split())))
    return out
