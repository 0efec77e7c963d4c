"""Restore one 4D backup folder into a scratch database and prove it (`consolidation restore`).

The folder's manifest.json (written by phases.backup.take_backup) names each archive with its
sha256 (and, for a directory archive, each file's) and the count and checksum of every table
it holds. restore_backup:

1. refuses a folder without a readable manifest, a schema the backup does not hold, and an
   archive whose sha256 differs from the manifest (naming the file) - before touching the target;
2. refuses a target database in which one of the schemas already holds something (a fresh
   database's empty `public` is fine): restore into a scratch database, e.g. `createdb scratch`;
3. restores the chosen archives in one transaction (phases.backup.restore_archives) with the
   pg_restore of the target server's major version when it reads the archives, else the one
   that wrote them (archives.clients.reader);
4. recomputes every restored table's checksum (core.catalog's one checksum SQL, output
   settings pinned) and compares it with the manifest's: per table rows and OK / MISMATCH.

Archives are looked up beside the manifest by their file names, so a copied or moved backup
folder restores as well as the original.
"""
from __future__ import annotations

import json
from pathlib import Path

import psycopg

from consolidation.core import db
from consolidation.core.dsn import redact
from consolidation.phases import backup as backups
from consolidation.phases.backup import BackupFailed


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackupFailed(f"{path} does not exist: --backup must name a 4D backup folder (the one holding "
                           "manifest.json and the archives, e.g. .state/backups/<run id>)") from None
    except (OSError, ValueError) as exc:
        raise BackupFailed(f"{path} cannot be read as a backup manifest ({exc}); nothing was restored") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("archives"), list):
        raise BackupFailed(f"{path} is not a backup manifest (no list of archives); nothing was restored")
    return manifest


def chosen_archives(manifest: dict, folder: Path, schemas: list[str] | None) -> list[dict]:
    """The manifest's archives (of `schemas`, in backup order), each with `file` beside the manifest."""
    held = {a["schema"]: a for a in manifest["archives"]}
    unknown = [s for s in schemas or [] if s not in held]
    if unknown:
        raise BackupFailed(f"the backup in {folder} holds no schema {', '.join(unknown)} (it holds: "
                           f"{', '.join(held) or 'nothing'}); nothing was restored")
    return [a | {"file": folder / Path(a["path"]).name} for s, a in held.items() if not schemas or s in schemas]


def occupied(conn, schemas: list[str]) -> dict[str, int]:
    """{schema: objects} of the schemas that exist in the target and hold relations, functions or types."""
    rows = conn.execute(
        "SELECT n.nspname, (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid) "
        "  + (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid) "
        "  + (SELECT count(*) FROM pg_type t WHERE t.typnamespace = n.oid AND t.typrelid = 0 AND t.typelem = 0) "
        "FROM pg_namespace n WHERE n.nspname = ANY(%s)", (schemas,)).fetchall()
    return {name: n for name, n in rows if n}


def restore_backup(folder: str | Path, into_dsn: str, schemas: list[str] | None = None) -> dict:
    """Restore the backup in `folder` (all its schemas, or `schemas`) into the database `into_dsn`
    and compare every table with the manifest. Returns {"manifest", "client", "into", "tables":
    [{"table", "rows", "backup_rows", "checksum", "backup_checksum", "ok"}]}; BackupFailed when refused."""
    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    archives = chosen_archives(manifest, folder, schemas)
    if not archives:
        raise BackupFailed(f"the backup in {folder} holds no archives; nothing was restored")
    env = backups.pg_env(into_dsn)
    with db.connect(into_dsn) as conn:
        server = conn.info.server_version
        taken = occupied(conn, [a["schema"] for a in archives])
    client = backups.reader_for(server, manifest)
    for a in archives:  # unchanged and readable, before the target is touched
        backups.verify_archive(a["file"], sha256=a["sha256"], tables=a["tables"], env=env, files=a.get("files"),
                               pg_restore=client.bin("pg_restore"))
    if taken:
        raise BackupFailed(f"database {redact(into_dsn)} already holds schema(s) "
                           + ", ".join(f"{s} ({n} objects)" for s, n in sorted(taken.items()))
                           + "; restore into an empty scratch database (e.g. `createdb scratch`); nothing was restored")
    backups.restore_archives(into_dsn, {a["schema"]: a["file"] for a in archives}, client)
    tables = []
    with psycopg.connect(into_dsn, connect_timeout=10) as conn:
        with conn.transaction():
            for a in archives:
                now = backups.schema_checksums(conn, a["schema"])
                for name, want in a["tables"].items():
                    got = now.get(name) or {}
                    tables.append({"table": name, "rows": got.get("rows"), "backup_rows": want["rows"],
                                   "checksum": got.get("checksum"), "backup_checksum": want["checksum"],
                                   "ok": got == want})
    return {"manifest": manifest, "client": client, "into": redact(into_dsn), "archives": archives, "tables": tables}
