"""Benchmark: 4A and 4B on the fixture at a scale factor (figures printed, nothing asserted).

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_migrate.py [--scale 10] [--per-row]

Builds a throw-away database (ctest_bench_<hex>) on the server of CONSOLIDATION_DB_URL, else the
embedded server; the legacy fixture at --scale (1 = the plan's counts); runs 4A, every 4B step
(engine calls, as the DAG tasks make them), the 4B reconciliation queries and the digest; prints
seconds and rows per second per step, and the peak RSS of this process (rows never come to Python,
so it should not grow with the scale). --per-row forces the quarantine path on splits.games.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--per-row", action="store_true", help="one bad row in splits.games: the per-row path")
    args = ap.parse_args()

    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from consolidation.core import db
    from consolidation.phases import extend
    from consolidation.dev import fixture
    from consolidation.checks import reconcile
    from consolidation.phases.migrate import run_step
    from consolidation.core.plan import load_plan
    from consolidation.checks.reconcile import checksums

    server = db.resolve_dsn()
    info = conninfo_to_dict(server)
    name = f"ctest_bench_{uuid.uuid4().hex[:8]}"
    admin = make_conninfo(**(info | {"dbname": "postgres"}))
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(**(info | {"dbname": name}))
    plan = load_plan()
    try:
        t = time.perf_counter()
        counts = fixture.build(dsn, scale=args.scale)
        print(f"fixture scale {args.scale}: {sum(counts.values()):,} rows in {time.perf_counter() - t:.2f} s")
        with psycopg.connect(dsn) as conn:
            if args.per_row:
                conn.execute("UPDATE splits.games SET game_id = 'not-a-number' WHERE id = 1")
                conn.commit()
            t = time.perf_counter()
            extend.ensure_schemas(conn, plan, run_id="bench", user="bench")
            for schema in plan.legacy_schemas:
                extend.extend_group(conn, plan, schema, run_id="bench", user="bench")
            extend.finalize(conn, plan, run_id="bench", user="bench")
            print(f"4A (DDL only): {time.perf_counter() - t:.2f} s")
            total_rows, t_all = 0, time.perf_counter()
            print(f"{'step':<52} {'rows':>9} {'s':>7} {'rows/s':>10} path")
            for step in plan.migrating_steps():
                t = time.perf_counter()
                try:
                    r = run_step(conn, plan, step.name, run_id="bench", user="bench")
                    rows, path = r.read, r.path
                except Exception as exc:  # the quarantine path fails the step at threshold 0
                    rows, path = -1, f"failed: {str(exc)[:40]}"
                dt = time.perf_counter() - t
                total_rows += max(rows, 0)
                print(f"{step.name:<52} {rows:>9,} {dt:>7.2f} {rows / dt if rows > 0 else 0:>10,.0f} {path}")
            dt = time.perf_counter() - t_all
            print(f"4B steps: {total_rows:,} rows in {dt:.2f} s ({total_rows / dt:,.0f} rows/s)")
            _, specs = extend.load_specs(conn, plan)
            t = time.perf_counter()
            for step in plan.migrating_steps():
                checksums(conn, plan, step, specs[step.target])
            print(f"reconciliation (checksums + counts, all steps): {time.perf_counter() - t:.2f} s")
            t = time.perf_counter()
            reconcile.digest(conn, plan, specs)
            print(f"approval digest: {time.perf_counter() - t:.2f} s")
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
