"""Connections to the database being consolidated.

One place decides which server a command talks to: CONSOLIDATION_DB_URL when set,
else the Airflow connection when running inside a task, else the embedded server.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg

from consolidation.core import config, embedded
from consolidation.core.errors import DatabaseUnreachable


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ***."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: explicit, CONSOLIDATION_DB_URL, or the embedded server's."""
    if dsn:
        return dsn
    env = config.configured_db_url()
    if env:
        return env
    return embedded.url()


def connect(dsn: str | None = None, *, autocommit: bool = False, **kwargs) -> psycopg.Connection:
    target = resolve_dsn(dsn)
    try:
        return psycopg.connect(target, autocommit=autocommit, connect_timeout=5, **kwargs)
    except psycopg.OperationalError as exc:
        hint = (
            "start the embedded server with `python -m consolidation db start` (or `make demo`)"
            if not config.configured_db_url() and not dsn
            else "check the server is running, or unset CONSOLIDATION_DB_URL to use the embedded default"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnreachable(f"cannot reach {redact(target)}: {first}; {hint}") from None


@contextmanager
def transaction(dsn: str | None = None) -> Iterator[psycopg.Connection]:
    """One connection, one transaction: committed on success, rolled back on error."""
    with connect(dsn) as conn:
        with conn.transaction():
            yield conn


def airflow_connection_dsn(conn_id: str = config.CONNECTION_ID) -> str:
    """DSN of the Airflow connection; only called inside tasks (imports Airflow lazily)."""
    from airflow.sdk import BaseHook

    c = BaseHook.get_connection(conn_id)
    parts = {
        "host": c.host or "",
        "port": str(c.port or 5432),
        "dbname": c.schema or "postgres",
        "user": c.login or "",
        "password": c.password or "",
    }
    return " ".join(f"{k}={_quote(v)}" for k, v in parts.items() if v)


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def dsn_to_airflow_uri(dsn: str) -> str:
    """Airflow connection URI (AIRFLOW_CONN_CONSOLIDATION_DB) for a libpq DSN or URL."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    from urllib.parse import quote

    user = quote(info.get("user", "postgres"), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"postgresql://{auth}{quote(host, safe='')}:{port}/{info.get('dbname', 'postgres')}"
