"""4D backups: CONSOLIDATION_BACKUP_COMPRESSION chooses pg_dump's compression (`default`, `none`,
`lz4`, `zstd`); each archive is verified readable and complete, its ledger row says which, and a
value the pg_dump in use cannot honour is refused before anything is dumped."""
from __future__ import annotations

import subprocess

import psycopg
import pytest
from psycopg import sql

from consolidation.core import ledger
from consolidation.phases import backup

from phase_helpers import PLAN

pytestmark = pytest.mark.engine


def header_compression(path: str, env: dict) -> str:
    out = subprocess.run([backup._bin("pg_restore"), "--list", path], env=env, capture_output=True, text=True,
                         check=True).stdout
    return next(line.split(":", 1)[1].strip() for line in out.splitlines() if "Compression:" in line)


def test_uncompressed_backup_is_verified_and_recorded(db_4c, tmp_path, monkeypatch):
    env = backup.pg_env(db_4c)
    monkeypatch.delenv("CONSOLIDATION_BACKUP_COMPRESSION", raising=False)
    packed = backup.take_backup(db_4c, PLAN, tmp_path / "default", run_id="t-gzip", user="test")
    monkeypatch.setenv("CONSOLIDATION_BACKUP_COMPRESSION", "none")
    plain = backup.take_backup(db_4c, PLAN, tmp_path / "none", run_id="t-none", user="test")
    by_schema = {a["schema"]: a for a in packed["archives"]}
    assert [a["schema"] for a in plain["archives"]] == list(by_schema)
    for a in plain["archives"]:
        assert header_compression(a["path"], env) == "none"
        assert header_compression(by_schema[a["schema"]]["path"], env) != "none"
        assert a["tables"] == by_schema[a["schema"]]["tables"]  # same tables, same checksums
        assert a["toc_entries"] == by_schema[a["schema"]]["toc_entries"] > 0
    assert sum(a["bytes"] for a in plain["archives"]) > sum(a["bytes"] for a in packed["archives"])
    with psycopg.connect(db_4c) as conn:
        rows = ledger.rows(conn, PLAN, sql.SQL("kind = 'backup'"))
    assert {(r["run_id"], r["details"]["compression"]) for r in rows} == {("t-gzip", "default"), ("t-none", "none")}


def test_unknown_compression_refused_before_anything_is_dumped(db_4c, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSOLIDATION_BACKUP_COMPRESSION", "brotli")
    with pytest.raises(backup.BackupFailed, match=r"CONSOLIDATION_BACKUP_COMPRESSION='brotli' is not one of "
                                                  r"default, none, lz4, zstd; unset it .* or set `none`"):
        backup.take_backup(db_4c, PLAN, tmp_path / "brotli", run_id="t-brotli", user="test")
    assert not (tmp_path / "brotli").exists() or not list((tmp_path / "brotli").iterdir())


def test_lz4_or_zstd_only_where_the_pg_dump_in_use_can_write_it(db_4c, tmp_path, monkeypatch):
    """lz4/zstd are asked of the pg_dump the backup would use: one that cannot write them (the
    bundled build has neither; PostgreSQL 15's takes only a gzip level) is refused, naming it,
    before anything is dumped; one that can is used and its archives say so."""
    from consolidation.phases.archives import clients

    with psycopg.connect(db_4c) as conn:
        client = backup.client_for(conn.info.server_version)
    for method in ("lz4", "zstd"):
        monkeypatch.setenv("CONSOLIDATION_BACKUP_COMPRESSION", method)
        try:
            backup.compression_supported(client, method)
        except backup.BackupFailed as exc:
            assert f"CONSOLIDATION_BACKUP_COMPRESSION={method}: " in str(exc) and "nothing was dumped" in str(exc)
            with pytest.raises(backup.BackupFailed, match=f"COMPRESSION={method}: "):
                backup.take_backup(db_4c, PLAN, tmp_path / method, run_id=f"t-{method}", user="test")
            assert not list((tmp_path / method).glob("*.dump"))
            continue
        done = backup.take_backup(db_4c, PLAN, tmp_path / method, run_id=f"t-{method}", user="test")
        for a in done["archives"]:
            assert header_compression(a["path"], backup.pg_env(db_4c)).lower().startswith(method)
    bundled = clients.Client(str(clients.bundled_dir()), "18", 18, "bundled")
    with pytest.raises(backup.BackupFailed, match="does not support compression with ZSTD"):
        backup.compression_supported(bundled, "zstd")
    old = clients.Client("/usr/lib/postgresql/15/bin", "15.20", 15, "a system folder")
    with pytest.raises(backup.BackupFailed, match="takes only a gzip level"):
        backup.compression_supported(old, "lz4")
