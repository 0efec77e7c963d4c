"""Which pg_dump/pg_restore the backups use (phases.archives.clients.find_client): the server's
own major version when a folder holds it (CONSOLIDATION_PG_BIN, PATH, pg_config, the Debian/RPM
folders, the bundled binaries), else the lowest newer one, said in the note; an older or
incomplete CONSOLIDATION_PG_BIN is refused in one line. Fake bin folders hold scripts that print
a version, so no PostgreSQL is needed; the backup settings are refused before anything runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from consolidation.phases import backup
from consolidation.phases.archives import clients

pytestmark = pytest.mark.unit


def fake_bin(folder: Path, version: str, programs=("pg_dump", "pg_restore")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in programs:
        script = folder / name
        script.write_text(f"#!/bin/sh\necho '{name} (PostgreSQL) {version} (fake)'\n")
        script.chmod(0o755)
    return folder


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine whose only client programs are fake folders: PATH, /usr/lib/postgresql/<N>/bin
    (under tmp_path) and the bundled 18."""
    root = tmp_path / "root"
    monkeypatch.setattr(clients, "SYSTEM_DIRS", (str(root / "usr/lib/postgresql/{major}/bin"),))
    monkeypatch.setattr(clients, "OTHER_VERSIONS", ())
    bundled = fake_bin(tmp_path / "bundled", "18.6")
    monkeypatch.setattr(clients, "bundled_dir", lambda: bundled)
    path_dir = tmp_path / "path"
    path_dir.mkdir()
    monkeypatch.setenv("PATH", str(path_dir))
    monkeypatch.delenv(clients.ENV, raising=False)
    return {"root": root, "path": path_dir, "bundled": bundled, "tmp": tmp_path}


def test_the_servers_own_major_version_is_found_on_path(machine):
    fake_bin(machine["path"], "15.4")
    c = clients.find_client(150008)
    assert (c.bindir, c.version, c.major, c.source, c.matches) == (str(machine["path"]), "15.4", 15, "PATH", True)
    assert c.readable_by == "pg_restore >= 15" and "the server's own pg_restore included" in c.note()
    assert c.bin("pg_restore") == str(machine["path"] / "pg_restore")
    assert c.bin("psql") == str(machine["bundled"] / "psql")  # not in that folder: the bundled one


def test_the_debian_folder_of_the_servers_version_wins_over_a_newer_one_on_path(machine):
    fake_bin(machine["path"], "17.2")
    fake_bin(machine["root"] / "usr/lib/postgresql/16/bin", "16.9")
    c = clients.find_client(160004)
    assert (c.version, c.matches) == ("16.9", True)
    assert c.bindir == str(machine["root"] / "usr/lib/postgresql/16/bin")


def test_only_a_newer_pg_dump_is_used_and_the_note_says_who_can_read_it(machine, monkeypatch):
    fake_bin(machine["path"], "14.1")  # older than the server: it cannot dump it
    c = clients.find_client(160004)
    assert (c.source, c.version, c.matches, c.readable_by) == ("bundled", "18.6", False, "pg_restore >= 18")
    assert "no pg_dump 16 was found" in c.note() and "NOT by the server's own pg_restore 16" in c.note()
    # of the newer ones, the lowest (its archives are readable by more pg_restore versions)
    monkeypatch.setenv("PATH", str(fake_bin(machine["tmp"] / "seventeen", "17.0")))
    assert (clients.find_client(160004).version, clients.find_client(160004).readable_by) == ("17.0", "pg_restore >= 17")


def test_consolidation_pg_bin_is_used_alone_and_refused_when_unusable(machine, monkeypatch):
    fake_bin(machine["path"], "15.4")
    chosen = fake_bin(machine["tmp"] / "chosen", "17.5")
    monkeypatch.setenv(clients.ENV, str(chosen))
    c = clients.find_client(150008)
    assert (c.source, c.version, c.matches) == (clients.ENV, "17.5", False)  # chosen, though PATH has 15
    old = fake_bin(machine["tmp"] / "old", "14.3")
    monkeypatch.setenv(clients.ENV, str(old))
    with pytest.raises(clients.NoClient, match=rf"^{clients.ENV}=.*old holds pg_dump 14.3, older than the server "
                                               r"\(PostgreSQL 15\): it cannot dump it; point it at"):
        clients.find_client(150008)
    half = fake_bin(machine["tmp"] / "half", "15.4", programs=("pg_dump",))
    monkeypatch.setenv(clients.ENV, str(half))
    with pytest.raises(clients.NoClient, match=r"half holds no runnable pg_dump and pg_restore"):
        clients.find_client(150008)
    # the backup turns it into its own one-line refusal
    with pytest.raises(backup.BackupFailed, match=r"half holds no runnable"):
        backup.client_for(150008)


def test_nothing_new_enough_is_refused_naming_where_it_looked(machine):
    with pytest.raises(clients.NoClient, match=r"no pg_dump of PostgreSQL 19 or newer was found \(PATH, pg_config, "
                                               r".*usr/lib/postgresql/19/bin, the bundled binaries\); install"):
        clients.find_client(190000)


def test_reader_reads_with_the_servers_pg_restore_unless_the_archive_is_newer(machine):
    fake_bin(machine["path"], "15.4")
    assert clients.reader(150008, 15).version == "15.4"
    assert clients.reader(150008, 18).version == "18.6"  # pg_restore 15 cannot read pg_dump 18's archives
    own = fake_bin(machine["tmp"] / "own", "17.1")
    assert clients.reader(150008, 17, str(own)).bindir == str(own)


@pytest.mark.parametrize("env, message", [
    ({"CONSOLIDATION_BACKUP_FORMAT": "tar"}, r"CONSOLIDATION_BACKUP_FORMAT='tar' is not one of custom, directory"),
    ({"CONSOLIDATION_BACKUP_JOBS": "4"}, r"CONSOLIDATION_BACKUP_JOBS=4 needs CONSOLIDATION_BACKUP_FORMAT=directory"),
    ({"CONSOLIDATION_BACKUP_FORMAT": "directory", "CONSOLIDATION_BACKUP_JOBS": "0"},
     r"CONSOLIDATION_BACKUP_JOBS='0' is not a number of jobs from 1 to 64"),
])
def test_backup_settings_refused_before_anything_is_dumped(tmp_path, monkeypatch, env, message):
    for key in ("CONSOLIDATION_BACKUP_FORMAT", "CONSOLIDATION_BACKUP_JOBS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(backup.BackupFailed, match=message + r".*nothing was dumped or dropped"):
        # refused before any connection: the DSN names no server
        backup.take_backup("host=/nonexistent dbname=x", None, tmp_path / "b", run_id="r", user="t")
    assert not any((tmp_path / "b").iterdir())
