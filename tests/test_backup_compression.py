"""4D backups: CONSOLIDATION_BACKUP_COMPRESSION chooses pg_dump's compression (`default` or
`none`); either archive is verified readable and complete, its ledger row says which, and a
value the bundled pg_dump cannot honour is refused before anything is dumped."""
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
    monkeypatch.setenv("CONSOLIDATION_BACKUP_COMPRESSION", "zstd")
    with pytest.raises(backup.BackupFailed, match=r"CONSOLIDATION_BACKUP_COMPRESSION='zstd' is not one of "
                                                  r"default, none; unset it .* or set `none`"):
        backup.take_backup(db_4c, PLAN, tmp_path / "zstd", run_id="t-zstd", user="test")
    assert not list((tmp_path / "zstd").glob("*.dump"))
