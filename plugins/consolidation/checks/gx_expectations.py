"""The gate's checks as Great Expectations expectations, and their results back as CheckResults.

Every check is SQL returning its unexpected rows (`check_query`: a rows check's own query, or,
for a column check, SQL over its table with the semantics of GX's column expectations). Up to
BATCH_SIZE checks, taken table by table, go to GX as ONE UnexpectedRowsExpectation
(`batch_query`): GX spends 20-40 ms on each expectation (validation graph, configuration
copies) and more on each validation, besides the query itself, which was most of a gate's
time. The batch is a single statement: each check's query is a MATERIALIZED CTE, read
twice, once for its count and once for a sample of SAMPLE_SIZE rows as JSON; one output row
per check that found unexpected rows (a batch returns at most BATCH_SIZE rows, under GX's fetch cap of 200). Every
check keeps its own count, sample and verdict. When the batch raises (one query fails: a
column a plan names wrongly, a missing table), the gate runs again, in another checkpoint,
each query the planner refuses alone and the rest as a batch (checks.gx._split), until each
error is named on its own check.

Each expectation carries its check index (or, for a batch, the list of indexes) in `meta`;
`to_check_results` maps a GX result back to its Check(s). An error never counts as a pass.
GX is imported lazily by the caller (checks.gx): this module only receives its expectations
module (`gxe`).
"""
from __future__ import annotations

import json
import re
from typing import Any

from psycopg import sql

SAMPLE_SIZE = 5
BATCH_SIZE = 50  # rows checks per batch expectation: its result rows stay under GX's 200-row cap
META_KEY = "consolidation_check"
BATCH_KEY = "consolidation_checks"
_MAX_ERROR = 500
_ALIAS = "consolidation_gate_check_"
_BIND_LIKE = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])", re.UNICODE)


def batches(checks: list, indexes: list[int]) -> list[list[int]]:
    """The check indexes in groups of at most BATCH_SIZE, taken table by table."""
    ordered = sorted(indexes, key=lambda i: (checks[i].table, i))
    return [ordered[start:start + BATCH_SIZE] for start in range(0, len(ordered), BATCH_SIZE)]


def suite_expectations(gxe, checks: list, groups: list[list[int]], relations: dict) -> list:
    """One expectation per group of check indexes (into `checks`): a group of one is that check
    alone, a larger one a batch. `relations`: {check table: (schema or None, name)} of the
    tables that exist."""
    out = []
    for group in groups:
        part = [(i, check_query(checks[i], relations.get(checks[i].table))) for i in group]
        if len(part) == 1:
            out.append(single(gxe, part[0][0], checks[part[0][0]], part[0][1]))
            continue
        tables = list(dict.fromkeys(checks[i].table for i, _ in part))
        names = ", ".join(f"{checks[i].table} {checks[i].name}" for i, _ in part)
        out.append(rows_expectation(gxe)(
            unexpected_rows_query=gx_query(batch_query(part)),
            description=f"{len(part)} checks on {len(tables)} tables, each without unexpected rows: {names}"[:2000],
            meta={BATCH_KEY: [i for i, _ in part], "tables": tables}))
    return out


def single(gxe, index: int, check, query: str):
    return rows_expectation(gxe)(
        unexpected_rows_query=gx_query(query), description=check.description,
        meta={META_KEY: index, "check": check.name, "table": check.table, "step": check.step,
              "kind": check.kind, "column": check.column})


def check_query(check, relation: tuple | None) -> str:
    """The SQL returning a check's unexpected rows. A column check's rows are its column's values
    (`value`; compound_unique: the columns), with the semantics of GX's column expectations:
    not_null - the NULLs; unique - every row whose non-NULL value occurs more than once;
    compound_unique - every row without a NULL whose combination occurs more than once (GX
    matches the duplicate groups back on equality, so a NULL never makes a duplicate - as in a
    UNIQUE constraint). tests/test_gates.py compares the counts with GX's own expectations."""
    if check.kind == "rows":
        return check.query or ""
    table = sql.Identifier(*[p for p in relation if p is not None])
    cols = [sql.Identifier(c) for c in check.columns]
    if check.kind == "not_null":
        q = sql.SQL("SELECT {c} AS value FROM {t} WHERE {c} IS NULL").format(c=cols[0], t=table)
    elif check.kind == "unique":
        q = sql.SQL("SELECT value FROM (SELECT {c} AS value, count(*) OVER (PARTITION BY {c}) AS n "
                    "FROM {t} WHERE {c} IS NOT NULL) AS d WHERE n > 1").format(c=cols[0], t=table)
    else:
        listed = sql.SQL(", ").join(cols)
        none_null = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(c) for c in cols)
        q = sql.SQL("SELECT {l} FROM (SELECT {l}, count(*) OVER (PARTITION BY {l}) AS consolidation_n "
                    "FROM {t} WHERE {a}) AS d WHERE consolidation_n > 1").format(
                        l=listed, t=table, a=none_null)
    return q.as_string()


def batch_query(items: list[tuple[int, str]]) -> str:
    """One statement running every (index, query): a row (check_index, unexpected, sample) per
    check with unexpected rows. Each query is a MATERIALIZED CTE, so it runs once for both its
    count and its sample (counting it and then running it again for a sample only when it
    failed was 15 % slower on PostgreSQL 18 and 13x slower on 15: its planner made a bad plan
    of count(*) over the 4B checks). The rows of a failing check are kept by the server for the
    statement (work_mem, then temporary files). The newline before each `)` ends a trailing
    `--` comment. The queries are the engine's own (identifiers composed with psycopg.sql) or a
    smoke file proven to be one SELECT that parses as a subquery
    (core.columns.check.select_problem)."""
    # a CTE's name hides a table of that name from the queries: one nobody would give a table
    ctes = ",\n".join(f"{_ALIAS}{i} AS MATERIALIZED (\n{statement_body(q)}\n)" for i, q in items)
    rows = "\nUNION ALL\n".join(
        f"SELECT {i} AS check_index, (SELECT count(*) FROM {_ALIAS}{i}) AS unexpected, "
        f"(SELECT json_agg(s.r) FROM (SELECT to_json({_ALIAS}{i}) AS r FROM {_ALIAS}{i} LIMIT {SAMPLE_SIZE}) AS s) "
        "AS sample" for i, _ in items)
    return f"WITH {ctes}\nSELECT * FROM (\n{rows}\n) AS checks WHERE unexpected > 0"


def statement_body(query: str) -> str:
    """The query without surrounding space and one trailing `;` (to nest it, or EXPLAIN it)."""
    body = query.strip()
    return body[:-1] if body.endswith(";") else body


_ROWS_EXPECTATION = None


def rows_expectation(gxe):
    """UnexpectedRowsExpectation that runs its query once.

    GX's own computes two metrics from the same query, the rows and a COUNT(*) over it, so
    every check ran twice. This one asks only for the rows (GX fetches at most
    MAX_RESULT_RECORDS of them) and counts them; only when the fetch hit that cap - a check
    failing on many rows - does it run GX's own COUNT(*) metric too. Defined on first use: GX
    is imported lazily, and the class registers itself with GX when defined.
    """
    global _ROWS_EXPECTATION
    if _ROWS_EXPECTATION is None:
        from great_expectations.constants import MAX_RESULT_RECORDS
        from great_expectations.expectations.registry import get_metric_kwargs
        from great_expectations.validator.metric_configuration import MetricConfiguration

        class ConsolidationUnexpectedRows(gxe.UnexpectedRowsExpectation):
            metric_dependencies = ("unexpected_rows_query.table",)

            def _validate(self, metrics, runtime_configuration=None, execution_engine=None):
                rows = metrics["unexpected_rows_query.table"]
                count = len(rows)
                if count >= MAX_RESULT_RECORDS:
                    # GX's own COUNT(*) metric, with the kwargs GX itself would give it
                    name = "unexpected_rows_query.row_count"
                    kwargs = get_metric_kwargs(metric_name=name, configuration=self.configuration,
                                               runtime_configuration=runtime_configuration)
                    metric = MetricConfiguration(metric_name=name,
                                                 metric_domain_kwargs=kwargs["metric_domain_kwargs"],
                                                 metric_value_kwargs=kwargs["metric_value_kwargs"])
                    count = int(execution_engine.resolve_metrics([metric])[metric.id])
                fmt = self._get_result_format(runtime_configuration=runtime_configuration)
                fmt = fmt.get("result_format") if isinstance(fmt, dict) else fmt
                if fmt == "BOOLEAN_ONLY":  # the shapes of GX's own expectation
                    return {"success": count == 0}
                result = {"observed_value": count}
                if fmt == "COMPLETE":
                    result["details"] = {"unexpected_rows": rows}
                return {"success": count == 0, "result": result}

        _ROWS_EXPECTATION = ConsolidationUnexpectedRows
    return _ROWS_EXPECTATION


def to_check_results(checks: list, r, result_type) -> tuple[dict[int, Any], list[int]]:
    """({check index: CheckResult}, indexes to re-run one by one) for one GX result `r`."""
    meta = (r.expectation_config.meta or {}) if r.expectation_config else {}
    if META_KEY in meta:
        i = int(meta[META_KEY])
        return {i: _single_result(checks[i], r, result_type)}, []
    part = [int(i) for i in meta.get(BATCH_KEY) or []]
    if not part:
        return {}, []
    if exception_text(r.exception_info) or not isinstance((r.result or {}).get("observed_value"), int):
        return {}, part  # the batch raised: each check alone names its own error
    found = {int(row["check_index"]): row
             for row in ((r.result.get("details") or {}).get("unexpected_rows") or [])}
    out = {}
    for i in part:
        row = found.get(i)
        n = int(row["unexpected"]) if row else 0
        sample = (row.get("sample") if row else None) or []
        if isinstance(sample, str):  # a driver that returns json as text
            sample = json.loads(sample)
        out[i] = result_type(checks[i], n == 0, n, _sample(checks[i], sample), None)
    return out, []


def _single_result(check, r, result_type):
    error = exception_text(r.exception_info)
    res = r.result or {}
    observed = res.get("observed_value")
    sample = ((res.get("details") or {}).get("unexpected_rows") or [])[:SAMPLE_SIZE]
    observed = int(observed) if isinstance(observed, (int, float)) else None
    passed = bool(r.success) and error is None
    if not passed and error is None and observed is None:
        error = "Great Expectations reported a failure without a count"
    return result_type(check, passed, observed, _sample(check, sample), error)


def _sample(check, rows: list) -> list:
    """A rows check's rows as they are; a one-column check's rows as its values."""
    rows = jsonable(rows[:SAMPLE_SIZE])
    if check.kind in ("unique", "not_null"):
        return [row.get("value") if isinstance(row, dict) else row for row in rows]
    return rows


def exception_text(info) -> str | None:
    """The message of an exception GX caught, in either of its two shapes, or None."""
    if not info:
        return None
    if "raised_exception" in info:
        entries = [info]
    else:  # {MetricConfigurationID: {"raised_exception": ..., "exception_message": ...}}
        entries = [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception"):
            message = entry.get("exception_message") or "exception without a message"
            return clean_error(str(message))
    return None


def gx_query(query: str) -> str:
    """The query as GX must receive it: braces doubled (str.format), `:name` escaped (text())."""
    query = query.replace("{", "{{").replace("}", "}}")
    return escape_binds(query)


def escape_binds(query: str) -> str:
    """`:name` look-alikes escaped: GX runs queries through sqlalchemy.text()."""
    return _BIND_LIKE.sub(lambda m: "\\:" + m.group(1), query)


def clean_error(text: str) -> str:
    """The database's message without SQLAlchemy's echo of the SQL and its doc link."""
    for marker in ("\n[SQL:", "[SQL:", "(Background on this error"):
        text = text.split(marker, 1)[0]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    # psycopg appends "LINE 1: ..." and a caret line: position hints for a query nobody sees
    kept = [ln for ln in lines if not re.match(r"\s*(LINE \d+:|\^)", ln)]
    return _short(" ".join(kept or lines) or "unknown error")


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 3] + "..."


def jsonable(value):
    return json.loads(json.dumps(value, default=str))
