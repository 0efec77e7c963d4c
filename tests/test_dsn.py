"""core.dsn: the one set of DSN conversions (the values the former per-module copies gave)."""
from __future__ import annotations

import pytest

from consolidation.core import dsn

pytestmark = pytest.mark.unit

DSN = "host=127.0.0.1 port=55432 dbname=betting user=postgres password=p@ss:w/rd"


def test_redact_hides_the_password_of_either_form():
    assert dsn.redact("postgresql://u:sec@h/db") == "postgresql://u:***@h/db"
    assert dsn.redact("password=abc host=x") == "password=*** host=x"
    assert dsn.redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_plain_urls_for_airflow_and_the_metadata_database():
    from consolidation.core.db import dsn_to_airflow_uri
    from consolidation.dev.local_airflow import libpq_url, sqlalchemy_url

    assert dsn_to_airflow_uri(DSN) == "postgresql://postgres:p%40ss%3Aw%2Frd@127.0.0.1:55432/betting"
    assert sqlalchemy_url(DSN) == "postgresql+psycopg2://postgres:p%40ss%3Aw%2Frd@127.0.0.1:55432/betting"
    assert libpq_url(sqlalchemy_url(DSN)) == dsn_to_airflow_uri(DSN)
    assert dsn.url("dbname=z") == "postgresql://postgres@127.0.0.1:5432/z"


def test_gx_url_keeps_libpq_extras_and_fills_its_defaults():
    from consolidation.checks.gx import sqlalchemy_url

    assert sqlalchemy_url(DSN + " sslmode=require") == (
        "postgresql+psycopg://postgres:p%40ss%3Aw%2Frd@127.0.0.1:55432/betting"
        "?application_name=consolidation-gate&connect_timeout=10&sslmode=require")


def test_pinned_settings_follow_existing_options():
    from consolidation.phases.cleanup import pinned_dsn

    pinned = dsn.parse(pinned_dsn("host=x dbname=y options=-cfoo=1"))
    assert pinned["options"] == ("-cfoo=1 -c TimeZone=UTC -c DateStyle=ISO,MDY -c IntervalStyle=postgres "
                                 "-c extra_float_digits=3 -c bytea_output=hex")
    assert dsn.parse(dsn.with_dbname(DSN, "other")) == dsn.parse(DSN) | {"dbname": "other"}
    assert dsn.with_dbname("postgresql://u@h:5/db?sslmode=require", "x") == "postgresql://u@h:5/x?sslmode=require"


def test_client_environment_carries_the_credentials_and_refuses_what_libpq_cannot_read():
    from consolidation.phases import backup

    env = dsn.pg_env(DSN, {"PGHOST": "elsewhere", "HOME": "/h"})
    assert env == {"HOME": "/h", "PGHOST": "127.0.0.1", "PGPORT": "55432", "PGDATABASE": "betting",
                   "PGUSER": "postgres", "PGPASSWORD": "p@ss:w/rd"}
    with pytest.raises(ValueError, match="no libpq environment variable"):
        dsn.pg_env(DSN + " keepalives=1", {})
    with pytest.raises(backup.BackupFailed, match="no libpq environment variable"):
        backup.pg_env(DSN + " keepalives=1")
