"""Backups of the legacy schemas before 4D drops anything, and their restore.

One archive per legacy schema, `pg_dump -n <schema>`, with the pg_dump of the server's own major
version when one is found (archives.clients: CONSOLIDATION_PG_BIN, PATH, pg_config, the Debian/RPM
folders, else the bundled pg_dump 18, whose archives only pg_restore >= 18 reads: the manifest
says which pg_restore reads them). Format (CONSOLIDATION_BACKUP_FORMAT): `custom` (default, one
file `<schema>.dump`) or `directory` (a folder `<schema>.dir`, dumped with
CONSOLIDATION_BACKUP_JOBS parallel jobs). Every archive of one backup is taken from ONE exported
snapshot, and in that same snapshot the engine

* re-computes the reconciliation digest and compares it with the approved fingerprint
  (so what is dumped is exactly what the person approved), and
* computes a checksum of every table it dumps: order-independent, `count:sum` of a 64-bit
  hash of each row's text (core.catalog.table_checksum_query, with the output settings pinned),
  and the same for every consolidated target (the baseline the post-cleanup gate
  compares with).

An archive counts only when it is readable (`pg_restore --list`), lists data for every
table whose checksum was taken, and its size and sha256 are in the ledger (kind
'backup') and in manifest.json beside the archives. The sha256 of a directory archive is that of
the `sha256sum` lines of its files, sorted by name (`cd DIR && sha256sum $(LC_ALL=C ls) | sha256sum`);
each file's own sha256 is recorded too, so a changed file is named.

Credentials reach pg_dump/pg_restore/psql as PG* environment variables derived from the
DSN (core.dsn.pg_env): never on a command line.

Restore (`restore_schemas`; archives.restore into a scratch database): all archives in one psql
transaction, with the pg_restore of the target server's version when it reads them, pre-data of every
archive first, then data, then post-data, so foreign keys between legacy schemas (e.g.
tracking -> public) are re-created after both tables exist; an error rolls everything
back. Then every restored table's checksum must equal the one recorded at backup time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core import config, dsn as dsns, ledger
from consolidation.core.catalog import relation_exists, table_checksum_query
from consolidation.core.files import atomic_write, safe_name
from consolidation.core.plan import Plan
from consolidation.phases.archives import clients

PHASE = "4D"

# Text output of values depends on these settings; checksums are taken with them pinned,
# so a checksum at backup time and one after a restore (another session) are comparable.
_PINNED = {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres",
           "extra_float_digits": "3", "bytea_output": "hex"}


class BackupFailed(Refusal):
    """A backup or a restore that cannot be trusted; the message names the file or table."""


@dataclass
class Archive:
    schema: str
    path: str
    bytes: int
    sha256: str
    toc_entries: int
    tables: dict[str, dict] = field(default_factory=dict)  # qualified -> {"rows", "checksum"}
    format: str = "custom"
    files: dict[str, str] = field(default_factory=dict)  # directory format: file -> sha256


# ------------------------------------------------------------------ credentials
def pg_env(dsn: str) -> dict[str, str]:
    """Environment for the PostgreSQL client programs: os.environ with PG* from the DSN."""
    try:
        return dsns.pg_env(dsn)
    except ValueError as exc:
        raise BackupFailed(str(exc)) from None


def _run(args: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
    # umask 077: what the client programs write (archives, restore scripts) is the user's alone
    proc = subprocess.run(args, env=env, capture_output=True, text=True, umask=0o077)
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip()
        raise BackupFailed(f"{what} failed (exit {proc.returncode}): {err[-2000:]}")
    return proc


COMPRESSIONS = {"default": [], "none": ["--compress=0"], "lz4": ["--compress=lz4"], "zstd": ["--compress=zstd"]}


def compression() -> str:
    """CONSOLIDATION_BACKUP_COMPRESSION: `default` (pg_dump's, gzip), `none` (faster to write and
    read, about 10x larger), `lz4` or `zstd` (pg_dump 16 and newer built with them: see
    compression_supported; the bundled pg_dump has neither)."""
    raw = (os.environ.get("CONSOLIDATION_BACKUP_COMPRESSION") or "default").strip().lower()
    if raw not in COMPRESSIONS:
        raise BackupFailed(f"CONSOLIDATION_BACKUP_COMPRESSION={raw!r} is not one of {', '.join(COMPRESSIONS)}; "
                           "unset it (pg_dump's default compression) or set `none`; nothing was dumped or dropped")
    return raw


def compression_supported(client: clients.Client, compress: str) -> None:
    """BackupFailed, before anything is dumped, when the pg_dump in use cannot write `compress`:
    lz4/zstd need pg_dump 16+ built with them. The build is asked directly: pg_dump checks its
    compression option before it connects, so a run against no server says which it is."""
    if compress in ("default", "none"):
        return
    why = None
    if client.major < 16:
        why = f"pg_dump {client.version} takes only a gzip level (lz4 and zstd need pg_dump 16 or newer)"
    else:
        probe = subprocess.run([client.bin("pg_dump"), *COMPRESSIONS[compress], "--schema-only", "--no-password",
                                "--file=/dev/null", "--dbname=postgresql://consolidation-probe@127.0.0.1:1/none"],
                               capture_output=True, text=True, timeout=30)
        text = (probe.stderr or probe.stdout).strip()
        if "compress" in text.lower() or "not support" in text.lower():
            why = f"{client.describe()} says: {text.splitlines()[-1] if text else 'refused'}"
    if why:
        raise BackupFailed(f"CONSOLIDATION_BACKUP_COMPRESSION={compress}: {why}; set `default` or `none`, or "
                           "CONSOLIDATION_PG_BIN to a pg_dump built with it; nothing was dumped or dropped")


FORMATS = {"custom": ".dump", "directory": ".dir"}


def backup_format() -> str:
    """CONSOLIDATION_BACKUP_FORMAT: `custom` (default: one file per schema) or `directory` (a
    folder per schema, one file per table, dumped in parallel with CONSOLIDATION_BACKUP_JOBS)."""
    raw = (os.environ.get("CONSOLIDATION_BACKUP_FORMAT") or "custom").strip().lower()
    if raw not in FORMATS:
        raise BackupFailed(f"CONSOLIDATION_BACKUP_FORMAT={raw!r} is not one of {', '.join(FORMATS)}; "
                           "unset it (custom) or set `directory`; nothing was dumped or dropped")
    return raw


def backup_jobs(fmt: str) -> int:
    """CONSOLIDATION_BACKUP_JOBS: parallel pg_dump jobs per schema (directory format only; default 1)."""
    raw = (os.environ.get("CONSOLIDATION_BACKUP_JOBS") or "1").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= 64:
        raise BackupFailed(f"CONSOLIDATION_BACKUP_JOBS={raw!r} is not a number of jobs from 1 to 64; "
                           "nothing was dumped or dropped")
    if int(raw) > 1 and fmt != "directory":
        raise BackupFailed(f"CONSOLIDATION_BACKUP_JOBS={raw} needs CONSOLIDATION_BACKUP_FORMAT=directory (pg_dump "
                           "dumps in parallel only into a directory archive); set it, or unset the jobs; "
                           "nothing was dumped or dropped")
    return int(raw)


def _bin(name: str) -> str:
    """The bundled program (PostgreSQL 18): reads every archive a pg_dump up to 18 wrote."""
    from consolidation.core.embedded import bin_path

    return str(bin_path(name))


def client_for(server_version_num: int) -> clients.Client:
    """pg_dump/pg_restore of the server's major version when found (archives.clients)."""
    try:
        return clients.find_client(server_version_num)
    except clients.NoClient as exc:
        raise BackupFailed(str(exc)) from None


# ------------------------------------------------------------------ checksums
def pin_output(conn) -> None:
    """Pin the settings that change how values print (transaction-local)."""
    for name, value in _PINNED.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def tables_of(conn, schema: str) -> list[str]:
    """Ordinary and partitioned tables of a schema (partitions are dumped with their parent)."""
    return [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
        (schema,)).fetchall()]


def table_checksum(conn, schema: str, table: str) -> dict:
    """{"rows", "checksum"}: count and sum of every row's 64-bit hash (order-independent, one scan)."""
    row = conn.execute(table_checksum_query(sql.Identifier(schema, table))).fetchone()
    return {"rows": row[1], "checksum": row[0]}


def schema_checksums(conn, schema: str) -> dict[str, dict]:
    pin_output(conn)
    return {f"{schema}.{t}": table_checksum(conn, schema, t) for t in tables_of(conn, schema)}


def target_tables(plan: Plan) -> list[str]:
    """The consolidated tables the plan writes (recreated views excluded)."""
    return sorted({s.target for s in plan.migrating_steps() if s.migrates_rows})


def target_baseline(conn, plan: Plan) -> dict[str, dict]:
    pin_output(conn)
    out = {}
    for name in target_tables(plan):
        schema, table = name.split(".", 1)
        if relation_exists(conn, schema, table):
            out[name] = table_checksum(conn, schema, table)
    return out


# ------------------------------------------------------------------ backup
def default_folder(run_id: str) -> Path:
    root = config.backup_dir()
    private(root)
    return root / safe_name(run_id)


def private(path: Path) -> Path:
    """Archives hold every legacy row: folders 0700, files 0600, owned by the running user."""
    path.chmod(0o700 if path.is_dir() else 0o600)
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    """{relative name: sha256} of every file of a directory archive, sorted by name."""
    files = sorted((p.relative_to(path).as_posix(), p) for p in Path(path).rglob("*") if p.is_file())
    return {name: _file_sha256(p) for name, p in files}


def sha256_of(path: Path) -> str:
    """sha256 of a file; of a directory: of its `sha256sum` lines ("<sha256>  <name>\n", sorted by name)."""
    path = Path(path)
    if not path.is_dir():
        return _file_sha256(path)
    lines = "".join(f"{digest}  {name}\n" for name, digest in file_hashes(path).items())
    return hashlib.sha256(lines.encode()).hexdigest()


def archive_bytes(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def toc(path: Path, env: dict, pg_restore: str | None = None) -> list[str]:
    """The archive's table of contents (pg_restore --list): proves it is readable. Default
    reader: the bundled pg_restore (the newest: it reads what any older pg_dump wrote)."""
    out = _run([pg_restore or _bin("pg_restore"), "--list", str(path)], env, f"pg_restore --list {path}").stdout
    return [line for line in out.splitlines() if line and not line.startswith(";")]


def _missing_data(entries: list[str], tables) -> list[str]:
    """The tables ("schema.table") with no TABLE DATA entry in the archive's list. The list
    prints names unquoted, so a name with a space cannot be split out of a line: each expected
    table is looked for as its own exact "schema name" pair instead."""
    data = [line for line in entries if re.match(r"^\d+; \d+ \d+ TABLE DATA ", line)]
    missing = []
    for name in tables:
        schema, table = name.split(".", 1)
        entry = re.compile(r"^\d+; \d+ \d+ TABLE DATA " + re.escape(schema) + " " + re.escape(table) + " ")
        if not any(entry.match(line) for line in data):
            missing.append(name)
    return sorted(missing)


def _changed_files(path: Path, files: dict[str, str]) -> list[str]:
    now = file_hashes(path)
    return sorted({f"{path / n} ({'missing' if n not in now else 'not in the backup' if n not in files else 'changed'})"
                   for n in set(now) | set(files) if now.get(n) != files.get(n)})


def verify_archive(path: Path, *, sha256: str, tables: dict, env: dict, files: dict | None = None,
                   pg_restore: str | None = None) -> int:
    """The archive (file or directory) is there, unchanged, readable, and holds data for every
    table; returns TOC size. `files`: the directory archive's recorded file hashes (names a
    changed file)."""
    path = Path(path)
    if not path.exists():
        raise BackupFailed(f"backup archive {path} is missing; it was recorded in the ledger - "
                           "restore it from where backups are kept, or take a new backup")
    actual = sha256_of(path)
    if actual != sha256:
        changed = _changed_files(path, files) if files and path.is_dir() else []
        raise BackupFailed(f"backup archive {path} has sha256 {actual[:16]}..., the backup recorded "
                           f"{sha256[:16]}...: " + (f"changed: {', '.join(changed)}; " if changed else "")
                           + "the archive changed since the backup; do not use it")
    entries = toc(path, env, pg_restore)
    missing = _missing_data(entries, tables)
    if missing:
        raise BackupFailed(f"backup archive {path} holds no data entry for {', '.join(missing)}; "
                           "take the backup again")
    return len(entries)


def take_backup(dsn: str, plan: Plan, folder: Path, *, run_id: str, user: str | None,
                expected_fingerprint: str | None = None) -> dict:
    """Dump every existing legacy schema from one snapshot; verify and record each archive.

    With `expected_fingerprint`, the reconciliation fingerprint is recomputed inside the
    snapshot and must equal it (the approved one), or nothing is dumped.
    Returns {"folder", "snapshot", "fingerprint", "archives": [...], "baseline": {...}}.
    """
    from consolidation.phases.approvals import fingerprint as fingerprint_of
    from consolidation.checks.reconcile import digest

    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private(folder)  # also when it existed before
    env = pg_env(dsn)
    compress = compression()  # refused before anything is dumped
    fmt = backup_format()
    jobs = backup_jobs(fmt)
    archives: list[Archive] = []
    with psycopg.connect(dsn, connect_timeout=10) as snap:
        client = client_for(snap.info.server_version)
        compression_supported(client, compress)
        server_version = snap.info.parameter_status("server_version")
        snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snap.read_only = True
        with snap.transaction():
            snapshot = snap.execute("SELECT pg_export_snapshot()").fetchone()[0]
            fp = fingerprint_of(plan, digest(snap, plan))
            if expected_fingerprint and fp != expected_fingerprint:
                raise BackupFailed(
                    f"the data changed since the cleanup was approved (fingerprint {expected_fingerprint[:12]} "
                    f"approved, {fp[:12]} now); nothing was dumped or dropped - re-run phase4d_legacy_cleanup "
                    "for a new request")
            present = {r[0] for r in snap.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                                                  (list(plan.legacy_schemas),)).fetchall()}
            sums = {s: schema_checksums(snap, s) for s in plan.legacy_schemas if s in present}
            baseline = target_baseline(snap, plan)
            for schema in plan.legacy_schemas:
                if schema not in present:
                    continue
                path = folder / f"{safe_name(schema)}{FORMATS[fmt]}"
                _dump(client, schema, path, fmt=fmt, jobs=jobs, compress=compress, snapshot=snapshot, env=env)
                files = file_hashes(path) if fmt == "directory" else {}
                archives.append(Archive(schema, str(path), archive_bytes(path), sha256_of(path), 0, sums[schema],
                                        fmt, files))
    # every archive is checked readable (by the pg_restore of the pg_dump that wrote it) and
    # complete before anything may be dropped
    for a in archives:
        a.toc_entries = verify_archive(Path(a.path), sha256=a.sha256, tables=a.tables, env=env,
                                       pg_restore=client.bin("pg_restore"))
    taken_at = datetime.now(timezone.utc).isoformat()
    made_with = {"pg_dump_version": client.version, "server_version": server_version,
                 "readable_by": client.readable_by, "pg_dump": client.as_dict(), "pg_dump_note": client.note(),
                 "format": fmt, "jobs": jobs, "compression": compress}
    manifest = {"run_id": run_id, "taken_at": taken_at, "plan_sha256": plan.sha256, "snapshot": snapshot,
                "fingerprint": fp, **made_with, "archives": [asdict(a) for a in archives], "baseline": baseline}
    private(atomic_write(folder / "manifest.json", json.dumps(manifest, indent=2, default=str) + "\n"))
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        for a in archives:
            ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="backup",
                          name=f"backup:{a.schema}", source=a.schema, target=a.path, triggered_by=user,
                          message=f"{a.schema}: {len(a.tables)} table(s), {a.bytes:,} bytes, sha256 {a.sha256}; "
                                  f"{fmt} archive {client.note()}",
                          details=asdict(a) | made_with | {"snapshot": snapshot, "fingerprint": fp,
                                                           "manifest": str(folder / "manifest.json")})
        ledger.record(conn, plan, status=ledger.SUCCESS, run_id=run_id, phase=PHASE, kind="run",
                      name="baseline", triggered_by=user,
                      message="consolidated tables at backup time (what the post-cleanup gate compares with)",
                      details={"targets": baseline, "fingerprint": fp, "snapshot": snapshot})
        conn.commit()
    return manifest


def dump_pattern(name: str) -> str:
    """pg_dump's --schema takes a pattern (unquoted: folded to lower case, `*`, `?` and `.` special):
    the exact name, double-quoted as in SQL ("UPPER Case", "odd""name")."""
    return '"' + name.replace('"', '""') + '"'


def _dump(client: clients.Client, schema: str, path: Path, *, fmt: str, jobs: int, compress: str, snapshot: str,
          env: dict) -> None:
    """pg_dump of one schema from the exported snapshot. A directory archive is written beside
    its final name and moved there once complete (pg_dump refuses an existing directory)."""
    out = path.with_name(path.name + ".partial") if fmt == "directory" else path
    if fmt == "directory" and out.exists():
        shutil.rmtree(out)
    _run([client.bin("pg_dump"), f"--format={fmt}", *COMPRESSIONS[compress],
          *([f"--jobs={jobs}"] if jobs > 1 else []), f"--schema={dump_pattern(schema)}", f"--snapshot={snapshot}",
          "--no-password", f"--file={out}"], env, f"pg_dump of schema {schema} ({client.describe()})")
    if fmt == "directory":
        if path.exists():
            shutil.rmtree(path)
        out.rename(path)
        for p in path.rglob("*"):
            private(p)
    private(path)


# ------------------------------------------------------------------ reading back
def latest_backups(conn, plan: Plan, run_id: str | None = None) -> dict[str, dict]:
    """{schema: ledger row} of the most recent successful backup of each legacy schema
    (of one run, when run_id is given)."""
    where = sql.SQL("phase = %s AND kind = 'backup' AND status = 'success' AND name LIKE 'backup:%%'")
    params: tuple = (PHASE,)
    if run_id:
        where = sql.SQL("{} AND run_id = %s").format(where)
        params += (run_id,)
    out: dict[str, dict] = {}
    for row in ledger.rows(conn, plan, where, params):
        out[row["source"]] = row  # later rows win
    return out


def baseline(conn, plan: Plan, run_id: str) -> dict | None:
    rows = ledger.rows(conn, plan, "phase = '4D' AND kind = 'run' AND name = 'baseline' AND run_id = %s", (run_id,))
    return rows[-1]["details"]["targets"] if rows else None


# ------------------------------------------------------------------ restore
def _server_version(conn) -> int:
    return conn.info.server_version


def _filtered_list(archive: Path, env: dict, existing_schemas: set[str], folder: Path, pg_restore: str) -> Path:
    """A pg_restore -L list without the CREATE SCHEMA entry of schemas that still exist
    (the kept, emptied public schema)."""
    out = []
    for line in _run([pg_restore, "--list", str(archive)], env, f"pg_restore --list {archive}").stdout.splitlines():
        m = re.match(r"^\d+; \d+ \d+ SCHEMA - (\S+) ", line)
        if m and m.group(1) in existing_schemas:
            out.append(";" + line)  # commented out: not restored
        else:
            out.append(line)
    path = folder / (archive.name + ".list")
    path.write_text("\n".join(out) + "\n")
    return path


def _script(archive: Path, listing: Path, section: str, env: dict, folder: Path, strip_timeout: bool,
            pg_restore: str) -> Path:
    path = folder / f"{archive.stem}.{section}.sql"
    _run([pg_restore, f"--section={section}", f"--use-list={listing}", f"--file={path}", str(archive)],
         env, f"pg_restore --section={section} {archive}")
    if strip_timeout:
        # pg_restore writing a script cannot know the server; `SET transaction_timeout`
        # exists from PostgreSQL 17 on and would abort the transaction on older servers.
        tmp = path.with_suffix(".tmp")
        with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
            for line in src:
                if line.strip() != "SET transaction_timeout = 0;":
                    dst.write(line)
        tmp.replace(path)
    return path


def reader_for(server_version_num: int, made_with: dict) -> clients.Client:
    """The pg_restore for a server of this version that reads archives `made_with` describes
    (a manifest or a backup's ledger details: pg_dump_version, pg_dump.bindir)."""
    version = made_with.get("pg_dump_version")
    major = int(str(version).split(".")[0]) if version else None
    try:
        return clients.reader(server_version_num, major, (made_with.get("pg_dump") or {}).get("bindir"))
    except clients.NoClient as exc:
        raise BackupFailed(str(exc)) from None


def restore_archives(dsn: str, archives: dict[str, Path], client: clients.Client) -> None:
    """Restore {schema: archive} in ONE psql transaction, with `client`'s pg_restore and psql:
    pre-data of every archive, then data, then post-data; an error restores nothing."""
    env = pg_env(dsn)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        existing = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
        strip = _server_version(conn) < 170000
    pg_restore = client.bin("pg_restore")
    with tempfile.TemporaryDirectory(prefix="consolidation-restore-") as tmp:
        folder = Path(tmp)
        scripts: list[Path] = []
        lists = {s: _filtered_list(a, env, existing, folder, pg_restore) for s, a in archives.items()}
        for section in ("pre-data", "data", "post-data"):
            for schema, archive in archives.items():
                scripts.append(_script(archive, lists[schema], section, env, folder, strip, pg_restore))
        args = [client.bin("psql"), "--no-psqlrc", "--quiet", "--no-password", "--single-transaction",
                "--set=ON_ERROR_STOP=1"]
        for s in scripts:
            args.append(f"--file={s}")
        _run(args, env, f"restoring {', '.join(archives)} with {client.describe().replace('pg_dump', 'pg_restore', 1)} "
                        "(one transaction; nothing was restored)")


def restore_schemas(dsn: str, plan: Plan, backups: dict[str, dict], *, run_id: str,
                    user: str | None) -> dict[str, dict]:
    """Restore the given schemas ({schema: backup ledger row}) in ONE transaction, then
    prove every table equals its backup checksum. Returns {schema: {"tables": n}}."""
    env = pg_env(dsn)
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        server = _server_version(conn)
    # the newest pg_dump among the archives decides which pg_restore can read them all
    newest = max((r["details"] for r in backups.values()), default={},
                 key=lambda d: int(str(d.get("pg_dump_version") or "0").split(".")[0]))
    client = reader_for(server, newest)
    for schema, row in backups.items():
        d = row["details"]
        verify_archive(Path(d["path"]), sha256=d["sha256"], tables=d["tables"], env=env, files=d.get("files"),
                       pg_restore=client.bin("pg_restore"))
    restore_archives(dsn, {s: Path(r["details"]["path"]) for s, r in backups.items()}, client)
    out = {}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        all_problems: list[str] = []
        for schema, row in backups.items():
            problems: list[str] = []
            recorded = row["details"]["tables"]
            with conn.transaction():
                now = schema_checksums(conn, schema)
            for table, want in recorded.items():
                got = now.get(table)
                if got != want:
                    problems.append(f"{table}: backup had {want['rows']} rows (checksum {want['checksum'][:12]}), "
                                    f"restored {got['rows'] if got else 'no table'}"
                                    + (f" (checksum {got['checksum'][:12]})" if got else ""))
            status = ledger.SUCCESS if not problems else ledger.FAILED
            ledger.record(conn, plan, status=status, run_id=run_id, phase="rollback", kind="backup",
                          name=f"restore:{schema}", source=row["details"]["path"], target=schema, triggered_by=user,
                          message=f"{schema} restored from {row['details']['path']}: {len(recorded)} table(s) "
                                  + ("equal to the backup checksums" if not problems else "DIFFER from the backup"),
                          details={"backup_ledger_id": row["id"], "sha256": row["details"]["sha256"],
                                   "tables": now, "problems": problems})
            out[schema] = {"tables": len(recorded)}
            all_problems += problems
        conn.commit()
        if all_problems:
            raise BackupFailed("restored tables differ from the backup checksums:\n  " + "\n  ".join(all_problems))
    return out
