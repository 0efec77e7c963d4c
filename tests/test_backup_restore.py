"""`consolidation restore --backup DIR --into DSN`: a 4D backup (phases.backup.take_backup, what the
4D backup task runs) restored into a fresh scratch database holds exactly the legacy rows (test-side
md5 of every table) and every table is reported OK; a changed archive is refused naming the file,
and so is a target that already holds the schemas. The archives are made with the server's own
pg_dump and readable by its own pg_restore (on CI's PostgreSQL 15 leg: /usr/lib/postgresql/15/bin).
The directory format with parallel jobs round-trips too: deterministic sha256, verification before a
drop, restore, a changed file named."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from consolidation import api
from consolidation.core import ledger
from consolidation.phases import backup

from phase_helpers import PLAN, snapshot

pytestmark = pytest.mark.engine
PG15_RESTORE = Path("/usr/lib/postgresql/15/bin/pg_restore")


def _backup(make_session_db, template, folder: Path, env: dict, run_id: str) -> tuple[str, Path, dict]:
    dsn = make_session_db(template=template.name)
    with pytest.MonkeyPatch.context() as m:
        for key in ("CONSOLIDATION_BACKUP_FORMAT", "CONSOLIDATION_BACKUP_JOBS", "CONSOLIDATION_BACKUP_COMPRESSION",
                    "CONSOLIDATION_PG_BIN"):
            m.delenv(key, raising=False)
        for key, value in env.items():
            m.setenv(key, value)
        manifest = backup.take_backup(dsn, PLAN, folder, run_id=run_id, user="test")
    return dsn, folder, manifest


@pytest.fixture(scope="module")
def custom(make_session_db, template_4c, tmp_path_factory):
    return _backup(make_session_db, template_4c, tmp_path_factory.mktemp("custom") / "backup", {}, "t-custom")


@pytest.fixture(scope="module")
def directory(make_session_db, template_4c, tmp_path_factory):
    return _backup(make_session_db, template_4c, tmp_path_factory.mktemp("directory") / "backup",
                   {"CONSOLIDATION_BACKUP_FORMAT": "directory", "CONSOLIDATION_BACKUP_JOBS": "2"}, "t-dir")


def server_major(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.info.server_version // 10000


def legacy_tables(dsn: str) -> list[str]:
    return sorted(snapshot(dsn, PLAN.legacy_schemas))


def test_restore_into_a_scratch_database_equals_the_legacy_rows(custom, make_db, cli):
    dsn, folder, manifest = custom
    scratch = make_db()
    done = cli("restore", "--backup", str(folder), "--into", scratch)
    assert done.returncode == 0, done.stderr
    tables = legacy_tables(dsn)
    ok = dict(re.findall(r"^  (\S+)\s+([\d,]+) rows  OK$", done.stdout, re.M))
    assert sorted(ok) == tables  # every legacy table, each reported OK with its rows
    legacy = snapshot(dsn, PLAN.legacy_schemas)
    assert {t: int(n.replace(",", "")) for t, n in ok.items()} == {t: n for t, (_, n) in legacy.items()}
    assert snapshot(scratch, PLAN.legacy_schemas) == legacy  # test-side md5 of every row, every table
    assert f"{len(tables)} table(s) restored, every one equal to its checksum in the manifest" in done.stdout
    # a second restore into the same database is refused: it holds those schemas now
    again = cli("restore", "--backup", str(folder), "--into", scratch)
    assert again.returncode == 1 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1
    assert re.search(r"^restore refused: database .* already holds schema\(s\) action \(\d+ objects\), .*; restore "
                     r"into an empty scratch database", again.stderr)


def test_one_schema_restored_alone(custom, make_db):
    dsn, folder, _ = custom
    scratch = make_db()
    out = api.restore_backup(folder, scratch, ["splits"])
    assert out.ok and out.value == {"tables": len([t for t in legacy_tables(dsn) if t.startswith("splits.")]),
                                    "mismatched": []}
    assert snapshot(scratch, PLAN.legacy_schemas) == {t: v for t, v in snapshot(dsn, PLAN.legacy_schemas).items()
                                                      if t.startswith("splits.")}
    with pytest.raises(backup.BackupFailed, match=r"holds no schema nope \(it holds: public, action, "):
        api.restore_backup(folder, scratch, ["nope"])


def test_a_changed_archive_is_refused_naming_the_file(custom, make_db, cli, tmp_path):
    _, folder, _ = custom
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    archive = copy / "splits.dump"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    scratch = make_db()
    done = cli("restore", "--backup", str(copy), "--into", scratch)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert f"restore refused: backup archive {archive} has sha256 " in done.stderr
    assert "the archive changed since the backup; do not use it" in done.stderr
    with psycopg.connect(scratch) as conn:  # nothing was restored
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = ANY(%s)",
                            (list(PLAN.legacy_schemas),)).fetchone()[0] == 1  # the fresh database's own public
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace").fetchone() == (0,)


def test_archives_are_made_with_the_servers_own_pg_dump(custom):
    dsn, folder, manifest = custom
    major = server_major(dsn)
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["pg_dump_version"] == manifest["pg_dump_version"]
    assert int(manifest["pg_dump_version"].split(".")[0]) == major == int(manifest["server_version"].split(".")[0])
    assert manifest["readable_by"] == f"pg_restore >= {major}" and manifest["pg_dump"]["matches_server"] is True
    assert (manifest["format"], manifest["jobs"]) == ("custom", 1)
    with psycopg.connect(dsn) as conn:
        rows = ledger.rows(conn, PLAN, sql.SQL("kind = 'backup' AND run_id = 't-custom'"))
    assert {r["details"]["pg_dump_version"] for r in rows} == {manifest["pg_dump_version"]}
    assert all(manifest["pg_dump_note"] in r["message"] for r in rows)
    with psycopg.connect(dsn) as conn:  # the completion report says which pg_restore reads them
        shown = api.report_data(conn, PLAN, "t-custom")["backups"]
    assert sorted(b["schema"] for b in shown) == sorted(a["schema"] for a in manifest["archives"])
    assert {b["made_with"] for b in shown} == {f"custom, pg_dump {manifest['pg_dump_version']} of PostgreSQL "
                                               f"{manifest['server_version']}: readable by pg_restore >= {major}"}


@pytest.mark.skipif(not PG15_RESTORE.exists(), reason=f"no {PG15_RESTORE} on this machine")
def test_on_postgresql_15_its_own_pg_restore_reads_the_archives(custom):
    dsn, folder, manifest = custom
    if server_major(dsn) != 15:
        pytest.skip("the server is not PostgreSQL 15 (CI's second leg runs this against 127.0.0.1:5432)")
    assert manifest["pg_dump_version"].startswith("15.")
    assert manifest["pg_dump"]["bindir"] == str(PG15_RESTORE.parent)
    env = backup.pg_env(dsn)
    for a in manifest["archives"]:
        listing = subprocess.run([str(PG15_RESTORE), "--list", a["path"]], env=env, capture_output=True, text=True)
        assert listing.returncode == 0, listing.stderr
        data = {f"{m[0]}.{m[1]}" for m in re.findall(r"TABLE DATA (\S+) (\S+) ", listing.stdout)}
        assert set(a["tables"]) <= data


def directory_sha256(path: Path) -> str:
    """Test-side: sha256 of `cd DIR && sha256sum $(LC_ALL=C ls)`."""
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                    for p in sorted(path.iterdir(), key=lambda p: p.name.encode()))
    return hashlib.sha256(lines.encode()).hexdigest()


def test_directory_archives_with_parallel_jobs_round_trip(directory, custom, make_db):
    dsn, folder, manifest = directory
    assert (manifest["format"], manifest["jobs"]) == ("directory", 2)
    assert [a["schema"] for a in manifest["archives"]] == [a["schema"] for a in custom[2]["archives"]]
    env = backup.pg_env(dsn)
    for a in manifest["archives"]:
        path = Path(a["path"])
        assert path.is_dir() and path.name == f"{a['schema']}.dir" and (path / "toc.dat").is_file()
        assert a["sha256"] == directory_sha256(path)
        assert a["bytes"] == sum(p.stat().st_size for p in path.iterdir())
        assert a["tables"] == next(c["tables"] for c in custom[2]["archives"] if c["schema"] == a["schema"])
    # the check before a drop (api.cleanup_drop), from the ledger row as it reads it
    with psycopg.connect(dsn) as conn:
        rows = backup.latest_backups(conn, PLAN, "t-dir")
    assert {(r["details"]["format"], r["details"]["jobs"]) for r in rows.values()} == {("directory", 2)}
    d = rows["public"]["details"]
    assert backup.verify_archive(Path(d["path"]), sha256=d["sha256"], tables=d["tables"], env=env) > 0
    # restore into a scratch database: the legacy rows exactly
    scratch = make_db()
    out = api.restore_backup(folder, scratch)
    assert out.ok and out.value["mismatched"] == [] and out.value["tables"] == len(legacy_tables(dsn))
    assert snapshot(scratch, PLAN.legacy_schemas) == snapshot(dsn, PLAN.legacy_schemas)
    # one changed table file: named by the restore and by the check before a drop
    victim = max((p for p in Path(d["path"]).iterdir() if p.name != "toc.dat"), key=lambda p: p.stat().st_size)
    with open(victim, "ab") as f:
        f.write(b"\0")
    with pytest.raises(backup.BackupFailed, match=rf"changed: {re.escape(str(victim))} \(changed\); the archive "
                                                  "changed since the backup"):
        api.restore_backup(folder, make_db())
    with pytest.raises(backup.BackupFailed, match=rf"backup archive {re.escape(d['path'])} has sha256"):
        backup.verify_archive(Path(d["path"]), sha256=d["sha256"], tables=d["tables"], env=env)
