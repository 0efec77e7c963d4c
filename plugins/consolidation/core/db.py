"""Connections to the database being consolidated.

One place decides which server a command talks to: CONSOLIDATION_DB_URL when set,
else the Airflow connection when running inside a task, else the embedded server.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg

from consolidation.core import config, dsn as dsns, embedded
from consolidation.core.dsn import redact
from consolidation.core.errors import DatabaseUnreachable


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


def dsn_to_airflow_uri(dsn: str) -> str:
    """Airflow connection URI (AIRFLOW_CONN_CONSOLIDATION_DB) for a libpq DSN or URL."""
    return dsns.url(dsn)
