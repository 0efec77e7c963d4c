"""The checks of the nightly validation, derived from the plan and the live catalog,
and the validation history they are compared with (see phases.nightly for what each proves)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from psycopg import sql

from consolidation.checks.gx import Check
from consolidation.core import ledger
from consolidation.core.plan import Plan
from consolidation.core.catalog import qualified_ident as _ident, relation_exists as _exists
from consolidation.phases import registry
from consolidation.phases.validation import migrated_rows

log = logging.getLogger(__name__)

HISTORY = "validation_history"
REGISTRY = "registry"
COUNT_CHECK = "rows_not_dropped"
EXPECTATIONS = {
    "rows": "unexpected_rows_expectation",
    "unique": "expect_column_values_to_be_unique",
    "not_null": "expect_column_values_to_not_be_null",
    "compound_unique": "expect_compound_columns_to_be_unique",
}


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
    not_row_compared: list[str] = field(default_factory=list)  # steps whose migrated rows cannot be compared


def migrated_tables(plan: Plan) -> list[str]:
    """Plan targets that receive rows (recreated views are not tables)."""
    return list(dict.fromkeys(s.target for s in plan.migrating_steps() if s.migrates_rows))


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
        query=render(sql.SQL("SELECT {s}::text AS missing_schema WHERE NOT EXISTS "
                             "(SELECT 1 FROM pg_namespace WHERE nspname = {s})").format(
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

    # -- the migrated rows against the legacy rows (or their baseline after 4D), the quarantine accounted
    row_checks, out.not_row_compared = migrated_rows.checks(conn, plan, schema, run_id=run_id)
    out.checks += row_checks

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


def _registry_check(conn, plan: Plan) -> Check:
    """Every entry of the 4C registry names an existing relation holding every column it maps;
    the registry's columns are its own (phases.registry.COLUMNS), or the check fails naming them."""
    schema, table = plan.tool_table(REGISTRY)
    qualified = f"{schema}.{table}"
    columns = [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (sql.Identifier(schema, table).as_string(conn),)).fetchall()]
    target = registry.TARGET_COLUMNS
    missing = [c for c in registry.COLUMNS if c not in columns]
    if missing:
        problem = (("no column naming the target relation" if set(target) & set(missing) else
                    "not the registry's columns") + f" among {', '.join(sorted(columns))}: "
                   f"missing {', '.join(missing)} (the registry's own columns: consolidation.phases.registry.COLUMNS)")
        return Check(name="registry_resolves", table=qualified, kind="rows",
                     description=f"the entries of {qualified} can be read (its columns are the registry's)",
                     query=sql.SQL("SELECT {q}::text AS registry, {p}::text AS problem").format(
                         q=sql.Literal(qualified), p=sql.Literal(problem)).as_string(conn))
    t = sql.Identifier(schema, table)
    name = registry.target_name("r")
    nonnull = sql.SQL("r.{} IS NOT NULL").format(sql.Identifier(target[1]))
    cmap, filt = sql.Literal(registry.COLUMN_MAP), sql.Literal(registry.FILTER_COLUMN)
    # to_regclass() raises on malformed names (pg_input_is_valid is PG16+): a regex guard first.
    valid = sql.SQL("""y.target ~ '^("([^"]|"")+"|[^". ]+)(\\.("([^"]|"")+"|[^". ]+))?$'""")
    parts = [sql.SQL("SELECT x.target, 'relation does not exist' AS problem, x.entry - {m} AS entry "
                     "FROM x WHERE x.rel IS NULL").format(m=cmap)]
    # The registry also maps columns (and may filter on one): they must exist too.
    column_sources = [sql.SQL("SELECT c->>'column' FROM jsonb_array_elements("
                              "CASE WHEN jsonb_typeof(x.entry->{m}) = 'array' "
                              "THEN x.entry->{m} ELSE '[]'::jsonb END) AS c").format(m=cmap),
                      sql.SQL("SELECT x.entry->>{f}").format(f=filt)]
    parts.append(sql.SQL(
        "SELECT x.target, 'column ' || c.col || ' does not exist', x.entry - {m} FROM x "
        "CROSS JOIN LATERAL ({src}) AS c(col) "
        "WHERE x.rel IS NOT NULL AND c.col IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM pg_attribute AS a WHERE a.attrelid = x.rel "
        "AND a.attname = c.col AND a.attnum > 0 AND NOT a.attisdropped)").format(
        m=cmap, src=sql.SQL(" UNION ").join(column_sources)))
    # CASE: to_regclass only ever sees well-formed names (SQL does not short-circuit AND/OR).
    query = sql.SQL("WITH x AS (SELECT y.target, y.entry, CASE WHEN {valid} THEN to_regclass(y.target) END AS rel "
                    "FROM (SELECT {name} AS target, to_jsonb(r) AS entry FROM {t} AS r WHERE {nonnull}) AS y) "
                    "{body}").format(valid=valid, name=name, t=t, nonnull=nonnull,
                                     body=sql.SQL(" UNION ALL ").join(parts))
    return Check(name="registry_resolves", table=qualified, kind="rows", column=",".join(target),
                 description=f"every entry of {qualified} names an existing relation and every column it maps "
                             f"(columns {', '.join(target)})",
                 query=query.as_string(conn))


