"""Benchmark: 4D backup archives, custom vs directory format (parallel jobs), figures printed only.

    PYTHONPATH=plugins .venv/bin/python benchmarks/bench_backup.py [--scale 20] [--jobs 1,2] [--repeat 2]

Builds the legacy fixture at --scale into a fresh database (ctest_bbench_<hex>, dropped at the end)
on the server of CONSOLIDATION_DB_URL, else the embedded one, and for each variant dumps every
legacy schema with the pg_dump 4D uses (phases.archives.clients: the server's own major version when
found), then verifies each archive as 4D does before a drop (sha256 + pg_restore --list), and
restores them into a scratch database (phases.backup.restore_archives: one transaction). Prints per
variant the seconds for dump, verification and restore, and the archive size (best of --repeat).
"""
from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--jobs", default="1,2", help="parallel jobs for the directory format (comma-separated)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per variant (the best is printed)")
    ap.add_argument("--no-restore", action="store_true", help="skip the restore into a scratch database")
    args = ap.parse_args()

    from consolidation.core import db
    from consolidation.core.plan import load_plan
    from consolidation.dev import fixture
    from consolidation.phases import backup as backups

    server = db.resolve_dsn()
    info = conninfo_to_dict(server)
    admin = make_conninfo(**(info | {"dbname": "postgres"}))
    name = f"ctest_bbench_{uuid.uuid4().hex[:8]}"
    dsn = make_conninfo(**(info | {"dbname": name}))
    plan = load_plan()
    created = [name]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        t = time.perf_counter()
        rows = fixture.build(dsn, scale=args.scale)
        print(f"fixture --scale {args.scale}: {sum(rows.values()):,} rows in {time.perf_counter() - t:.1f} s")
        env = backups.pg_env(dsn)
        with psycopg.connect(dsn) as conn:
            client = backups.client_for(conn.info.server_version)
            version = conn.info.parameter_status("server_version")
            schemas = [s for s in plan.legacy_schemas
                       if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (s,)).fetchone()]
        print(f"client: {client.describe()}; server {version}")
        variants = [("custom", 1, "default"), ("custom", 1, "none")]
        variants += [("directory", int(j), c) for c in ("default", "none") for j in args.jobs.split(",")]
        print(f"{'format':<10} {'jobs':>4} {'compress':<8} {'dump s':>8} {'verify s':>9} {'restore s':>10} {'MB':>8}")
        for fmt, jobs, compress in variants:
            best = None
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as d:
                    folder = Path(d)
                    paths = {}
                    t = time.perf_counter()
                    for s in schemas:
                        path = folder / f"{s}{backups.FORMATS[fmt]}"
                        backups._run([client.bin("pg_dump"), f"--format={fmt}", *backups.COMPRESSIONS[compress],
                                      *([f"--jobs={jobs}"] if jobs > 1 else []), f"--schema={s}", "--no-password",
                                      f"--file={path}"], env, f"pg_dump {s}")
                        paths[s] = path
                    t_dump = time.perf_counter() - t
                    t = time.perf_counter()
                    for p in paths.values():
                        backups.sha256_of(p)
                        backups.toc(p, env, client.bin("pg_restore"))
                    t_verify = time.perf_counter() - t
                    size = sum(backups.archive_bytes(p) for p in paths.values())
                    t_restore = float("nan")
                    if not args.no_restore:
                        scratch = f"{name}_r{len(created)}"
                        created.append(scratch)
                        with psycopg.connect(admin, autocommit=True) as conn:
                            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
                        t = time.perf_counter()
                        backups.restore_archives(make_conninfo(**(info | {"dbname": scratch})), paths, client)
                        t_restore = time.perf_counter() - t
                run = (t_dump, t_verify, t_restore, size)
                best = run if best is None or run[0] + run[1] < best[0] + best[1] else best
            t_dump, t_verify, t_restore, size = best
            print(f"{fmt:<10} {jobs:>4} {compress:<8} {t_dump:8.2f} {t_verify:9.2f} {t_restore:10.2f} "
                  f"{size / 1e6:8.1f}")
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for n in reversed(created):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n)))


if __name__ == "__main__":
    main()
