"""Benchmark: the product against hand-written floors, side by side (figures printed, nothing asserted).

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_floor.py [--scale 50] [--big 3] [--skip-phase]

Two identical databases (ctest_floor_<hex>_a / _b) on the server of CONSOLIDATION_DB_URL, else the
embedded one: the legacy fixture at --scale (dev/fixture.py), both through 4A. Then, step by step in
the plan's execution order, the product's 4B step (phases.migrate.run_step: move + proof) on A and
the floor on B, alternating which goes first; for the --big largest steps it prints:

  step      run_step on A (move + its proof), and the move alone (step minus proof)
  proof     reconcile.checksums on A (the step proof, the 4B gate's and the digest's formula)
  insert    INSERT INTO target (cols) SELECT cols FROM source into the same 4A target DDL (B)
  ins+fk    the same with foreign keys and secondary indexes dropped first and added after (B)
  hash      one order-free hash scan of each side: count(*), sum(hashtextextended(ROW(t.*)::text, 0))
  count     count(*) of both sides

and the ratios step/insert, move/insert, move/ins+fk, proof/hash. Then on a clone of A taken after
4A (C): the whole 4B phase with its gate against the sum of the per-step floors; on A: the 4D digest
against one hash scan per side of every step, the backup (phases.backup.take_backup: digest,
checksums, pg_dump -Fc per legacy schema, verification) against pg_dump at -Z0 / lz4 / zstd; the
DAG files' parse time (each in a fresh interpreter with Airflow already imported); and the peak
RSS of this process (rows never come to Python, so it should not grow with --scale).
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: E402


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if b > 0 else "   - "


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=50)
    ap.add_argument("--big", type=int, default=3, help="how many of the largest steps to print")
    ap.add_argument("--skip-phase", action="store_true", help="skip the whole-4B-phase and 4D parts")
    args = ap.parse_args()

    from consolidation import api
    from consolidation.actions import action_for
    from consolidation.checks import reconcile
    from consolidation.core import db
    from consolidation.core.plan import load_plan
    from consolidation.core.session import load_specs
    from consolidation.core.spec import source_ident
    from consolidation.dev import fixture
    from consolidation.phases import backup as backups
    from consolidation.phases.load import bulk
    from consolidation.phases.migrate import execution_order, run_step

    server = db.resolve_dsn()
    info = conninfo_to_dict(server)
    admin = make_conninfo(**(info | {"dbname": "postgres"}))
    base = f"ctest_floor_{uuid.uuid4().hex[:8]}"
    names = {k: f"{base}_{k}" for k in "abc"}
    dsn = {k: make_conninfo(**(info | {"dbname": n})) for k, n in names.items()}
    plan = load_plan()
    run = {"run_id": "bench", "user": "bench"}
    created = []
    try:
        with psycopg.connect(admin, autocommit=True) as c:
            for k in "ab":
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[k])))
                created.append(names[k])
        for k in "ab":
            dt, counts = timed(fixture.build, dsn[k], scale=args.scale)
            print(f"fixture {k}: scale {args.scale}, {sum(counts.values()):,} rows in {dt:.1f} s")
            with psycopg.connect(dsn[k]) as conn:
                dt, _ = timed(_phase_4a, api, conn, dsn[k], plan, run)
            print(f"4A on {k}: {dt:.1f} s")
        if not args.skip_phase:
            with psycopg.connect(admin, autocommit=True) as c:  # C: A as 4A left it, for the whole 4B phase
                c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(names["c"]), sql.Identifier(names["a"])))
                created.append(names["c"])

        a, b = psycopg.connect(dsn["a"]), psycopg.connect(dsn["b"])
        _, specs = load_specs(a, plan)
        a.commit()
        sizes = {s.name: a.execute(sql.SQL("SELECT count(*) FROM {}").format(source_ident(s))).fetchone()[0]
                 for s in plan.migrating_steps() if s.migrates_rows}
        big = set(sorted(sizes, key=sizes.get, reverse=True)[:args.big])
        rows, floors = [], {}
        for i, step in enumerate(execution_order(plan, specs)):
            spec = specs[step.target]
            load = action_for(step).load_statement(plan, step, spec, source_ident(step)) if step.migrates_rows else None

            def product():
                t_step, r = timed(run_step, a, plan, step.name, **run)
                t_proof, _ = timed(reconcile.checksums, a, plan, step, spec)
                a.commit()
                return t_step, t_proof, r

            def floor():
                if load is None or step.name not in big:  # not measured: the product fills B's parents
                    run_step(b, plan, step.name, **run)
                    return None
                out = {}
                with b.transaction(force_rollback=True):  # rolled back: B's target stays empty
                    out["insert"], _ = timed(b.execute, load)
                with b.transaction():
                    out["ins+fk"], _ = timed(bulk.load, b, spec, load)
                hash_side = "SELECT count(*), sum(hashtextextended(ROW(t.*)::text, 0)) FROM {} AS t"
                out["hash"] = sum(timed(b.execute, sql.SQL(hash_side).format(r))[0]
                                  for r in (source_ident(step), spec.ident))
                out["count"] = sum(timed(b.execute, sql.SQL("SELECT count(*) FROM {}").format(r))[0]
                                   for r in (source_ident(step), spec.ident))
                b.commit()
                return out

            if i % 2:  # alternate who goes first, so neither always runs on a warmer cache
                f = floor()
                t_step, t_proof, r = product()
            else:
                t_step, t_proof, r = product()
                f = floor()
            if f is not None:
                floors[step.name] = f
                rows.append((step.name, sizes[step.name], t_step, t_proof, r.path, f))

        print(f"\n{'step (largest ' + str(args.big) + ')':<40} {'rows':>10} {'step':>7} {'move':>7} {'proof':>7} "
              f"{'insert':>7} {'ins+fk':>7} {'hash':>7} {'count':>6}  step/ins move/ins move/ins+fk proof/hash  path")
        for name, n, t_step, t_proof, path, f in rows:
            move = t_step - t_proof
            print(f"{name:<40} {n:>10,} {t_step:>7.2f} {move:>7.2f} {t_proof:>7.2f} {f['insert']:>7.2f} "
                  f"{f['ins+fk']:>7.2f} {f['hash']:>7.2f} {f['count']:>6.2f}  {ratio(t_step, f['insert']):>8} "
                  f"{ratio(move, f['insert']):>8} {ratio(move, f['ins+fk']):>12} {ratio(t_proof, f['hash']):>10}  {path}")
        a.close()
        b.close()

        if not args.skip_phase:
            _whole_phase(api, plan, dsn, run, floors, specs)
            _cleanup_parts(plan, dsn["a"], backups, reconcile, specs)
        _dag_parse_times()
        print(f"\npeak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        with psycopg.connect(admin, autocommit=True) as c:
            for n in reversed(created):
                c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n)))


def _phase_4a(api, conn, dsn, plan, run):
    for outcome in [api.extend_prepare(conn, plan, **run)] + [
            api.extend_group(conn, plan, s, **run) for s in plan.legacy_schemas] + [
            api.extend_finalize(conn, plan, **run), api.gate(conn, dsn, plan, "4A", **run)]:
        if outcome.failure is not None:
            raise outcome.failure


def _whole_phase(api, plan, dsn, run, floors, specs):
    """4B as its DAG's tasks run it (every step, then gate_4B), on C; floors: the measured steps'."""
    from consolidation.phases.migrate import execution_order

    with psycopg.connect(dsn["c"]) as conn:
        t = time.perf_counter()
        for step in execution_order(plan, specs):
            o = api.run_step(conn, plan, step.name, **run)
            if o.failure is not None:
                raise o.failure
        t_steps = time.perf_counter() - t
        t_gate, o = timed(api.gate, conn, dsn["c"], plan, "4B", **run)
        if o.failure is not None:
            raise o.failure
    floor = sum(f["ins+fk"] + f["hash"] for f in floors.values())
    print(f"\nwhole 4B phase on C: steps {t_steps:.1f} s + gate_4B {t_gate:.1f} s = {t_steps + t_gate:.1f} s; "
          f"floor of the measured steps (ins+fk + hash): {floor:.1f} s ({ratio(t_steps + t_gate, floor).strip()})")


def _cleanup_parts(plan, dsn, backups, reconcile, specs):
    """4D's digest and backup on A (4B done) against their floors."""
    from consolidation.core.spec import source_ident

    with psycopg.connect(dsn) as conn:
        backups.pin_output(conn)
        t_digest, _ = timed(reconcile.digest, conn, plan, specs)
        hash_side = "SELECT count(*), sum(hashtextextended(ROW(t.*)::text, 0)) FROM {} AS t"
        t = time.perf_counter()
        for step in plan.steps:
            rels = [source_ident(step)] + ([specs[step.target].ident] if step.target in specs else [])
            for r in rels:
                conn.execute(sql.SQL(hash_side).format(r))
        t_floor = time.perf_counter() - t
        conn.commit()
    print(f"4D digest: {t_digest:.1f} s; floor (one hash scan per side of every step): {t_floor:.1f} s "
          f"({ratio(t_digest, t_floor).strip()})")
    env = backups.pg_env(dsn)
    with tempfile.TemporaryDirectory() as d:
        t_backup, _ = timed(backups.take_backup, dsn, plan, Path(d) / "product", run_id="bench-backup", user="bench")
        sizes = {}
        for label, opts in [("-Fc default", []), ("-Fc -Z0", ["-Z0"]), ("-Fc -Z lz4", ["-Z", "lz4"]),
                            ("-Fc -Z zstd", ["-Z", "zstd"])]:
            total, size, failed = 0.0, 0, None
            for schema in plan.legacy_schemas:
                out = Path(d) / f"{schema}.{len(sizes)}.dump"
                t = time.perf_counter()
                p = subprocess.run([backups._bin("pg_dump"), "--format=custom", *opts, f"--schema={schema}",
                                    "--no-password", f"--file={out}"], env=env, capture_output=True, text=True)
                total += time.perf_counter() - t
                if p.returncode:
                    failed = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
                    break
                size += out.stat().st_size
                out.unlink()
            sizes[label] = (total, size, failed)
    print(f"4D backup (take_backup: digest, checksums, pg_dump -Fc per schema, verify): {t_backup:.1f} s")
    for label, (total, size, failed) in sizes.items():
        print(f"  pg_dump {label:<12} all legacy schemas: " + (f"unsupported ({failed})" if failed else
                                                                f"{total:6.1f} s, {size / 1e6:8.1f} MB"))


def _dag_parse_times():
    """Each DAG file parsed in a fresh interpreter that has imported Airflow already."""
    code = ("import sys, time, runpy; sys.path.insert(0, %r); import airflow.sdk; "
            "t = time.perf_counter(); runpy.run_path(sys.argv[1]); print(time.perf_counter() - t)")
    print("\nDAG parse time (Airflow already imported):")
    for path in sorted((REPO / "dags").glob("*.py")):
        p = subprocess.run([sys.executable, "-c", code % str(REPO / "plugins"), str(path)], capture_output=True,
                           text=True, cwd=REPO)
        line = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else \
            f"failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}"
        try:
            print(f"  {path.name:<42} {float(line):.3f} s")
        except ValueError:
            print(f"  {path.name:<42} {line}")


if __name__ == "__main__":
    main()
