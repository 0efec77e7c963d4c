"""Conversions of a connection string (a libpq DSN `key=value ...` or a `postgresql://` URL).

Every place that takes a DSN apart or writes it in another form uses these: the password
hidden for messages, a plain URL (Airflow connection URI, the metadata database's
SQLAlchemy URL), the SQLAlchemy URL Great Expectations connects with (libpq extras kept),
the PG* environment of the client programs (pg_dump, pg_restore, psql), and a DSN with
server settings pinned or naming another database.
"""
from __future__ import annotations

import os
import re
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# libpq connection keywords -> the environment variables libpq reads.
PG_ENV = {
    "host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER",
    "password": "PGPASSWORD", "passfile": "PGPASSFILE", "service": "PGSERVICE", "options": "PGOPTIONS",
    "application_name": "PGAPPNAME", "connect_timeout": "PGCONNECT_TIMEOUT", "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT", "sslkey": "PGSSLKEY", "sslrootcert": "PGSSLROOTCERT", "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR", "sslsni": "PGSSLSNI", "sslnegotiation": "PGSSLNEGOTIATION",
    "requiressl": "PGREQUIRESSL", "sslcompression": "PGSSLCOMPRESSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION", "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE", "krbsrvname": "PGKRBSRVNAME", "gsslib": "PGGSSLIB",
    "channel_binding": "PGCHANNELBINDING", "require_auth": "PGREQUIREAUTH",
    "target_session_attrs": "PGTARGETSESSIONATTRS", "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "client_encoding": "PGCLIENTENCODING",
}


def parse(dsn: str) -> dict:
    """The DSN's keywords ({"host": ..., "dbname": ..., ...})."""
    return conninfo_to_dict(dsn)


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ***."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn)


def with_dbname(dsn: str, dbname: str) -> str:
    """The same server and credentials, another database (a URL stays a URL)."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + dbname))
    return make_conninfo(dsn, dbname=dbname)


def with_settings(dsn: str, settings: dict[str, str]) -> str:
    """The DSN with server settings pinned for its sessions (`options=-c name=value ...`),
    after any options it already has."""
    info = parse(dsn)
    pinned = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in settings.items())
    info["options"] = f"{info['options']} {pinned}" if info.get("options") else pinned
    return make_conninfo(**info)


def url(dsn: str, scheme: str = "postgresql") -> str:
    """`scheme://user[:password]@host:port/dbname` (user, password and host quoted; other
    keywords dropped): an Airflow connection URI, or a SQLAlchemy URL with scheme
    `postgresql+<driver>`."""
    info = parse(dsn)
    user = quote(info.get("user", "postgres"), safe="")
    password = info.get("password")
    auth = f"{user}:{quote(password, safe='')}@" if password else f"{user}@"
    host = info.get("host", "127.0.0.1")
    port = info.get("port", "5432")
    return f"{scheme}://{auth}{quote(host, safe='')}:{port}/{info.get('dbname', 'postgres')}"


def libpq_url(sqlalchemy_url: str) -> str:
    """postgresql+<driver>://... -> postgresql://... (for psycopg and libpq)."""
    _, rest = sqlalchemy_url.split("://", 1)
    return "postgresql://" + rest


def sqlalchemy_url(dsn: str, driver: str = "postgresql+psycopg", defaults: dict[str, str] | None = None) -> str:
    """A SQLAlchemy URL for a libpq DSN or URL (password quoted, libpq extras kept as query
    parameters; `defaults` fill keywords the DSN does not set)."""
    from sqlalchemy.engine import URL

    info = {k: str(v) for k, v in parse(dsn).items() if v is not None}
    user, password = info.pop("user", None), info.pop("password", None)
    host, port = info.pop("host", None), info.pop("port", None)
    dbname = info.pop("dbname", None)
    if host and (host.startswith("/") or "," in host):  # socket folder / multi-host: libpq param
        info["host"] = host
        host = None
    if port and not host:
        info["port"] = port
        port = None
    for key, value in (defaults or {}).items():
        info.setdefault(key, value)
    return URL.create(driver, username=user, password=password, host=host, port=int(port) if port else None,
                      database=dbname, query=info).render_as_string(hide_password=False)


def pg_env(dsn: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the PostgreSQL client programs: `environ` (default os.environ)
    without its PG* variables, plus PG* from the DSN; so credentials never reach a command
    line. ValueError for a keyword libpq reads from no environment variable."""
    base = os.environ if environ is None else environ
    env = {k: v for k, v in base.items() if not k.startswith("PG")}
    for key, value in parse(dsn).items():
        if value in (None, ""):
            continue
        var = PG_ENV.get(key)
        if var is None:
            raise ValueError(f"connection option {key!r} of the database DSN has no libpq environment "
                             "variable; remove it from the DSN or set it in the environment yourself")
        env[var] = str(value)
    return env
