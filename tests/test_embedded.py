"""The embedded server, DSN handling and the `db` CLI.

The shared embedded server (repository .state/pgdata) is started if needed but never
stopped here; the start/stop cycle runs on a temporary data directory and another port.
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from consolidation.core import db, embedded

pytestmark = pytest.mark.engine  # the embedded server itself; the tests marked unit need none


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_start_is_idempotent_and_server_answers():
    first = embedded.start()
    second = embedded.start()
    assert first == second == embedded.url()
    with psycopg.connect(first, connect_timeout=5) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_database()").fetchone() == ("betting",)


def test_status_reports_running():
    embedded.start()
    info = embedded.status()
    assert info["running"] is True
    assert isinstance(info["pid"], int) and info["pid"] > 0
    assert info["url"] == embedded.url()
    assert info["datadir"] == str(embedded.data_dir())
    assert f":{info['port']}/" in info["url"]


@pytest.mark.unit
def test_url_shape():
    assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/betting", embedded.url())
    assert embedded.url("postgres").endswith("/postgres")


@pytest.mark.unit
def test_bin_path():
    for name in ("pg_dump", "pg_restore", "psql", "initdb", "pg_ctl"):
        assert embedded.bin_path(name).is_file()
    with pytest.raises(FileNotFoundError):
        embedded.bin_path("no_such_binary")


@pytest.mark.unit
def test_unreachable_message_hides_password(monkeypatch):
    monkeypatch.delenv("CONSOLIDATION_DB_URL", raising=False)
    with pytest.raises(db.DatabaseUnreachable) as err:
        db.connect("postgresql://u:secret@127.0.0.1:1/x")
    message = str(err.value)
    assert "postgresql://u:***@127.0.0.1:1/x" in message
    assert "secret" not in message
    assert "\n" not in message

    monkeypatch.setenv("CONSOLIDATION_DB_URL", "postgresql://u:secret@127.0.0.1:1/x")
    with pytest.raises(db.DatabaseUnreachable) as err:
        db.connect()
    assert "***" in str(err.value) and "secret" not in str(err.value)
    assert "CONSOLIDATION_DB_URL" in str(err.value)


@pytest.mark.unit
def test_unreachable_embedded_default_says_how_to_start(monkeypatch, tmp_path):
    monkeypatch.delenv("CONSOLIDATION_DB_URL", raising=False)
    monkeypatch.setenv("CONSOLIDATION_PGDATA", str(tmp_path / "never-started"))
    monkeypatch.setenv("CONSOLIDATION_EMBEDDED_PORT", "1")
    with pytest.raises(db.DatabaseUnreachable) as err:
        db.connect()
    message = str(err.value)
    assert "postgresql://postgres@127.0.0.1:1/betting" in message
    assert "python -m consolidation db start" in message


def test_cli_db_status_and_url(cli):
    embedded.start()
    result = cli("db", "status", "--json", "--check")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["running"] is True and info["url"] == embedded.url()

    result = cli("db", "status")
    assert result.returncode == 0 and "running: True" in result.stdout

    result = cli("db", "url")
    assert result.returncode == 0 and result.stdout.strip() == embedded.url()


@pytest.mark.unit
def test_cli_unreachable_is_one_line_exit_2(run_cli):
    result = run_cli("db", "ping", dsn="postgresql://u:secret@127.0.0.1:1/x")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cannot reach postgresql://u:***@127.0.0.1:1/x")
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_cli_ping_against_test_database(cli, db_dsn):
    result = cli("db", "ping", dsn=db_dsn)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_make_db_and_template(make_db, db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        name = conn.execute("select current_database()").fetchone()[0]
        assert name.startswith("ctest_")
        conn.execute("create table t (x int)")
        conn.execute("insert into t values (42)")
    clone = make_db(template=name)
    with psycopg.connect(clone) as conn:
        assert conn.execute("select x from t").fetchone() == (42,)


def test_full_start_stop_cycle_on_temporary_data_dir(monkeypatch):
    # Short path under /tmp keeps the unix socket path well below the ~107 byte limit.
    root = Path(tempfile.mkdtemp(prefix="cpg-"))
    port = _free_port()
    monkeypatch.setenv("CONSOLIDATION_PGDATA", str(root / "pgdata"))
    monkeypatch.setenv("CONSOLIDATION_EMBEDDED_PORT", str(port))
    try:
        assert embedded.status()["running"] is False
        dsn = embedded.start()
        assert dsn == f"postgresql://postgres@127.0.0.1:{port}/betting"
        assert embedded.status()["running"] is True
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("select current_database()").fetchone() == ("betting",)
        assert embedded.start() == dsn  # idempotent

        assert embedded.stop() is True
        assert embedded.status()["running"] is False
        assert embedded.stop() is False
        with pytest.raises(db.DatabaseUnreachable):
            db.connect(dsn)

        # restart on the same data directory keeps its data and its port
        monkeypatch.delenv("CONSOLIDATION_EMBEDDED_PORT")
        assert embedded.start() == dsn
    finally:
        embedded.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_explicit_port_in_use_is_a_one_line_error(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="cpg-"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("CONSOLIDATION_PGDATA", str(root / "pgdata"))
        monkeypatch.setenv("CONSOLIDATION_EMBEDDED_PORT", str(busy.getsockname()[1]))
        try:
            with pytest.raises(db.DatabaseUnreachable, match="already in use"):
                embedded.start()
        finally:
            embedded.stop()
            shutil.rmtree(root, ignore_errors=True)
