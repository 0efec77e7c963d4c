"""`db start | stop | status | url | ping`: the embedded PostgreSQL server (cheap: no engine,
no Airflow, no Great Expectations)."""
from __future__ import annotations

import json
import sys

from consolidation.core import config, db, embedded


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def start(args) -> int:
    if config.configured_db_url():
        _err("note: CONSOLIDATION_DB_URL is set, so commands use that server, not the embedded one")
    print(embedded.start(echo=_err))
    return 0


def stop(args) -> int:
    if not embedded.stop(echo=_err):
        _err(f"the embedded server is not running ({embedded.data_dir()})")
    return 0


def status(args) -> int:
    info = embedded.status()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value if value is not None else '-'}")
    return 3 if args.check and not info["running"] else 0


def url(args) -> int:
    print(embedded.url(args.database) if args.database else embedded.url())
    return 0


def ping(args) -> int:
    with db.connect() as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        dsn = db.redact(db.resolve_dsn())
    print(f"ok: {dsn} (PostgreSQL {version})")
    return 0
