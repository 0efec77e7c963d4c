"""The database a task uses: the Airflow connection `consolidation_db` as the postgres
provider's PostgresHook connects to it, extras included; CONSOLIDATION_DB_URL wins when set
(tests and `make demo` rely on it)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg.conninfo import make_conninfo

from consolidation.core import config, db


def hook_dsn(hook) -> str:
    """libpq DSN of a PostgresHook's connection, with what PostgresHook.get_conn() (provider
    7.1.1, psycopg 3) passes to psycopg: host, port, login, password, the database (`schema`),
    an IAM token when the extra `iam` is set, and every other extra as a libpq keyword (sslmode,
    options, application_name, target_session_attrs, ...) except those the hook keeps for itself
    (hook.ignored_extra_options: iam, cursor, sqlalchemy_*, ...). A DSN, not the hook's own
    connection, because the gates, pg_dump and pg_restore need it too, and db.connect gives an
    unreachable server its one-line message."""
    c = hook.connection
    extra = c.extra_dejson
    login, password, port = c.login, c.password, c.port
    if extra.get("iam", False):
        login, password, port = hook.get_iam_token(c)
    keywords = {"host": c.host, "port": port, "user": login, "password": password,
                "dbname": hook.database or c.schema}
    keywords |= {k: v for k, v in extra.items() if k not in hook.ignored_extra_options}
    return make_conninfo(**{k: v for k, v in keywords.items() if v not in (None, "")})


def task_dsn() -> str:
    """DSN of the consolidation_db connection; CONSOLIDATION_DB_URL wins when set."""
    configured = config.configured_db_url()
    if configured:
        return configured
    # at run time only: the provider imports SQLAlchemy's psycopg dialect, too slow for a DAG file's parse
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return hook_dsn(PostgresHook(postgres_conn_id=config.CONNECTION_ID))


@contextmanager
def task_connection() -> Iterator[tuple[str, psycopg.Connection]]:
    """(dsn, connection) for code outside a task body (the approval sensor)."""
    dsn = task_dsn()
    with db.connect(dsn) as conn:
        yield dsn, conn
