"""Gates as real Great Expectations checkpoints, against a fresh PostgreSQL database."""
from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg
import pytest

from consolidation.checks import gx as gates
from consolidation.checks.gx import Check, GateFailed, GateResult, run_gate

REPO_ROOT = Path(__file__).resolve().parents[1]


def missing_rows(source: str, target: str) -> str:
    """Rows of `source` whose id is not in `target` (the engine's style: cross-schema SQL)."""
    return (f"SELECT s.* FROM {source} s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE t.id = s.id) ORDER BY s.id")


@pytest.fixture
def gate_db(db_dsn) -> str:
    """public.src (3 rows); raw_data.copy_ok (a faithful copy); raw_data.copy_bad
    (id 3 missing, id 2 twice, one NULL name)."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("""
            CREATE SCHEMA raw_data;
            CREATE TABLE public.src (id int PRIMARY KEY, name text NOT NULL);
            INSERT INTO public.src VALUES (1, 'a'), (2, 'b'), (3, 'c');
            CREATE TABLE raw_data.copy_ok (id int, name text);
            INSERT INTO raw_data.copy_ok SELECT * FROM public.src;
            CREATE TABLE raw_data.copy_bad (id int, name text);
            INSERT INTO raw_data.copy_bad VALUES (1, 'a'), (2, NULL), (2, 'b');
        """)
    return db_dsn


def ok_checks(table: str = "raw_data.copy_ok") -> list[Check]:
    return [
        Check("rows_present", table, f"every source row of public.src is in {table}",
              query=missing_rows("public.src", table), step="1"),
        Check("id_unique", table, "id is unique", kind="unique", column="id", step="1"),
        Check("name_not_null", table, "name is never NULL", kind="not_null", column="name"),
        Check("id_name_unique", table, "(id, name) is unique", kind="compound_unique",
              column="id, name"),
    ]


def by_name(result: GateResult) -> dict:
    return {r.check.name: r for r in result.results}


def test_passing_gate_persists_results(gate_db, tmp_path, capfd):
    result = run_gate(gate_db, "4A", ok_checks(), results_dir=tmp_path)

    assert result.passed, result.summary()
    assert [r.passed for r in result.results] == [True] * 4
    assert all(r.observed == 0 and r.sample == [] and r.error is None for r in result.results)
    assert result.summary() == "gate 4A passed: 4 of 4 checks"
    assert result.failures() == []
    assert result.gx_run_id and result.gx_run_id.startswith("gate_4A_")
    assert result.started_at <= result.finished_at

    # GX validation results (one file per table's suite) and the gate's own JSON
    stored = list((tmp_path / "validations").rglob("*.json"))
    assert len(stored) == 1 and result.gx_run_id in str(stored[0])
    assert json.loads(stored[0].read_text())["success"] is True
    assert result.results_path == tmp_path / "gates" / f"{result.gx_run_id}.json"
    assert json.loads(result.results_path.read_text())["passed"] is True
    # GX prints a "{batch}" notice on stdout and can draw progress bars on stderr: silenced
    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "alone"])
def test_a_rows_check_is_counted_exactly_past_the_fetch_cap(gate_db, tmp_path, together):
    """A rows check's query runs once to be counted. In a batch its count is a server-side
    count(*); alone (a gate of one check, or a check the planner refused in a batch) GX fetches
    at most 200 rows and a check failing on more gets its exact count from GX's own COUNT(*)
    metric. Either way the sample stays short."""
    from great_expectations.constants import MAX_RESULT_RECORDS

    checks = [Check(f"n_{n}", "public.src", f"{n} unexpected rows",
                    query=f"SELECT g AS n FROM generate_series(1, {n}) AS g")
              for n in (0, 1, MAX_RESULT_RECORDS - 1, MAX_RESULT_RECORDS, 1234)]
    if together:
        results = run_gate(gate_db, "4B", checks, results_dir=tmp_path).results
    else:
        results = [run_gate(gate_db, "4B", [c], results_dir=tmp_path).results[0] for c in checks]
    assert [(r.passed, r.observed) for r in results] == [
        (True, 0), (False, 1), (False, MAX_RESULT_RECORDS - 1), (False, MAX_RESULT_RECORDS), (False, 1234)]
    assert results[-1].sample == [{"n": i} for i in range(1, 6)]
    assert all(r.error is None for r in results)
    ran = expectations_run(tmp_path)
    assert len(ran) == (1 if together else 5)
    assert all(("consolidation_check" in e["expectation_config"]["meta"]) != together for e in ran)


def expectations_run(results_dir: Path) -> list[dict]:
    """The expectation results of every GX validation result stored under results_dir."""
    return [e for f in (results_dir / "validations").rglob("*.json")
            for e in json.loads(f.read_text())["results"]]


def test_one_tables_checks_run_as_one_batch_and_each_keeps_its_own_verdict(gate_db, tmp_path):
    """Eight checks on one table: one GX expectation. A query that fails (a misspelt column)
    makes the gate run that batch's halves again, until the error lands on its own check;
    every other check still gets its own count and sample."""
    table = "raw_data.copy_bad"
    checks = [
        Check("rows_present", table, "every row of public.src is there", query=missing_rows("public.src", table)),
        Check("no_negative_ids", table, "no id below 1",
              query=f"SELECT id FROM {table} WHERE id < 1 -- a trailing comment\n;"),
        Check("typo", table, "a column that does not exist", query=f"SELECT nmae FROM {table}"),
        Check("id_unique", table, "id is unique", kind="unique", column="id"),
        Check("name_not_null", table, "name is never NULL", kind="not_null", column="name"),
        Check("id_name_unique", table, "(id, name) is unique", kind="compound_unique", column="id, name"),
        Check("wrong_column", table, "no such column", kind="not_null", column="no_such_column"),
        Check("braces", table, "braces and :colon words", query="SELECT '{x}' AS v, 'at :noon' AS w"),
    ]
    result = run_gate(gate_db, "4B", checks, results_dir=tmp_path)
    r = by_name(result)
    assert (r["rows_present"].observed, r["rows_present"].sample) == (1, [{"id": 3, "name": "c"}])
    assert (r["no_negative_ids"].passed, r["no_negative_ids"].observed) == (True, 0)
    assert not r["typo"].passed and "nmae" in r["typo"].error
    assert (r["id_unique"].observed, sorted(r["id_unique"].sample)) == (2, [2, 2])
    assert (r["name_not_null"].observed, r["name_not_null"].sample) == (1, [None])
    assert r["id_name_unique"].passed
    assert not r["wrong_column"].passed and "no_such_column" in r["wrong_column"].error
    assert (r["braces"].observed, r["braces"].sample) == (1, [{"v": "{x}", "w": "at :noon"}])
    assert [x.check.name for x in result.results if x.error] == ["typo", "wrong_column"]
    # the first checkpoint ran one expectation (it raised); then halves of what raised, until
    # each of the two errors was on its own check: a few rounds, not one expectation per check
    runs = {}
    for f in (tmp_path / "validations").rglob("*.json"):
        data = json.loads(f.read_text())
        runs[data["meta"]["run_id"]["run_name"]] = len(data["results"])
    assert runs[result.gx_run_id] == 1
    assert 1 < len(runs) <= 4 and sum(runs.values()) < 2 * len(checks), runs
    assert set(runs) == {result.gx_run_id} | {f"{result.gx_run_id}_retry{n}" for n in range(1, len(runs))}


def test_column_checks_count_what_gx_column_expectations_count(db_dsn, tmp_path):
    """The SQL of unique / not_null / compound_unique gives GX's own column expectations'
    counts, on data with NULLs, duplicates and all-NULL combinations."""
    gx = gates._import_gx()
    import great_expectations.expectations as gxe

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("""CREATE TABLE public."Odd Table" ("Id" int, "a b" text, c numeric);
            INSERT INTO public."Odd Table" VALUES (1, 'x', 1), (1, 'x', NULL), (2, NULL, NULL),
              (2, NULL, NULL), (NULL, NULL, NULL), (NULL, NULL, NULL), (3, 'y', 2.5), (4, 'y', 2.5)""")
    cases = [("unique", "Id"), ("unique", "a b"), ("unique", "c"), ("not_null", "Id"),
             ("not_null", "c"), ("compound_unique", "Id, a b"), ("compound_unique", "a b, c")]
    ours = run_gate(db_dsn, "cols", [Check(f"{k}_{i}", 'public.Odd Table', k, kind=k, column=c)
                                      for i, (k, c) in enumerate(cases)], results_dir=tmp_path)
    theirs = {
        "unique": lambda c: gxe.ExpectColumnValuesToBeUnique(column=c),
        "not_null": lambda c: gxe.ExpectColumnValuesToNotBeNull(column=c),
        "compound_unique": lambda c: gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[x.strip() for x in c.split(",")]),
    }
    with gates._quiet():
        context = gates._context(gx, tmp_path / "gx_own", url=gates.sqlalchemy_url(db_dsn), assets=[
            {"type": "table", "name": "odd", "table_name": '"Odd Table"', "schema_name": "public",
             "batch_definitions": [{"name": "all"}]}])
        batch = context.data_sources.get(gates.DATASOURCE).get_asset("odd").get_batch_definition("all").get_batch()
        expected = [batch.validate(theirs[k](c)).result["unexpected_count"] for k, c in cases]
    assert [x.observed for x in ours.results] == expected, expected
    assert expected == [4, 4, 2, 2, 5, 2, 2]  # what GX counts, so that the comparison is not vacuous


def test_failures_are_counted_and_sampled(gate_db, tmp_path):
    checks = ok_checks("raw_data.copy_bad") + [
        Check("src_rows", "public.src", "public.src still has 3 rows",
              query="SELECT 1 FROM public.src HAVING count(*) <> 3"),
    ]
    result = run_gate(gate_db, "4B", checks, results_dir=tmp_path)
    r = by_name(result)

    assert not result.passed
    assert r["rows_present"].passed is False
    assert r["rows_present"].observed == 1
    assert r["rows_present"].sample == [{"id": 3, "name": "c"}]
    assert r["id_unique"].passed is False
    assert r["id_unique"].observed == 2          # GX counts every row holding a duplicate
    assert 2 in r["id_unique"].sample
    assert r["name_not_null"].passed is False
    assert r["name_not_null"].observed == 1 and r["name_not_null"].sample == [None]
    assert r["id_name_unique"].passed is True   # NULL name: (2, NULL) and (2, 'b') differ
    assert r["src_rows"].passed is True
    assert all(x.error is None for x in result.results)
    assert [f.check.name for f in result.failures()] == ["rows_present", "id_unique",
                                                         "name_not_null"]

    summary = result.summary()
    lines = summary.splitlines()
    assert lines[0] == "gate 4B FAILED: 3 of 5 checks"
    assert len(lines) == 4
    assert "raw_data.copy_bad" in lines[1] and "every source row of public.src" in lines[1]
    assert "1 unexpected" in lines[1] and '"id": 3' in lines[1]
    assert "2 unexpected" in lines[2] and "1 unexpected" in lines[3]

    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is False and data["checks"] == 5 and data["failed"] == 3
    assert data["results"][0]["observed"] == 1 and "query" in data["results"][0]

    with pytest.raises(GateFailed) as exc:
        result.raise_if_failed()
    assert str(exc.value) == summary and exc.value.result is result


def test_missing_table_fails_without_stopping_the_gate(gate_db, tmp_path):
    checks = [
        Check("rows_copied", "raw_data.nowhere", "every row of public.src is in raw_data.nowhere",
              query=missing_rows("public.src", "raw_data.nowhere")),
        Check("not_empty", "raw_data.nowhere", "the target has rows",
              query="SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM public.src)"),
        Check("id_unique", "raw_data.nowhere", "id is unique", kind="unique", column="id"),
        Check("name_not_null", "nothere.x", "name is never NULL", kind="not_null", column="name"),
        Check("bad_column", "raw_data.copy_ok", "a column that does not exist", kind="not_null",
              column="no_such_column"),
    ] + ok_checks()
    result = run_gate(gate_db, "4C", checks, results_dir=tmp_path)
    r = by_name(result)

    assert not result.passed
    assert r["rows_copied"].passed is False
    assert "does not exist" in r["rows_copied"].error and "[SQL:" not in r["rows_copied"].error
    # a query that does not read the missing table still runs (batch: SELECT 1)
    assert r["not_empty"].passed is True
    missing = {(x.check.table, x.check.name): x for x in result.results}
    assert missing["raw_data.nowhere", "id_unique"].passed is False
    assert missing["raw_data.nowhere", "id_unique"].error == "table missing"
    assert missing["nothere.x", "name_not_null"].passed is False
    assert missing["nothere.x", "name_not_null"].error == "table missing"
    # an expectation that raised inside GX is a failure, never a pass
    assert r["bad_column"].passed is False and "no_such_column" in r["bad_column"].error
    assert all(x.passed for x in result.results[5:])
    assert "raw_data.nowhere" in result.summary() and "table missing" in result.summary()


def test_a_gate_needs_checks():
    with pytest.raises(ValueError, match="no checks"):
        run_gate("dbname=unused", "4A", [])
    with pytest.raises(ValueError, match="unknown kind"):
        run_gate("dbname=unused", "4A", [Check("x", "a.b", "x", kind="bogus")])
    with pytest.raises(ValueError, match="needs a query"):
        run_gate("dbname=unused", "4A", [Check("x", "a.b", "x")])
    with pytest.raises(ValueError, match="exactly one column"):
        run_gate("dbname=unused", "4A", [Check("x", "a.b", "x", kind="unique")])


def test_sql_that_str_format_and_text_would_mangle(gate_db, tmp_path):
    """Rendered SQL goes through GX's str.format and SQLAlchemy's text(): braces, percent
    signs and colon-words in literals must reach PostgreSQL unchanged."""
    query = ("SELECT * FROM public.src WHERE name LIKE '%z%' OR '{\"k\": 1}'::jsonb ->> 'k' <> '1' "
             "OR array_length('{1,2}'::int[], 1) <> 2 OR 'at :noon' <> 'at ' || ':noon'")
    result = run_gate(gate_db, "Q", [Check("odd_sql", "public.src", "odd SQL", query=query)],
                      results_dir=tmp_path)
    assert result.passed, result.summary()


def test_sqlalchemy_url_from_dsn_forms():
    from sqlalchemy.engine import make_url

    url = make_url(gates.sqlalchemy_url(
        "host=127.0.0.1 port=5433 dbname=betting user=etl password='p@ss:w/rd ${x}%'"))
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.username) == ("127.0.0.1", 5433, "betting", "etl")
    assert url.password == "p@ss:w/rd ${x}%"

    url = make_url(gates.sqlalchemy_url("postgresql://u:s%40cret@localhost/db?sslmode=require"))
    assert url.password == "s@cret" and url.query["sslmode"] == "require"
    url = make_url(gates.sqlalchemy_url("host=/tmp/sock dbname=db"))
    assert url.host is None and url.query["host"] == "/tmp/sock"


def test_no_credentials_in_results(gate_db, tmp_path):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    secret = conninfo_to_dict(gate_db).get("password")
    dsn = gate_db
    if not secret:  # trust/peer servers ignore a password: add a recognisable dummy one
        secret = "gate-secret-4f9a"
        dsn = make_conninfo(gate_db, password=secret)
        try:
            psycopg.connect(dsn, connect_timeout=5).close()
        except psycopg.OperationalError:
            pytest.skip("the server checks passwords; cannot add a dummy one")
    result = run_gate(dsn, "4A", ok_checks(), results_dir=tmp_path)
    assert result.passed
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert secret not in path.read_text(errors="replace"), path
    committed = (REPO_ROOT / "include" / "gx" / "great_expectations.yml").read_text()
    assert "${CONSOLIDATION_GX_URL}" in committed and secret not in committed


def test_committed_project_is_left_alone(gate_db, tmp_path):
    project = REPO_ROOT / "include" / "gx"
    before = {p: p.stat().st_mtime_ns for p in project.rglob("*")}
    run_gate(gate_db, "4A", ok_checks(), results_dir=tmp_path)
    assert {p: p.stat().st_mtime_ns for p in project.rglob("*")} == before


def test_default_results_dir_is_in_the_state_folder(gate_db):
    from consolidation.core import config

    result = run_gate(gate_db, "4A", ok_checks()[:1])
    assert result.results_path.parent.parent == (config.state_dir() / "gx").resolve()


def _gate_in_child(dsn: str, gate: str, results_dir: str) -> GateResult:
    return run_gate(dsn, gate, ok_checks() + ok_checks("public.src"), results_dir=Path(results_dir))


def test_two_gates_at_once_in_separate_processes(gate_db, tmp_path):
    gates._import_gx()  # forked children inherit the imported GX
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(_gate_in_child, gate_db, g, str(tmp_path)) for g in ("4A", "4A")]
        results = [f.result(timeout=300) for f in futures]
    assert all(r.passed for r in results), [r.summary() for r in results]
    assert results[0].gx_run_id != results[1].gx_run_id
    stored = list((tmp_path / "validations").rglob("*.json"))
    assert len(stored) == 2  # one validation per run, none overwritten
    assert {r.gx_run_id for r in results} == {p.parts[-3] for p in stored}


def test_build_docs(gate_db, tmp_path):
    run_gate(gate_db, "4B", ok_checks("raw_data.copy_bad"), results_dir=tmp_path)
    index = gates.build_docs(tmp_path)
    assert index == tmp_path / "data_docs" / "local_site" / "index.html"
    assert "gate_4B" in index.read_text()
    # the validation's page names each check of the failing batch and its table
    pages = [p.read_text() for p in (tmp_path / "data_docs" / "local_site" / "validations").rglob("*.html")]
    assert len(pages) == 1 and "raw_data.copy_bad rows_present" in pages[0]


def test_import_is_cheap():
    code = ("import sys, consolidation.checks.gx; "
            "assert 'great_expectations' not in sys.modules, 'GX imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_sixty_checks_over_thirty_tables(db_dsn, tmp_path, capsys):
    """Scale check; prints the timing (no timed assert). See also benchmarks/bench_gates.py."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS raw_data")
        for i in range(30):
            conn.execute(f"CREATE TABLE public.t{i} AS SELECT g AS id, 'n' || g AS name "
                         f"FROM generate_series(1, 1000) g")
            conn.execute(f"CREATE TABLE raw_data.t{i} AS SELECT * FROM public.t{i}")
    checks = []
    for i in range(30):
        target = f"raw_data.t{i}"
        checks.append(Check("rows_present", target, f"every row of public.t{i} is in {target}",
                            query=missing_rows(f"public.t{i}", target)))
        checks.append(Check("id_unique", target, "id is unique", kind="unique", column="id")
                      if i % 2 else
                      Check("name_not_null", target, "name not null", kind="not_null",
                            column="name"))
    gates._import_gx()
    t0 = time.perf_counter()
    result = run_gate(db_dsn, "bench", checks, results_dir=tmp_path)
    elapsed = time.perf_counter() - t0
    assert result.passed and len(result.results) == 60, result.summary()
    with capsys.disabled():
        print(f"\n[gates] 60 checks over 30 tables: {elapsed:.2f} s "
              f"({elapsed / 60 * 1000:.0f} ms per check, GX already imported)")


def test_identical_checks_are_each_reported(gate_db, tmp_path):
    twice = ok_checks("raw_data.copy_bad")[1:2] * 2
    result = run_gate(gate_db, "4B", twice, results_dir=tmp_path)
    assert [(r.passed, r.observed) for r in result.results] == [(False, 2), (False, 2)]


def test_gx_blowing_up_fails_every_check(gate_db, tmp_path, monkeypatch):
    gx = gates._import_gx()

    def boom(self, *args, **kwargs):
        raise RuntimeError("checkpoint exploded")

    monkeypatch.setattr(gx.Checkpoint, "run", boom)
    result = run_gate(gate_db, "4A", ok_checks(), results_dir=tmp_path)
    assert not result.passed
    assert all(not r.passed and "checkpoint exploded" in r.error for r in result.results)
    assert result.results_path.exists()


def test_unreachable_database_raises(tmp_path):
    from consolidation.core import db

    with pytest.raises(db.DatabaseUnreachable):
        run_gate("host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2", "4A", ok_checks(),
                 results_dir=tmp_path)
