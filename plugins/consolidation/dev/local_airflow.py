"""`python -m consolidation airflow-local start|stop|status`: a real Airflow on this machine.

`make airflow` / `make airflow-stop` / `make airflow-status` call it. It runs Airflow's four
long-lived components as background processes - api-server (REST API and the UI), scheduler,
dag-processor, triggerer - with the LocalExecutor, against the embedded PostgreSQL:

  * Airflow's metadata: database `airflow_meta` on the embedded server (created when missing;
    the LocalExecutor needs a real database, SQLite only allows the SequentialExecutor-like
    single-connection mode);
  * the database being consolidated: the connection `consolidation_db`
    (AIRFLOW_CONN_CONSOLIDATION_DB), i.e. CONSOLIDATION_DB_URL when set, else the embedded
    `betting` database; the legacy fixture is built into it when it is empty;
  * logins (Airflow 3's SimpleAuthManager): `operator` (role op: triggers the phases) and
    `approver` (role admin: decides the cleanup approval). Their passwords are generated once,
    kept in AIRFLOW_HOME/simple_auth_manager_passwords.json and printed by `start` and `status`.

AIRFLOW_HOME is $AIRFLOW_HOME, else <state>/airflow (.state/airflow). Each component's pid and
log are AIRFLOW_HOME/local/<component>.pid|.log; the settings every component must share
(port, metadata URL, JWT and session secrets) are in AIRFLOW_HOME/local/settings.json.
Components are started in their own session (process group) and stopped by that group id.

The same class drives other executors: tests/test_celery.py starts api-server, scheduler,
dag-processor and a Celery worker with executor="CeleryExecutor" and a Redis broker.

Environment (read at call time):
  CONSOLIDATION_AIRFLOW_PORT       UI/API port (default 8080)
  CONSOLIDATION_AIRFLOW_META_URL   SQLAlchemy URL of the metadata database (default: airflow_meta
                                   on the embedded server)
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from consolidation.core import config, dsn as dsns
from consolidation.core.dsn import libpq_url, redact

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DEFAULT_PORT = 8080
META_DATABASE = "airflow_meta"
# user -> SimpleAuthManager role (viewer < user < op < admin)
USERS = {"operator": "op", "approver": "admin"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json"


class LocalAirflowError(RuntimeError):
    """Something prevented start/stop; the message says what and where to look."""


class AirflowApiError(RuntimeError):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def airflow_home() -> Path:
    env = os.environ.get("AIRFLOW_HOME")
    return Path(env).resolve() if env else config.state_dir() / "airflow"


def dag_ids() -> list[str]:
    """DAG ids of dags/ (one DAG per file, named like the file)."""
    return sorted(p.stem for p in (config.REPO_ROOT / "dags").glob("*.py") if not p.name.startswith("_"))


def embedded_meta_url(database: str = META_DATABASE) -> str:
    """SQLAlchemy URL of `database` on the embedded server (created when missing)."""
    from consolidation.core import embedded

    embedded.start()
    create_database(embedded.url("postgres"), database)
    return sqlalchemy_url(embedded.url(database))


def create_database(maintenance_dsn: str, name: str) -> bool:
    """CREATE DATABASE name unless it exists; True when created."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(maintenance_dsn, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def sqlalchemy_url(dsn: str) -> str:
    """SQLAlchemy URL (psycopg2 driver, Airflow's default) of a libpq DSN or URL."""
    return dsns.url(dsn, "postgresql+psycopg2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalAirflow:
    """One Airflow installation: its home, settings, processes."""

    home: Path
    port: int = DEFAULT_PORT
    executor: str = "LocalExecutor"
    meta_url: str | None = None          # SQLAlchemy URL; None: airflow_meta on the embedded server
    target_dsn: str | None = None        # consolidation_db; None: CONSOLIDATION_DB_URL or embedded betting
    components: tuple[str, ...] = COMPONENTS
    extra_env: dict[str, str] = field(default_factory=dict)
    log_server_ports: tuple[int, int] = (8793, 8794)  # serve-logs of the scheduler/worker, of the triggerer
    echo: Callable[[str], None] = print
    _settings: dict | None = field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ files
    @property
    def run_dir(self) -> Path:
        return self.home / "local"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.log"

    @property
    def settings_file(self) -> Path:
        return self.run_dir / "settings.json"

    @property
    def passwords_file(self) -> Path:
        return self.home / PASSWORDS_FILE

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict:
        """Settings shared by every component; secrets created once, then reused (restarts keep sessions)."""
        if self._settings is not None:
            return self._settings
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            saved = json.loads(self.settings_file.read_text())
        except (OSError, ValueError):
            saved = {}
        from consolidation.core.db import resolve_dsn

        settings = {
            "jwt_secret": saved.get("jwt_secret") or secrets.token_urlsafe(32),
            "secret_key": saved.get("secret_key") or secrets.token_urlsafe(32),
            "fernet_key": saved.get("fernet_key") or _fernet_key(),
            "port": self.port,
            "executor": self.executor,
            "meta_url": self.meta_url or os.environ.get("CONSOLIDATION_AIRFLOW_META_URL") or embedded_meta_url(),
            "target_dsn": self.target_dsn or resolve_dsn(),
        }
        self.settings_file.write_text(json.dumps(settings, indent=2) + "\n")
        os.chmod(self.settings_file, 0o600)
        self._settings = settings
        return settings

    def passwords(self) -> dict[str, str]:
        """The users' passwords: generated once, then kept (the file SimpleAuthManager reads)."""
        try:
            known = json.loads(self.passwords_file.read_text())
        except (OSError, ValueError):
            known = {}
        passwords = {user: known.get(user) or secrets.token_urlsafe(9) for user in USERS}
        if passwords != known:
            self.home.mkdir(parents=True, exist_ok=True)
            self.passwords_file.write_text(json.dumps(passwords, indent=2) + "\n")
            os.chmod(self.passwords_file, 0o600)
        return passwords

    def env(self, settings: dict | None = None) -> dict[str, str]:
        """The environment every Airflow process of this installation runs with."""
        from consolidation.core.db import dsn_to_airflow_uri

        s = settings or self.settings()
        env = dict(os.environ)
        env.pop("CONSOLIDATION_DB_URL", None)  # tasks use the Airflow connection, as in production
        plugins = str(config.REPO_ROOT / "plugins")
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join(p for p in (plugins, os.environ.get("PYTHONPATH", "")) if p),
            "AIRFLOW__CORE__DAGS_FOLDER": str(config.REPO_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": plugins,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTOR": s["executor"],
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__CORE__AUTH_MANAGER":
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{s['port']}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": s["meta_url"],
            "AIRFLOW__API__BASE_URL": f"http://localhost:{s['port']}/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(s["port"]),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": s["secret_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_server_ports[0]),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.log_server_ports[1]),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW_CONN_CONSOLIDATION_DB": dsn_to_airflow_uri(s["target_dsn"]),
        })
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ processes
    def pid(self, component: str) -> int | None:
        """The component's pid when it is running (a stale pid file is removed)."""
        try:
            pid, _, started = self.pid_file(component).read_text().strip().partition(" ")
            pid = int(pid)
        except (OSError, ValueError):
            return None
        if _alive(pid, started or None):
            return pid
        self.pid_file(component).unlink(missing_ok=True)
        return None

    def running(self) -> dict[str, int]:
        return {c: p for c in self.components if (p := self.pid(c))}

    def start(self, *, wait: bool = True, timeout: float = 300) -> dict:
        """Migrate the metadata, start the components that are not running, wait until healthy."""
        settings = self.settings()
        passwords = self.passwords()
        env = self.env(settings)
        already = self.running()
        if set(already) == set(self.components):
            self.echo(f"Airflow is already running ({', '.join(f'{c} {p}' for c, p in already.items())})")
        else:
            if "api-server" in self.components and "api-server" not in already and not _port_free(self.port):
                raise LocalAirflowError(
                    f"port {self.port} is taken by another program; set CONSOLIDATION_AIRFLOW_PORT to a free port")
            self._prepare_target(settings["target_dsn"])
            self.echo(f"airflow db migrate (metadata: {redact(settings['meta_url'])}) ...")
            done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                                  capture_output=True, text=True, cwd=config.REPO_ROOT)
            (self.run_dir / "db-migrate.log").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                raise LocalAirflowError(f"`airflow db migrate` failed; see {self.run_dir / 'db-migrate.log'}")
            for component in self.components:
                if component in already:
                    continue
                self._spawn(component, env)
        if wait:
            self.wait_ready(timeout=timeout)
        return {"url": self.url, "passwords": passwords, "pids": self.running()}

    def _prepare_target(self, dsn: str) -> None:
        from consolidation.core import db
        from consolidation.dev import fixture

        with db.connect(dsn) as conn:
            if fixture.is_empty(conn):
                counts = fixture.build(conn)
                conn.commit()
                self.echo(f"built the legacy fixture into {redact(dsn)}: {sum(counts.values()):,} rows")

    def _spawn(self, component: str, env: dict[str, str]) -> int:
        argv = [sys.executable, "-m", "airflow", *_argv(component)]
        log = open(self.log_file(component), "ab")
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, cwd=config.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.pid_file(component).write_text(f"{proc.pid} {_start_time(proc.pid) or ''}".strip() + "\n")
        self.echo(f"started {component} (pid {proc.pid}, log {self.log_file(component)})")
        return proc.pid

    def stop(self, timeout: float = 30) -> list[str]:
        """SIGTERM each component's process group, SIGKILL what is left after `timeout`."""
        stopped = []
        for component in reversed(self.components):
            pid = self.pid(component)
            if pid is None:
                self.pid_file(component).unlink(missing_ok=True)
                continue
            _signal_group(pid, signal.SIGTERM)
            stopped.append(component)
        deadline = time.monotonic() + timeout
        for component in stopped:
            pid = int(self.pid_file(component).read_text().split()[0])
            while _group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.3)
            if _group_alive(pid):
                _signal_group(pid, signal.SIGKILL)
                self.echo(f"{component} (pid {pid}) did not stop in {timeout:.0f} s: killed")
            self.pid_file(component).unlink(missing_ok=True)
            self.echo(f"stopped {component} (pid {pid})")
        return stopped

    # ------------------------------------------------------------------ readiness
    def health(self) -> dict | None:
        """/api/v2/monitor/health of the api-server, or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=5) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def parsed_dags(self, settings: dict | None = None) -> tuple[set[str], list[tuple[str, str]]]:
        """DAG ids the dag-processor has stored (not stale), and the import errors (file, first line)."""
        import psycopg

        s = settings or self.settings()
        try:
            with psycopg.connect(libpq_url(s["meta_url"]), connect_timeout=5) as conn:
                dags = {r[0] for r in conn.execute("SELECT dag_id FROM dag WHERE NOT is_stale")}
                errors = [(r[0], (r[1] or "").strip().splitlines()[-1:][0] if r[1] else "")
                          for r in conn.execute("SELECT filename, stacktrace FROM import_error")]
        except psycopg.Error:
            return set(), []
        return dags, errors

    def wait_ready(self, timeout: float = 300) -> None:
        """Until every component is alive, the API is healthy and every DAG file is parsed."""
        settings = self.settings()
        expected = set(dag_ids())
        deadline = time.monotonic() + timeout
        wanted = {"metadatabase", "scheduler", "dag_processor", "triggerer"}
        wanted &= {c.replace("-", "_") for c in self.components} | {"metadatabase"}
        while True:
            dead = [c for c in self.components if self.pid(c) is None]
            if dead:
                raise LocalAirflowError(f"{', '.join(dead)} exited; see {', '.join(str(self.log_file(c)) for c in dead)}")
            health = self.health() if "api-server" in self.components else None
            healthy = "api-server" not in self.components or health is not None and all(
                (health.get(k) or {}).get("status") == "healthy" for k in wanted)
            dags, errors = self.parsed_dags(settings)
            if errors:
                raise LocalAirflowError("DAG import errors: " + "; ".join(f"{f}: {e}" for f, e in errors))
            if healthy and expected <= dags:
                return
            if time.monotonic() > deadline:
                missing = sorted(expected - dags)
                raise LocalAirflowError(
                    f"not ready after {timeout:.0f} s: health {health}, DAGs not parsed yet {missing}; "
                    f"logs in {self.run_dir}")
            time.sleep(2)

    # ------------------------------------------------------------------ REST API (what the UI calls)
    def token(self, user: str, password: str | None = None) -> str:
        """A JWT for `user` (SimpleAuthManager's /auth/token); AirflowApiError 401 on a wrong password."""
        body = {"username": user, "password": password if password is not None else self.passwords()[user]}
        return self.api("POST", "/auth/token", body)["access_token"]

    def api(self, method: str, path: str, body: dict | None = None, *, token: str | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AirflowApiError(exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else {}

    def trigger(self, dag_id: str, token: str, conf: dict | None = None) -> str:
        """POST a manual DAG run (as the token's user); its run id."""
        run = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}},
                       token=token)
        return run["dag_run_id"]

    def wait_run(self, dag_id: str, run_id: str, token: str, *, timeout: float = 600,
                 until: tuple[str, ...] = ("success", "failed")) -> dict:
        """Poll the run until its state is in `until`; the run as the API returns it."""
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        while True:
            run = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}", token=token)
            if run["state"] in until:
                return run
            if time.monotonic() > deadline:
                raise LocalAirflowError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(1)  # one GET a second: cheap, and a run is seen ended within a second

    def status(self) -> dict:
        running = self.running()
        return {
            "home": str(self.home),
            "url": self.url,
            "components": {c: running.get(c) for c in self.components},
            "health": self.health() if running.get("api-server") else None,
        }


def _argv(component: str) -> list[str]:
    if component == "celery-worker":  # serves [operators] default_queue
        return ["celery", "worker", "--concurrency", "2"]
    return [component]


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """pid runs and is the process we started (same start time: proctitles change, pids get reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    if started and now and now != started:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)  # our own child: reap it
        except ChildProcessError:
            pass
        return False
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the component was started as its session's leader: pgid == pid
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    """Does any live (non-zombie) process remain in process group `pgid`?"""
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when we started it (a zombie still "exists")
    except ChildProcessError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False


_group_alive = group_alive
