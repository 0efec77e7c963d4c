"""Airflow's REST API (the api-server's core app, the one Required Actions calls) served over HTTP
from this process, on a metadata database that `airflow dags test` / dag.test() share.

dag.test() never resolves a human-in-the-loop task itself: it waits until a response recorded by
an api-server on the same metadata database flips the task back to scheduled. `make demo` and
the DAG tests run that api-server here, with SimpleAuthManager logins (operator: role op,
approver: role admin, passwords in AIRFLOW_HOME), and answer through it as a person would:
`consolidation approve --user approver` over HTTP, authenticated, Airflow checking the assignees.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

USERS = {"operator": "op", "approver": "admin"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json"


def auth_env(home: Path, users: dict[str, str] | None = None) -> dict[str, str]:
    """SimpleAuthManager with the logins `users` ({name: role}, default USERS); passwords
    generated once per user into `home` (a user added later gets one then)."""
    users = users or USERS
    path = home / PASSWORDS_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    if set(users) - set(known):
        home.mkdir(parents=True, exist_ok=True)
        known |= {u: secrets.token_urlsafe(12) for u in users if u not in known}
        path.write_text(json.dumps(known))
        path.chmod(0o600)
    return {"AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(path)}


def passwords(home: Path) -> dict[str, str]:
    return json.loads((home / PASSWORDS_FILE).read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(home: Path, port: int | None = None, users: dict[str, str] | None = None) -> Iterator[str]:
    """The core API on http://127.0.0.1:<port> while the block runs (a uvicorn thread); yields the URL.
    Sets the auth environment in this process (the app reads its configuration on creation);
    `users`: the logins ({name: role}, default USERS)."""
    import uvicorn

    os.environ.update(auth_env(home, users))
    from airflow.api_fastapi.app import create_app, purge_cached_app

    port = port or _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(apps="core"), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # a thread may not; the main thread runs dag.test()
    thread = threading.Thread(target=server.run, name="airflow-core-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"Airflow's core API did not start on port {port}")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        purge_cached_app()
