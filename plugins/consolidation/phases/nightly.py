"""Nightly validation of the consolidated schemas, after the migration.

The expectations are derived every night from the plan and the live catalog, never listed
by hand per table. For each consolidated schema (one Airflow TaskGroup each, one Great
Expectations checkpoint each, via gates.run_gate):

  schema_exists         the consolidated schema is there.
  key_unique            every table's key is unique (expect_column_values_to_be_unique, or
  key_not_null          expect_compound_columns_to_be_unique) and never null. The key is the
                        catalog's primary key; a table whose primary key has gone keeps being
                        checked on the key remembered from the previous validation (history),
                        else on the plan's key for that target (while the plan can still be
                        derived). Tables with none of these are listed as "not key-checked".
  foreign_key_resolves  every foreign key of the catalog resolves (MATCH SIMPLE semantics).
  rows_not_dropped      a migrated table (a plan target that is a table) holds at least as many
                        rows as at its BASELINE: the count stored by the latest validation in
                        which this check passed, in another run. A drop passes only when the
                        ledger explains it after that baseline: a successful row with
                        details->>'allow_count_drop' = '<schema>.<table>' whose optional
                        details->>'min_rows' is not above the current count (written by
                        `python -m consolidation validate --accept-drop TABLE --reason TEXT`,
                        kind 'approval', phase 'nightly'), or a successful 'rollback' row for
                        that target (or for no particular target). Because the baseline only
                        moves on a pass, a silent loss keeps failing every night until the rows
                        are restored or the drop is accepted; it never "heals" by itself.
  freshness             for plan steps with `freshness: {column, max_age_hours}`: the newest
                        value of the column, or the time 4B migrated the target if later, is at
                        most max_age_hours old. Measuring from the migration (ledger: the
                        latest successful 4B step into the target) lets a freshly migrated copy
                        of old data pass, and still catches the real failure mode of a
                        consolidation: nothing arrives in the new table any more (the writer
                        still writes to the old one). The plan's rule is unchanged.
  registry_resolves     when the tool's registry table exists (plan.tool_table('registry'),
                        written by phase 4C): every entry's target names an existing relation.
                        Its columns are read defensively (REGISTRY_PAIRS / REGISTRY_COLUMNS);
                        a registry whose columns are not understood FAILS with the columns it
                        has - a check that cannot run is never a pass.

The tool's own tables (<tool schema>.<tool prefix>*) are not validated as data.

Every check's outcome is stored, per run, table and check, in the history table
plan.tool_table('validation_history'): run_id, checked_at (database time when the row counts
were taken), schema_name, table_name, check_name, column_names, passed, observed (GX's count of
unexpected values/rows), rows (the table's count(*) taken before the checks ran), expectation
(GX expectation type), description, details (sample, error, baseline, key source) - the
columns the brief calls schema/table/check are schema_name/table_name/check_name (no quoting
of reserved words). GX validation results go to state_dir()/gx (gates.run_gate). The verdict
of a run is one ledger row (phase 'nightly', kind 'gate', name 'nightly_validation') and an
offline HTML page (inline CSS, no CDN) state_dir()/nightly/<run>/index.html, with
result.json beside it; the Airflow UI plugin (plugins/consolidation_ui.py) serves them.
GX Data Docs are not built: their pages load CSS/JS from CDNs and re-render every stored
result each time; the page here is the equivalent, built from the history table.
"""
from __future__ import annotations

import argparse
import html
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from psycopg import sql

from consolidation.core import config, ledger
from consolidation.checks.gx import Check, CheckResult, run_gate
from consolidation.core.plan import Plan

log = logging.getLogger(__name__)

PHASE = "nightly"
DAG_ID = "consolidation_nightly_validation"
HISTORY = "validation_history"
REGISTRY = "registry"
COUNT_CHECK = "rows_not_dropped"
EXPECTATIONS = {
    "rows": "unexpected_rows_expectation",
    "unique": "expect_column_values_to_be_unique",
    "not_null": "expect_column_values_to_not_be_null",
    "compound_unique": "expect_compound_columns_to_be_unique",
}
# Registry columns naming an entry's target relation: a (schema, table) pair, or one
# column holding "schema.table". The first match wins; see _registry_target().
REGISTRY_PAIRS = [("physical_schema", "physical_table"), ("target_schema", "target_table"), ("new_schema", "new_table"),
                  ("consolidated_schema", "consolidated_table"), ("schema_name", "table_name")]
REGISTRY_COLUMNS = ["target", "target_relation", "target_name", "new_name", "new_relation",
                    "consolidated_name", "qualified_name", "relation"]


class NightlyFailed(RuntimeError):
    """The nightly validation found a problem; str() is the summary naming each one."""


# --------------------------------------------------------------------- tables
def history_ident(plan: Plan) -> sql.Composed:
    return ledger.tool_ident(plan, HISTORY)


def _qualified(plan: Plan, name: str) -> str:
    return ".".join(plan.tool_table(name))


def ensure_history(conn, plan: Plan) -> None:
    """Create the validation history table (idempotent, additive)."""
    h = history_ident(plan)
    conn.execute(sql.SQL("""
        CREATE TABLE IF NOT EXISTS {h} (
            id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            run_id       text NOT NULL,
            checked_at   timestamptz NOT NULL,
            schema_name  text NOT NULL,
            table_name   text NOT NULL,
            check_name   text NOT NULL,
            column_names text,
            passed       boolean NOT NULL,
            observed     bigint,
            rows         bigint,
            expectation  text,
            description  text,
            details      jsonb NOT NULL DEFAULT '{{}}'::jsonb,
            gx_run_id    text,
            triggered_by text,
            recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp()
        )""").format(h=h))
    prefix = plan.tool_prefix + HISTORY
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (schema_name, table_name, check_name, checked_at)")
                 .format(sql.Identifier(f"{prefix}_lookup_idx"), h))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (run_id)")
                 .format(sql.Identifier(f"{prefix}_run_idx"), h))


def _exists(conn, schema: str, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                        (sql.Identifier(schema, table).as_string(conn),)).fetchone()[0]


def require_migrated(conn, plan: Plan) -> None:
    """The nightly validates a migrated database: the ledger must exist."""
    if not ledger.tool_tables_exist(conn, plan):
        raise NightlyFailed(
            f"no ledger ({_qualified(plan, 'ledger')}): this database has not been migrated; "
            "run phase4a_schema_extension and phase4b_data_migration first")


# --------------------------------------------------------------------- checks
@dataclass
class SchemaChecks:
    """The checks of one consolidated schema, and what the page needs to know about them."""

    schema: str
    checks: list[Check]
    counts: dict[str, int | None]  # table -> count(*) before the checks (None: missing)
    checked_at: datetime
    key_source: dict[str, str] = field(default_factory=dict)  # table -> primary_key|remembered|plan
    baselines: dict[str, dict] = field(default_factory=dict)  # table -> {rows, run_id, checked_at}
    not_key_checked: list[str] = field(default_factory=list)


def migrated_tables(plan: Plan) -> list[str]:
    """Plan targets that receive rows (recreated views are not tables)."""
    return list(dict.fromkeys(s.target for s in plan.migrating_steps() if not s.is_recreated_view))


def _is_tool_table(plan: Plan, schema: str, table: str) -> bool:
    return schema == plan.tool_schema and table.startswith(plan.tool_prefix)


def _tables(conn, schema: str) -> dict[str, list[str]]:
    """{table: primary key columns} of the ordinary/partitioned tables of a schema."""
    rows = conn.execute("""
        SELECT c.relname,
               ARRAY(SELECT a.attname::text FROM pg_constraint con
                       CROSS JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum
                      WHERE con.conrelid = c.oid AND con.contype = 'p' ORDER BY k.ord)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         ORDER BY c.relname""", (schema,)).fetchall()
    return {name: list(pk) for name, pk in rows}


def _foreign_keys(conn, schema: str) -> list[tuple]:
    return conn.execute("""
        SELECT con.conname, c.relname,
               ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
                       JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
               rn.nspname, rc.relname,
               ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
                       JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class rc ON rc.oid = con.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
         WHERE con.contype = 'f' AND n.nspname = %s
         ORDER BY c.relname, con.conname""", (schema,)).fetchall()


def _remembered_keys(conn, plan: Plan, schema: str) -> dict[str, list[str]]:
    """The key each table was checked on at its latest validation (history)."""
    if not _exists(conn, *plan.tool_table(HISTORY)):
        return {}
    rows = conn.execute(sql.SQL("""
        SELECT DISTINCT ON (table_name) table_name, column_names FROM {h}
         WHERE schema_name = %s AND check_name = 'key_unique' AND column_names IS NOT NULL
         ORDER BY table_name, checked_at DESC, id DESC""").format(h=history_ident(plan)), (schema,)).fetchall()
    return {t: [c for c in cols.split(",") if c] for t, cols in rows}


def _plan_keys(conn, plan: Plan) -> dict[str, list[str]]:
    """{target: key} from the plan's target specs, or {} when they cannot be derived
    (e.g. after 4D dropped the legacy sources the specs are derived from)."""
    from consolidation.core.session import load_specs

    try:
        with conn.transaction():
            _, specs = load_specs(conn, plan)
    except Exception as exc:  # the plan's view of the keys is a fallback only
        log.info("plan keys not available (%s): tables without a primary key use remembered keys only", exc)
        return {}
    return {name: list(spec.key) for name, spec in specs.items() if spec.kind == "table" and spec.key}


def _baselines(conn, plan: Plan, schema: str, run_id: str) -> dict[str, dict]:
    if not _exists(conn, *plan.tool_table(HISTORY)):
        return {}
    cur = conn.execute(sql.SQL("""
        SELECT DISTINCT ON (table_name) table_name, rows, run_id, checked_at FROM {h}
         WHERE schema_name = %s AND check_name = %s AND passed AND rows IS NOT NULL AND run_id <> %s
         ORDER BY table_name, checked_at DESC, id DESC""").format(h=history_ident(plan)),
        (schema, COUNT_CHECK, run_id))
    return {t: {"rows": n, "run_id": r, "checked_at": at.isoformat()} for t, n, r, at in cur.fetchall()}


def _ident(qualified: str) -> sql.Composed:
    schema, table = qualified.split(".", 1)
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def build_checks(conn, plan: Plan, schema: str, *, run_id: str) -> SchemaChecks:
    """The checks of one consolidated schema, from the plan and the live catalog.

    The "rows" queries return text/number/json columns only: GX serialises the sampled rows,
    and one value it cannot serialise (an interval, say) would fail the whole checkpoint.
    """
    def render(q: sql.Composable) -> str:
        return q.as_string(conn)

    checked_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    tables = {t: pk for t, pk in _tables(conn, schema).items() if not _is_tool_table(plan, schema, t)}
    targets = [t for t in migrated_tables(plan) if t.split(".", 1)[0] == schema]
    out = SchemaChecks(schema, [], {}, checked_at, baselines=_baselines(conn, plan, schema, run_id))

    out.checks.append(Check(
        name="schema_exists", table=schema, kind="rows",
        description=f"the consolidated schema {schema} exists",
        query=render(sql.SQL("SELECT {s}::text AS missing_schema WHERE to_regnamespace({s}) IS NULL").format(
            s=sql.Literal(schema)))))

    # -- keys
    remembered = _remembered_keys(conn, plan, schema)
    plan_keys: dict[str, list[str]] | None = None
    for table, pk in tables.items():
        qualified = f"{schema}.{table}"
        key, source = pk, "primary_key"
        if not key and table in remembered:
            key, source = remembered[table], "remembered"
        if not key:
            if plan_keys is None:
                plan_keys = _plan_keys(conn, plan)
            key, source = plan_keys.get(qualified, []), "plan"
        if not key:
            out.not_key_checked.append(qualified)
            continue
        out.key_source[qualified] = source
        how = {"primary_key": "primary key", "remembered": "key checked at the previous validation "
               "(no primary key now)", "plan": "the plan's key (no primary key)"}[source]
        if len(key) == 1:
            out.checks.append(Check(name="key_unique", table=qualified, kind="unique", column=key[0],
                                    description=f"{qualified}.{key[0]} ({how}) is unique"))
        else:
            out.checks.append(Check(name="key_unique", table=qualified, kind="compound_unique",
                                    column=",".join(key),
                                    description=f"({', '.join(key)}) ({how}) is unique in {qualified}"))
        for col in key:
            out.checks.append(Check(name="key_not_null", table=qualified, kind="not_null", column=col,
                                    description=f"{qualified}.{col} ({how}) is never null"))

    # -- foreign keys
    for conname, table, cols, ref_schema, ref_table, ref_cols in _foreign_keys(conn, schema):
        if _is_tool_table(plan, schema, table):
            continue
        qualified = f"{schema}.{table}"
        out.checks.append(Check(
            name="foreign_key_resolves", table=qualified, kind="rows", column=",".join(cols),
            description=f"{qualified}({', '.join(cols)}) -> {ref_schema}.{ref_table}({', '.join(ref_cols)}) "
                        f"resolves ({conname})",
            query=render(sql.SQL(
                "SELECT {cols} FROM {t} AS c WHERE {notnull} AND NOT EXISTS "
                "(SELECT 1 FROM {p} AS p WHERE {match})").format(
                cols=sql.SQL(", ").join(sql.SQL("{}::text AS {}").format(sql.Identifier("c", c), sql.Identifier(c))
                                        for c in cols),
                t=sql.Identifier(schema, table),
                notnull=sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier("c", c)) for c in cols),
                p=sql.Identifier(ref_schema, ref_table),
                match=sql.SQL(" AND ").join(sql.SQL("{} = {}").format(sql.Identifier("p", r), sql.Identifier("c", c))
                                            for c, r in zip(cols, ref_cols))))))

    # -- row counts of migrated tables, against the baseline, unless the ledger says why
    lg = ledger.tool_ident(plan, "ledger")
    for qualified in targets:
        table = qualified.split(".", 1)[1]
        if table not in tables and _exists(conn, schema, table):
            continue  # a view (snapshot targets are tables; a view here is not ours to count)
        out.checks.append(Check(
            name=COUNT_CHECK, table=qualified, kind="rows",
            description=f"{qualified} holds at least as many rows as at the last passing validation, "
                        "unless the ledger records why (allow_count_drop or rollback)",
            query=render(sql.SQL("""
                SELECT cur.n AS current_rows, b.rows AS baseline_rows, b.rows - cur.n AS rows_lost,
                       b.run_id AS baseline_run, b.checked_at::text AS baseline_checked_at
                  FROM (SELECT count(*) AS n FROM {t}) AS cur
                 CROSS JOIN (SELECT h.rows, h.run_id, h.checked_at FROM {h} AS h
                              WHERE h.schema_name = {s} AND h.table_name = {tn} AND h.check_name = {c}
                                AND h.passed AND h.rows IS NOT NULL AND h.run_id <> {run}
                              ORDER BY h.checked_at DESC, h.id DESC LIMIT 1) AS b
                 WHERE cur.n < b.rows
                   AND NOT EXISTS (
                       SELECT 1 FROM {lg} AS l
                        WHERE l.status = 'success' AND l.started_at > b.checked_at
                          AND ((l.kind = 'rollback' AND (l.target IS NULL OR l.target = {q}))
                               OR (l.details->>'allow_count_drop' = {q}
                                   AND cur.n >= COALESCE((l.details->>'min_rows')::bigint, 0))))""").format(
                t=_ident(qualified), h=history_ident(plan), s=sql.Literal(schema), tn=sql.Literal(table),
                c=sql.Literal(COUNT_CHECK), run=sql.Literal(run_id), lg=lg, q=sql.Literal(qualified)))))

    # -- freshness rules of the plan
    for step in plan.migrating_steps():
        if step.freshness is None or step.target_schema != schema:
            continue
        f = step.freshness
        out.checks.append(Check(
            name="freshness", table=step.target, kind="rows", column=f.column, step=step.name,
            description=f"the newest {step.target}.{f.column} (or the 4B migration of the table, if later) "
                        f"is at most {f.max_age_hours:g} hours old",
            query=render(sql.SQL("""
                SELECT x.newest::text AS newest, x.migrated_at::text AS migrated_at,
                       date_trunc('second', now() - greatest(x.newest, x.migrated_at))::text AS age,
                       {hours}::float8 AS max_age_hours
                  FROM (SELECT (SELECT max({col}) FROM {t})::timestamptz AS newest,
                               (SELECT max(l.finished_at) FROM {lg} AS l
                                 WHERE l.phase = '4B' AND l.kind = 'step' AND l.status = 'success'
                                   AND l.target = {q}) AS migrated_at) AS x
                 WHERE greatest(x.newest, x.migrated_at) IS NULL
                    OR now() - greatest(x.newest, x.migrated_at) > make_interval(secs => {secs})""").format(
                col=sql.Identifier(f.column), t=_ident(step.target), lg=lg, q=sql.Literal(step.target),
                hours=sql.Literal(f.max_age_hours), secs=sql.Literal(f.max_age_hours * 3600.0)))))

    # -- the registry (phase 4C)
    reg_schema, reg_table = plan.tool_table(REGISTRY)
    if reg_schema == schema and _exists(conn, reg_schema, reg_table):
        out.checks.append(_registry_check(conn, plan))
        out.counts[f"{reg_schema}.{reg_table}"] = _count(conn, reg_schema, reg_table)

    for table in tables:
        out.counts[f"{schema}.{table}"] = _count(conn, schema, table)
    for qualified in targets:
        out.counts.setdefault(qualified, None)  # a migrated table that is missing
    conn.commit()
    return out


def _count(conn, schema: str, table: str) -> int | None:
    if not _exists(conn, schema, table):
        return None
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()[0]


def _registry_target(columns: set[str]) -> tuple[str, ...] | None:
    for pair in REGISTRY_PAIRS:
        if set(pair) <= columns:
            return pair
    for col in REGISTRY_COLUMNS:
        if col in columns:
            return (col,)
    return None


def _registry_check(conn, plan: Plan) -> Check:
    schema, table = plan.tool_table(REGISTRY)
    qualified = f"{schema}.{table}"
    columns = dict(conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (sql.Identifier(schema, table).as_string(conn),)).fetchall())
    target = _registry_target(set(columns))
    t = sql.Identifier(schema, table)
    if target is None:
        problem = (f"no column naming the target relation among {', '.join(sorted(columns))}; "
                   f"expected one of the pairs {REGISTRY_PAIRS} or a column {REGISTRY_COLUMNS} "
                   "(consolidation.phases.nightly.REGISTRY_*)")
        return Check(name="registry_resolves", table=qualified, kind="rows",
                     description=f"the entries of {qualified} can be read (its columns are understood)",
                     query=sql.SQL("SELECT {q}::text AS registry, {p}::text AS problem").format(
                         q=sql.Literal(qualified), p=sql.Literal(problem)).as_string(conn))
    if len(target) == 2:
        name = sql.SQL("quote_ident(r.{}::text) || '.' || quote_ident(r.{}::text)").format(
            sql.Identifier(target[0]), sql.Identifier(target[1]))
        nonnull = sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(target[1]))
    else:
        name = sql.SQL("r.{}::text").format(sql.Identifier(target[0]))
        nonnull = sql.SQL("r.{} IS NOT NULL AND r.{}::text <> ''").format(
            sql.Identifier(target[0]), sql.Identifier(target[0]))
    # to_regclass() raises on malformed names (pg_input_is_valid is PG16+): a regex guard first.
    valid = sql.SQL("""y.target ~ '^("([^"]|"")+"|[^". ]+)(\\.("([^"]|"")+"|[^". ]+))?$'""")
    parts = [sql.SQL("SELECT x.target, 'relation does not exist' AS problem, x.entry - 'columns' AS entry "
                     "FROM x WHERE x.rel IS NULL")]
    # The 4C registry (consolidation.phases.registry) also maps columns: they must exist too.
    column_sources = []
    if columns.get("columns") == "jsonb":
        column_sources.append(sql.SQL("SELECT c->>'column' FROM jsonb_array_elements("
                                      "CASE WHEN jsonb_typeof(x.entry->'columns') = 'array' "
                                      "THEN x.entry->'columns' ELSE '[]'::jsonb END) AS c"))
    if "filter_column" in columns:
        column_sources.append(sql.SQL("SELECT x.entry->>'filter_column'"))
    if column_sources:
        parts.append(sql.SQL(
            "SELECT x.target, 'column ' || c.col || ' does not exist', x.entry - 'columns' FROM x "
            "CROSS JOIN LATERAL ({src}) AS c(col) "
            "WHERE x.rel IS NOT NULL AND c.col IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = x.rel "
            "AND a.attname = c.col AND a.attnum > 0 AND NOT a.attisdropped)").format(
            src=sql.SQL(" UNION ").join(column_sources)))
    # CASE: to_regclass only ever sees well-formed names (SQL does not short-circuit AND/OR).
    query = sql.SQL("WITH x AS (SELECT y.target, y.entry, CASE WHEN {valid} THEN to_regclass(y.target) END AS rel "
                    "FROM (SELECT {name} AS target, to_jsonb(r) AS entry FROM {t} AS r WHERE {nonnull}) AS y) "
                    "{body}").format(valid=valid, name=name, t=t, nonnull=nonnull,
                                     body=sql.SQL(" UNION ALL ").join(parts))
    what = "relation" + (" and every column it maps" if column_sources else "")
    return Check(name="registry_resolves", table=qualified, kind="rows", column=",".join(target),
                 description=f"every entry of {qualified} names an existing {what} "
                             f"(column{'s' if len(target) > 1 else ''} {', '.join(target)})",
                 query=query.as_string(conn))


# --------------------------------------------------------------------- running
@dataclass
class SchemaOutcome:
    schema: str
    passed: bool
    checks: int
    failures: list[dict]

    def summary(self) -> str:
        if self.passed:
            return f"{self.schema}: {self.checks} of {self.checks} checks passed"
        lines = [f"{self.schema}: {len(self.failures)} of {self.checks} checks FAILED"]
        lines += [f"  - {describe_failure(f)}" for f in self.failures]
        return "\n".join(lines)


def validate_schema(conn, dsn: str, plan: Plan, schema: str, *, run_id: str, user: str | None) -> SchemaOutcome:
    """Build, run (one GX checkpoint) and record the checks of one consolidated schema."""
    if not _exists(conn, *plan.tool_table(HISTORY)):
        ensure_history(conn, plan)
        conn.commit()
    built = build_checks(conn, plan, schema, run_id=run_id)
    result = run_gate(dsn, f"nightly_{schema}", built.checks)
    rows = [_history_row(built, r) for r in result.results]
    h = history_ident(plan)
    with conn.transaction():
        conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s AND schema_name = %s").format(h), (run_id, schema))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("""
                INSERT INTO {} (run_id, checked_at, schema_name, table_name, check_name, column_names, passed,
                                observed, rows, expectation, description, details, gx_run_id, triggered_by)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)""").format(h),
                [(run_id, built.checked_at, r["schema_name"], r["table_name"], r["check_name"], r["column_names"],
                  r["passed"], r["observed"], r["rows"], r["expectation"], r["description"],
                  json.dumps(r["details"], default=str), result.gx_run_id, user) for r in rows])
    conn.commit()
    failures = [r for r in rows if not r["passed"]]
    return SchemaOutcome(schema, not failures, len(rows), failures)


def _history_row(built: SchemaChecks, r: CheckResult) -> dict:
    c = r.check
    schema, _, table = c.table.partition(".") if "." in c.table else (c.table, "", "")
    details: dict = {"sample": r.sample}
    if r.error:
        details["error"] = r.error
    if c.table in built.key_source and c.name.startswith("key_"):
        details["key_source"] = built.key_source[c.table]
    if c.name == COUNT_CHECK:
        details["baseline"] = built.baselines.get(table)
    if c.name == "schema_exists":
        details["not_key_checked"] = built.not_key_checked
    if not r.passed:
        details["query"] = c.query
    return {"schema_name": schema, "table_name": table, "check_name": c.name, "column_names": c.column,
            "passed": r.passed, "observed": r.observed, "rows": built.counts.get(c.table),
            "expectation": EXPECTATIONS[c.kind], "description": c.description, "details": details}


def describe_failure(row: dict) -> str:
    """One line naming the table, the expectation and the observed value (and the fix when known)."""
    where = f"{row['schema_name']}.{row['table_name']}" if row["table_name"] else f"schema {row['schema_name']}"
    check = row["check_name"] + (f" on {row['column_names']}" if row.get("column_names") else "")
    details = row.get("details") or {}
    sample = details.get("sample") or []
    head = f"{where}: {check} ({row['expectation']})"
    if details.get("error"):
        return f"{head} could not be evaluated: {details['error']}"
    first = sample[0] if sample and isinstance(sample[0], dict) else {}
    n = row.get("observed")
    name = row["check_name"]
    if name == COUNT_CHECK and first:
        return (f"{head}: observed {first.get('current_rows')} rows, {first.get('baseline_rows')} at the last passing "
                f"validation (run {first.get('baseline_run')}, {first.get('baseline_checked_at')}): "
                f"{first.get('rows_lost')} rows gone and no ledger record says why; restore them, or record why with "
                f"`python -m consolidation validate --accept-drop {where} --reason TEXT`")
    if name == "freshness" and first:
        return (f"{head}: observed newest {row.get('column_names')} = {first.get('newest')}, migrated at "
                f"{first.get('migrated_at')}, age {first.get('age')} > {_num(first.get('max_age_hours'))} h; the table "
                "receives no new rows: check that its writers were switched to it")
    if name == "key_unique":
        return f"{head}: observed {n} rows with a duplicated key; e.g. {json.dumps(sample[:5], default=str)}"
    if name == "key_not_null":
        return f"{head}: observed {n} rows with a null key"
    if name == "foreign_key_resolves":
        return f"{head}: observed {n} rows referring to nothing; e.g. {json.dumps(sample[:5], default=str)}"
    if name == "registry_resolves":
        def entry(x):
            if not isinstance(x, dict):
                return str(x)
            e = x.get("entry") if isinstance(x.get("entry"), dict) else {}
            label = next((str(e[k]) for k in ("logical_name", "legacy_name", "name") if e.get(k)), None)
            return f"{label + ' -> ' if label else ''}{x.get('target')}: {x.get('problem', 'does not resolve')}"
        return f"{head}: observed {n} entries that do not resolve; e.g. " + "; ".join(entry(x) for x in sample[:5])
    return f"{head}: observed {n} unexpected; e.g. {json.dumps(sample[:5], default=str)}"


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


# --------------------------------------------------------------------- the verdict
@dataclass
class Verdict:
    run_id: str
    passed: bool
    rows: list[dict]
    problems: list[str]  # one line each
    page: Path | None = None

    def summary(self) -> str:
        failed = [r for r in self.rows if not r["passed"]]
        if self.passed:
            return f"nightly validation passed (run {self.run_id}): {len(self.rows)} of {len(self.rows)} checks"
        head = (f"nightly validation FAILED (run {self.run_id}): {len(failed)} of {len(self.rows)} checks failed"
                + (f", {len(self.problems) - len(failed)} schema(s) not validated"
                   if len(self.problems) > len(failed) else ""))
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def run_rows(conn, plan: Plan, run_id: str) -> list[dict]:
    """The history rows of one run, in schema/table/check order."""
    if not _exists(conn, *plan.tool_table(HISTORY)):
        return []
    cur = conn.execute(sql.SQL("""
        SELECT run_id, checked_at, schema_name, table_name, check_name, column_names, passed, observed, rows,
               expectation, description, details, gx_run_id, triggered_by
          FROM {} WHERE run_id = %s ORDER BY schema_name, table_name, check_name, column_names, id""").format(
        history_ident(plan)), (run_id,))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def finish(conn, plan: Plan, *, run_id: str, user: str | None, schemas: list[str] | None = None) -> Verdict:
    """Read the run's history, write the page and the ledger row; the verdict (never raises on failure)."""
    schemas = schemas or list(plan.consolidated_schemas)
    rows = run_rows(conn, plan, run_id)
    problems = [describe_failure(r) for r in rows if not r["passed"]]
    seen = {r["schema_name"] for r in rows}
    for schema in schemas:
        if schema not in seen:
            problems.append(f"schema {schema}: no validation was recorded in this run (its task failed before "
                            "recording: see that task's log)")
    verdict = Verdict(run_id, not problems, rows, problems)
    verdict.page = write_page(plan, verdict)
    if ledger.tool_tables_exist(conn, plan):
        failed = [r for r in rows if not r["passed"]]
        ledger.record(conn, plan, status=ledger.SUCCESS if verdict.passed else ledger.FAILED,
                      message=None if verdict.passed else verdict.summary()[:4000],
                      run_id=run_id, phase=PHASE, kind="gate", name="nightly_validation", triggered_by=user,
                      details={"checks": len(rows), "failed": len(failed), "page": str(verdict.page),
                               "plan_sha256": plan.sha256,
                               "failures": [f"{r['schema_name']}.{r['table_name']}:{r['check_name']}" for r in failed]})
        conn.commit()
    return verdict


def validate(dsn: str, plan: Plan, *, run_id: str, user: str | None,
             schemas: list[str] | None = None) -> Verdict:
    """All of it, in one process (the CLI): every schema, then the verdict."""
    from consolidation.core import db

    schemas = schemas or list(plan.consolidated_schemas)
    with db.connect(dsn) as conn:
        require_migrated(conn, plan)
        ensure_history(conn, plan)
        conn.commit()
        for schema in schemas:
            validate_schema(conn, dsn, plan, schema, run_id=run_id, user=user)
        return finish(conn, plan, run_id=run_id, user=user, schemas=schemas)


# --------------------------------------------------------------------- accepting a drop
def accept_drop(conn, plan: Plan, table: str, *, reason: str, min_rows: int | None = None,
                user: str | None = None) -> dict:
    """Record in the ledger why a migrated table may hold fewer rows at the next validation.

    The drop is accepted down to `min_rows` (default: the table's count now), for the
    validations after this row; the next passing validation makes the new count the baseline.
    """
    if table not in migrated_tables(plan):
        raise ValueError(f"{table} is not a migrated table of the plan; use one of: {', '.join(migrated_tables(plan))}")
    if not reason or not reason.strip():
        raise ValueError("--reason is required: the ledger records why rows may be gone")
    require_migrated(conn, plan)
    schema, name = table.split(".", 1)
    now = _count(conn, schema, name)
    if now is None:
        raise ValueError(f"{table} does not exist: a missing table is not a drop to accept; restore it")
    floor = now if min_rows is None else int(min_rows)
    entry = ledger.record(conn, plan, status=ledger.SUCCESS, message=reason.strip(), run_id=f"accept-drop__{_stamp()}",
                          phase=PHASE, kind="approval", name="allow_count_drop", target=table, triggered_by=user,
                          details={"allow_count_drop": table, "min_rows": floor, "rows_now": now,
                                   "reason": reason.strip()})
    conn.commit()
    return {"ledger_id": entry, "table": table, "min_rows": floor, "rows_now": now}


# --------------------------------------------------------------------- the page
def nightly_dir() -> Path:
    path = config.state_dir() / "nightly"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_run(run_id: str) -> str:
    """A run id as one file name (Airflow run ids contain ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("._") or "run"


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1f2328;background:#fff}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.verdict{display:inline-block;padding:.15rem .6rem;border-radius:4px;font-weight:600;color:#fff}
.ok{background:#1a7f37}.bad{background:#cf222e}.meta{color:#59636e;margin:.2rem 0 1rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}th,td{border:1px solid #d1d9e0;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}tr.fail td{background:#ffebe9}
td.n{text-align:right;font-variant-numeric:tabular-nums}code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;margin:0}ul.problems li{margin:.25rem 0}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def render_page(verdict: Verdict) -> str:
    rows = verdict.rows
    failed = [r for r in rows if not r["passed"]]
    checked_at = min((r["checked_at"] for r in rows), default=None)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Nightly validation {_e(verdict.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Nightly validation <span class='verdict {'ok' if verdict.passed else 'bad'}'>"
        f"{'PASSED' if verdict.passed else 'FAILED'}</span></h1>",
        f"<p class='meta'>run <code>{_e(verdict.run_id)}</code> &middot; checked at {_e(checked_at)} &middot; "
        f"{len(rows) - len(failed)} of {len(rows)} checks passed &middot; DAG <code>{DAG_ID}</code></p>",
    ]
    if verdict.problems:
        parts.append("<h2>Problems</h2><ul class='problems'>")
        parts += [f"<li>{_e(p)}</li>" for p in verdict.problems]
        parts.append("</ul>")
    by_schema: dict[str, list[dict]] = {}
    for r in rows:
        by_schema.setdefault(r["schema_name"], []).append(r)
    for schema, items in by_schema.items():
        bad = sum(1 for r in items if not r["passed"])
        parts.append(f"<h2>{_e(schema)} &mdash; {len(items) - bad} of {len(items)} passed</h2>")
        parts.append("<table><tr><th>table</th><th>check</th><th>column(s)</th><th>expectation</th>"
                     "<th>result</th><th>observed</th><th>rows</th><th>details</th></tr>")
        for r in sorted(items, key=lambda r: (r["passed"], r["table_name"], r["check_name"])):
            d = r.get("details") or {}
            extra = []
            if d.get("error"):
                extra.append(f"error: {d['error']}")
            if d.get("sample"):
                extra.append("sample: " + json.dumps(d["sample"], default=str))
            if d.get("baseline"):
                b = d["baseline"]
                extra.append(f"baseline {b.get('rows')} rows (run {b.get('run_id')})")
            elif r["check_name"] == COUNT_CHECK:
                extra.append("first validation of this table: baseline recorded")
            if d.get("key_source") and d["key_source"] != "primary_key":
                extra.append(f"key source: {d['key_source']}")
            if d.get("not_key_checked"):
                extra.append("not key-checked (no primary key, no remembered or planned key): "
                             + ", ".join(d["not_key_checked"]))
            extra.append(r.get("description") or "")
            parts.append(
                f"<tr class='{'' if r['passed'] else 'fail'}'><td>{_e(r['table_name'] or '(schema)')}</td>"
                f"<td>{_e(r['check_name'])}</td><td>{_e(r['column_names'])}</td><td>{_e(r['expectation'])}</td>"
                f"<td>{'ok' if r['passed'] else '<b>FAILED</b>'}</td><td class='n'>{_e(r['observed'])}</td>"
                f"<td class='n'>{_e(r['rows'])}</td><td><pre>{_e(chr(10).join(x for x in extra if x))}</pre></td></tr>")
        parts.append("</table>")
    gx = sorted({r["gx_run_id"] for r in rows if r.get("gx_run_id")})
    if gx:
        parts.append(f"<p class='meta'>Great Expectations validation results: {_e(config.state_dir() / 'gx')} "
                     f"(checkpoints {_e(', '.join(gx))})</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_page(plan: Plan, verdict: Verdict) -> Path:
    folder = nightly_dir() / safe_run(verdict.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    _atomic_write(page, render_page(verdict))
    _atomic_write(folder / "result.json", json.dumps({
        "run_id": verdict.run_id, "passed": verdict.passed, "summary": verdict.summary(),
        "checks": len(verdict.rows), "failed": sum(1 for r in verdict.rows if not r["passed"]),
        "problems": verdict.problems, "finished_at": datetime.now(timezone.utc).isoformat(),
        "plan_sha256": plan.sha256,
    }, indent=2, default=str))
    return page


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def latest_runs(limit: int = 30) -> list[dict]:
    """result.json of the latest validations written to the state folder, newest first."""
    found = []
    for result in nightly_dir().glob("*/result.json"):
        try:
            data = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data["folder"] = result.parent.name
        found.append(data)
    found.sort(key=lambda d: str(d.get("finished_at", "")), reverse=True)
    return found[:limit]


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


# --------------------------------------------------------------------- Airflow tasks
def _plan() -> Plan:
    from consolidation.core.plan import load_plan

    return load_plan()


def prepare_task(**context) -> dict:
    from consolidation.airflow.runtime import task_connection

    plan = _plan()
    with task_connection() as (_, conn):
        require_migrated(conn, plan)
        ensure_history(conn, plan)
        conn.commit()
    print(f"validation history: {_qualified(plan, HISTORY)}")
    return {"history": _qualified(plan, HISTORY)}


def validate_schema_task(schema: str, **context) -> dict:
    from consolidation.airflow.runtime import run_info, task_connection

    info = run_info(context)
    with task_connection() as (dsn, conn):
        outcome = validate_schema(conn, dsn, _plan(), schema, run_id=info.run_id, user=info.user)
    print(outcome.summary())
    if not outcome.passed:
        raise NightlyFailed(outcome.summary())
    return {"schema": schema, "checks": outcome.checks, "failed": 0}


def report_task(**context) -> dict:
    from consolidation.airflow.runtime import run_info, task_connection

    info = run_info(context)
    with task_connection() as (_, conn):
        verdict = finish(conn, _plan(), run_id=info.run_id, user=info.user)
    print(verdict.summary())
    print(f"page: {verdict.page}")
    if not verdict.passed:
        raise NightlyFailed(verdict.summary())
    return {"passed": True, "checks": len(verdict.rows), "page": str(verdict.page)}


# --------------------------------------------------------------------- CLI
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help="run the nightly validation now and print its table (exit 1 on failure)",
        description="Runs the checks of the nightly validation DAG against the database (CONSOLIDATION_DB_URL "
                    "or the embedded server), records them in the validation history and writes the page. "
                    "With --accept-drop, records in the ledger why a migrated table may hold fewer rows "
                    "at the next validation, and runs nothing.")
    p.add_argument("--schema", action="append", help="validate only this consolidated schema (repeatable)")
    p.add_argument("--failures-only", action="store_true", help="print only the failing checks")
    p.add_argument("--json", action="store_true", help="print the history rows of this run as JSON")
    p.add_argument("--accept-drop", metavar="SCHEMA.TABLE", help="accept fewer rows in this migrated table")
    p.add_argument("--reason", help="why the rows are gone (required with --accept-drop)")
    p.add_argument("--min-rows", type=int, help="with --accept-drop: the lowest count accepted (default: the count now)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from consolidation.core import db
    from consolidation.core.plan import PlanError, load_plan

    try:
        plan = load_plan()
    except PlanError as exc:
        print(f"plan rejected: {exc}", file=sys.stderr)
        return 2
    user = ledger.operator_name()
    if args.accept_drop:
        if not args.reason:
            print("--accept-drop needs --reason TEXT: the ledger records why the rows are gone", file=sys.stderr)
            return 2
        with db.connect() as conn:
            try:
                done = accept_drop(conn, plan, args.accept_drop, reason=args.reason, min_rows=args.min_rows, user=user)
            except (ValueError, NightlyFailed) as exc:
                print(str(exc), file=sys.stderr)
                return 2
        print(f"recorded (ledger id {done['ledger_id']}): {done['table']} may hold as few as {done['min_rows']} rows "
              f"(now {done['rows_now']}) at the next validation; reason: {args.reason.strip()}")
        return 0
    unknown = [s for s in args.schema or [] if s not in plan.consolidated_schemas]
    if unknown:
        print(f"not a consolidated schema: {', '.join(unknown)}; use {', '.join(plan.consolidated_schemas)}",
              file=sys.stderr)
        return 2
    dsn = db.resolve_dsn()
    try:
        verdict = validate(dsn, plan, run_id=f"cli__{_stamp()}", user=user, schemas=args.schema)
    except NightlyFailed as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(verdict.rows, indent=2, default=str))
    else:
        print(render_table(verdict.rows, failures_only=args.failures_only))
        print()
    print(verdict.summary())
    print(f"page: {verdict.page}")
    return 0 if verdict.passed else 1


def render_table(rows: list[dict], *, failures_only: bool = False) -> str:
    header = ("schema", "table", "check", "column(s)", "result", "observed", "rows")
    body = [(r["schema_name"], r["table_name"] or "(schema)", r["check_name"], r["column_names"] or "",
             "ok" if r["passed"] else "FAILED", "" if r["observed"] is None else str(r["observed"]),
             "" if r["rows"] is None else str(r["rows"]))
            for r in rows if not (failures_only and r["passed"])]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])
