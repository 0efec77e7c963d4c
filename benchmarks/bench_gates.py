"""Benchmark: how long a gate takes through Great Expectations (figures printed, nothing asserted).

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_gates.py [--tables 30] [--rows 10000] [--runs 3]

Builds a throw-away database (ctest_bench_<hex>) on the server of CONSOLIDATION_DB_URL, else the
embedded server; `--tables` legacy tables with `--rows` rows each and their copies in raw_data;
then runs a gate of 2 checks per table (a cross-schema "rows present" query, plus a unique or
a not-null column check, alternating), once with a failing copy. The database is dropped after.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def _where(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", type=int, default=30)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import tempfile

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from consolidation.core import db

    server = db.resolve_dsn()
    admin = make_conninfo(server, dbname="postgres")
    name = f"ctest_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA raw_data")
            for i in range(args.tables):
                conn.execute(f"CREATE TABLE public.t{i} AS SELECT g AS id, md5(g::text) AS name "
                             f"FROM generate_series(1, {args.rows}) g")
                conn.execute(f"CREATE TABLE raw_data.t{i} AS SELECT * FROM public.t{i}")
            conn.execute("DELETE FROM raw_data.t0 WHERE id % 100 = 0")  # the failing copy
            conn.execute("ANALYZE")

        from consolidation.checks.gx import Check, run_gate, build_docs, _import_gx

        checks = []
        for i in range(args.tables):
            t = f"raw_data.t{i}"
            checks.append(Check("rows_present", t, f"every row of public.t{i} is in {t}",
                                query=f"SELECT s.* FROM public.t{i} s WHERE NOT EXISTS "
                                      f"(SELECT 1 FROM {t} r WHERE r.id = s.id)"))
            checks.append(Check("id_unique", t, "id unique", kind="unique", column="id") if i % 2
                          else Check("name_not_null", t, "name not null", kind="not_null",
                                     column="name"))

        t0 = time.perf_counter()
        _import_gx()
        print(f"import great_expectations: {time.perf_counter() - t0:.2f} s")
        print(f"gate: {len(checks)} checks over {args.tables} tables of {args.rows} rows "
              f"(server {_where(server)})")
        with tempfile.TemporaryDirectory() as out:
            for run in range(args.runs):
                t0 = time.perf_counter()
                result = run_gate(dsn, "bench", checks, results_dir=Path(out))
                dt = time.perf_counter() - t0
                print(f"  run {run + 1}: {dt:.2f} s ({dt / len(checks) * 1000:.0f} ms/check), "
                      f"{len(result.failures())} failing, first line: {result.summary().splitlines()[0]}")
            t0 = time.perf_counter()
            build_docs(Path(out))
            print(f"build_docs over {args.runs} stored runs: {time.perf_counter() - t0:.2f} s")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
