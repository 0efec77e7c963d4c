"""Column mappings: expressions, maps, constants, one source column into several target columns,
types as people write them; every mapping of every plan reaches its statement and its proof."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import psycopg
import pytest

import phase_helpers as ph
from consolidation.actions import action_for
from consolidation.core.columns.check import lexical_problem
from consolidation.core.plan import PlanError, load_plan, parse_plan

PLANS = sorted((Path(__file__).resolve().parents[1] / "include" / "plans").glob("*.yaml"))

LEGACY_SQL = """
CREATE SCHEMA leg; CREATE SCHEMA cons;
CREATE TABLE leg.scrapes (id integer PRIMARY KEY, scrape_timestamp timestamp NOT NULL, payload jsonb, state text);
INSERT INTO leg.scrapes VALUES
  (1, '2024-04-01 10:00', '{"price": 1.25}', 'new'),
  (2, '2024-04-02 23:30', '{"price": 2.5}', 'done'),
  (3, '2024-04-03 00:15', '{}', NULL);
CREATE TABLE cons.items (item_id integer PRIMARY KEY, name text NOT NULL);
INSERT INTO cons.items VALUES (1, 'one'), (2, 'two');
CREATE TABLE leg.items (id integer PRIMARY KEY, name text NOT NULL, code text);
INSERT INTO leg.items VALUES (1, 'one', 'A-1'), (2, 'two', 'B-2'), (3, 'three', 'C-3');
"""

PLAN_YAML = """
plan: columns
consolidated_schemas: {cons: consolidated, ops: the tool}
legacy_schemas: {leg: {}}
tool: {schema: ops}
steps:
  - source: leg.scrapes
    action: copy
    target: cons.scrapes
    columns:
      scraped_at: scrape_timestamp
      date_scraped: {from: scrape_timestamp, cast: date}
      price: {expr: "(s.payload->>'price')::numeric(8,4)"}
      status: {from: state, map: {new: pending, done: final}, else: unknown}
      origin: {value: legacy}
  - source: leg.items
    action: merge
    target: cons.items
    key: {item_id: id}
    columns: {name: name, code: code}
    enrich: [code]
    add_columns:
      code: {type: varchar(20)}
"""


def small_db(make_db, plan_text: str = PLAN_YAML, tmp_path: Path | None = None):
    dsn = make_db()
    with psycopg.connect(dsn) as conn:
        conn.execute(LEGACY_SQL)
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(plan_text))
    return dsn, load_plan(path)


def with_column(column_yaml: str) -> str:
    """PLAN_YAML with the copy step's `price` mapping replaced."""
    return PLAN_YAML.replace("""price: {expr: "(s.payload->>'price')::numeric(8,4)"}""", column_yaml)


# ------------------------------------------------------------------ parsing (no database)
def _plan_with(columns: str):
    return parse_plan({"consolidated_schemas": {"cons": ""}, "legacy_schemas": {"leg": {}},
                       "tool": {"schema": "cons"},
                       "steps": [{"source": "leg.t", "action": "copy", "target": "cons.t", "columns": columns}]})


def test_mapping_forms_are_read_and_one_source_may_feed_several_columns():
    plan = _plan_with({"a": "x", "b": {"from": "x", "cast": "date"}, "c": {"expr": "s.y + 1"},
                       "d": {"from": "z", "map": {"new": "pending", 1: "one"}, "else": None}, "e": {"value": 7}})
    cols = plan.steps[0].columns
    assert {t: m.kind for t, m in cols.items()} == {"a": "column", "b": "cast", "c": "expr", "d": "map", "e": "value"}
    assert cols["d"].map == (("new", "pending"), ("1", "one")) and cols["d"].has_else and cols["d"].otherwise is None
    assert plan.steps[0].mapped_source_columns() == {"x", "y", "z"}


@pytest.mark.parametrize("spec, message", [
    ({"from": "x", "expr": "s.x"}, "give one of `from`, `expr` or `value`, not from and expr"),
    ({"else": 1}, "needs `from`"),
    ({"from": "x", "else": 1}, "`else` belongs to a `map`"),
    ({"value": 1, "map": {"a": "b"}}, "not a constant `value`"),
    ({"from": "x", "map": {True: "b"}}, "quote the value as the source holds it"),
    ({"value": [1, 2]}, "single value|write one value"),
    ({"from": "x", "frm": "y"}, r"unknown key\(s\) frm"),
])
def test_bad_mappings_are_refused_naming_the_column(spec, message):
    with pytest.raises(PlanError, match=message) as err:
        _plan_with({"col": spec})
    assert re.search(r"step 1 \(leg.t\): column col|steps\[0\] \(leg.t\).columns.col", str(err.value)), str(err.value)


def test_unquoted_numeric_in_flow_yaml_says_to_quote_it(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PLAN_YAML.replace("scraped_at: scrape_timestamp", "scraped_at: {from: scrape_timestamp, cast: numeric(8,4)}"))
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert "must be quoted" in str(err.value) and "'numeric(8,4)'" in str(err.value)
    assert "unknown key" not in str(err.value)
    path.write_text(PLAN_YAML.replace("code: {type: varchar(20)}", "code: {type: numeric(8,4)}"))
    with pytest.raises(PlanError, match=r"add_columns.code: `type: numeric\(8,4\)` must be quoted"):
        load_plan(path)


@pytest.mark.parametrize("text, problem", [
    ("s.a; DROP TABLE x", "`;`"),
    ("s.a -- rest", "comment"),
    ("s.a /* x */", "comment"),
    ("s.a) FROM y WHERE (true", "closes a parenthesis"),
    ("(s.a", "open"),
    ("$$x$$", "dollar"),
    ("'it''s; fine' || s.a", None),
    ("E'\\';' || s.a", None),
    ('s."odd;name"', None),
])
def test_lexical_rules_of_an_expression(text, problem):
    found = lexical_problem(text)
    assert (found is None) if problem is None else (problem in found), found


# ------------------------------------------------------------------ in the database
def test_one_column_twice_expressions_maps_constants_fill_a_new_target(make_db, tmp_path):
    dsn, plan = small_db(make_db, tmp_path=tmp_path)
    ph.engine_4a(dsn, plan)
    ph.engine_4a(dsn, plan, run_id="again")  # varchar(20) added by 4A is varchar(20) on the next run too
    assert ph.engine_4b(dsn, plan) == {}
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, scraped_at, date_scraped, price, status, origin FROM cons.scrapes "
                            "ORDER BY id").fetchall()
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'cons.scrapes'::regclass "
            "AND attnum > 0 AND NOT attisdropped").fetchall())
        codes = conn.execute("SELECT item_id, name, code FROM cons.items ORDER BY 1").fetchall()
        code_type = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                 "WHERE attrelid = 'cons.items'::regclass AND attname = 'code'").fetchone()[0]
    import datetime as dt
    from decimal import Decimal
    assert rows == [
        (1, dt.datetime(2024, 4, 1, 10, 0), dt.date(2024, 4, 1), Decimal("1.2500"), "pending", "legacy"),
        (2, dt.datetime(2024, 4, 2, 23, 30), dt.date(2024, 4, 2), Decimal("2.5000"), "final", "legacy"),
        (3, dt.datetime(2024, 4, 3, 0, 15), dt.date(2024, 4, 3), None, "unknown", "legacy")]
    # columns only an expression or a map reads are not carried under their own names
    assert types == {"id": "integer", "scraped_at": "timestamp without time zone", "date_scraped": "date",
                     "price": "numeric(8,4)", "status": "text", "origin": "text"}
    assert code_type == "character varying(20)"
    assert codes == [(1, "one", "A-1"), (2, "two", "B-2"), (3, "three", "C-3")]


def test_a_wrong_value_after_4b_fails_the_gate_naming_the_column(make_db, tmp_path):
    from consolidation.checks.gx import GateFailed

    dsn, plan = small_db(make_db, tmp_path=tmp_path)
    ph.engine_4a(dsn, plan)
    ph.engine_4b(dsn, plan)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE cons.scrapes SET date_scraped = date_scraped + 1 WHERE id = 2")
        conn.execute("UPDATE cons.items SET name = 'THREE' WHERE item_id = 3")  # a row the merge inserted
    with pytest.raises(GateFailed) as err:
        ph.run_gate(dsn, "4B", plan)
    text = str(err.value)
    assert re.search(r"cons\.scrapes \[values_equal, step copy__leg__scrapes\].*"
                     r'"id": 2, "column_name": "date_scraped", "source_value": "2024-04-02", "target_value": "2024-04-03"',
                     text), text
    assert re.search(r'cons\.items \[inserted_rows_equal.*"item_id": 3, "column_name": "name", "source_value": "three"',
                     text), text


@pytest.mark.parametrize("column, said", [
    ("price: {expr: \"s.nope + 1\"}", 'column s.nope does not exist'),
    ("price: {expr: \"sum(s.id)\"}", "aggregate functions are not allowed"),
    ("price: {expr: \"generate_series(1, s.id)\"}", "set-returning functions are not allowed"),
    ("price: {expr: \"(WITH d AS (DELETE FROM leg.items RETURNING 1) SELECT 1)\"}", "WITH clause containing a data-modifying"),
    ("price: {expr: \"1; DELETE FROM leg.items\"}", "may not contain `;`"),
    ("price: {expr: \"s.id) FROM leg.items --\"}", "closes a parenthesis"),
    ("price: {expr: \"s.payload\", cast: date}", "cannot cast type jsonb to date"),
    ("price: {from: id, cast: \"int) FROM leg.items WHERE (true\"}", "is not a PostgreSQL type here"),
    ("price: {value: abc, cast: integer}", 'invalid input syntax for type integer: "abc"'),
])
def test_inventory_and_4a_refuse_a_bad_expression_with_step_column_and_database_message(make_db, tmp_path, column, said):
    from consolidation import api
    from consolidation.checks.inventory import take_inventory

    dsn, plan = small_db(make_db, with_column(column), tmp_path)
    with psycopg.connect(dsn) as conn:
        inv = take_inventory(conn, plan)
        found = [f for f in inv.blocking if f.code == "column_mapping"]
        assert len(found) == 1, inv.findings
        assert found[0].object == "step 1 (leg.scrapes)" and "columns.price" in found[0].message
        assert said in found[0].message, found[0].message
        conn.commit()
        with pytest.raises(PlanError, match=re.escape(said)) as err:
            api.extend_prepare(conn, plan, run_id="t", user="t")
        assert "step 1 (leg.scrapes): columns.price" in str(err.value)
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM leg.items").fetchone()[0] == 3  # nothing ran
        assert conn.execute("SELECT to_regclass('cons.scrapes')").fetchone()[0] is None


def test_sql_preview_shows_the_expressions(make_db, tmp_path):
    from consolidation import api

    dsn, plan = small_db(make_db, tmp_path=tmp_path)
    ph.engine_4a(dsn, plan)
    with psycopg.connect(dsn) as conn:
        text = "\n".join(api.sql_preview(conn, plan, "4B").lines)
    assert "(s.payload->>'price')::numeric(8,4)" in text
    assert "WHEN CAST(\"s\".\"state\" AS text) = 'new' THEN CAST('pending' AS text)" in text
    assert "CAST(CAST(\"s\".\"scrape_timestamp\" AS date) AS date) AS \"date_scraped\"" in text


def _plan_databases(make_db, fixture_template):
    from consolidation.dev import realapp

    out = {}
    for path in PLANS:
        plan = load_plan(path)
        if plan.name == "realapp":
            dsn = make_db()
            realapp.build(dsn, trigger=False, unplanned=False)
        elif plan.name == "phase4":
            dsn = make_db(template=fixture_template)
        else:
            pytest.fail(f"{path.name}: add the database this plan runs against to test_every_mapping_of_every_plan")
        out[path.name] = (plan, dsn)
    return out


def test_every_mapping_of_every_plan_reaches_its_statement_and_the_4b_gate(make_db, fixture_template):
    from consolidation.core.session import load_specs
    from consolidation.phases.migrate import step_statements

    checked = 0
    for name, (plan, dsn) in _plan_databases(make_db, fixture_template).items():
        with psycopg.connect(dsn) as conn:
            _, specs = load_specs(conn, plan)
            for step in plan.migrating_steps():
                action = action_for(step)
                if not action.moves_rows:
                    continue
                spec = specs[step.target]
                statement = " ".join(s.as_string(conn) for s in step_statements(plan, step, spec))
                inserts = re.findall(r"INSERT INTO " + re.escape(spec.ident.as_string(conn)) + r" \(([^)]*)\)", statement)
                assert inserts, f"{name} {step.label}: no INSERT into {spec.qualified}"
                inserted = {c.strip().strip('"') for c in inserts[0].split(",")}
                compared = {f.target for _, _, flows, _ in action.value_checks(plan, step, spec) for f in flows}
                for target in list(step.columns) + list(step.key):
                    assert target in inserted, f"{name} {step.label}: {target} missing from {inserts[0]}"
                    assert target in compared, f"{name} {step.label}: the 4B gate does not compare {target}"
                    checked += 1
    assert checked > 30
