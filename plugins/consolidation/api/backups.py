"""Operations on 4D backups outside a run: restore a backup folder into a scratch database."""
from __future__ import annotations

from pathlib import Path

from consolidation.api.outcome import Outcome
from consolidation.phases.archives import restore
from consolidation.phases.backup import BackupFailed


def restore_backup(folder: str | Path, into_dsn: str, schemas: list[str] | None = None) -> Outcome:
    """Restore the backup in `folder` into the (scratch) database `into_dsn` and compare every
    table with the manifest's checksum; value = {"tables", "mismatched"}. Refusals (a changed
    archive, a target that holds the schemas, ...) raise BackupFailed in one line."""
    out = restore.restore_backup(folder, into_dsn, schemas)
    m, client = out["manifest"], out["client"]
    lines = [f"backup {folder} (run {m.get('run_id', '-')}, taken {m.get('taken_at', '-')}, "
             f"{m.get('format', 'custom')} archives made with pg_dump {m.get('pg_dump_version', '?')} of PostgreSQL "
             f"{m.get('server_version', '?')}; readable by {m.get('readable_by', '?')})",
             f"restored {', '.join(a['schema'] for a in out['archives'])} into {out['into']} in one transaction with "
             f"pg_restore {client.version} ({client.source}: {client.bindir})"]
    width = max(len(t["table"]) for t in out["tables"]) if out["tables"] else 10
    bad = []
    for t in out["tables"]:
        if t["ok"]:
            lines.append(f"  {t['table']:<{width}} {t['rows']:>12,} rows  OK")
        else:
            bad.append(t["table"])
            got = "no table" if t["rows"] is None else f"{t['rows']:,} rows, checksum {t['checksum'][:12]}"
            lines.append(f"  {t['table']:<{width}} {t['rows'] or 0:>12,} rows  MISMATCH (backup: {t['backup_rows']:,} "
                         f"rows, checksum {t['backup_checksum'][:12]}; restored: {got})")
    failure = None
    if bad:
        failure = BackupFailed(f"{len(bad)} restored table(s) differ from the backup's checksums: {', '.join(bad)}")
    else:
        lines.append(f"{len(out['tables'])} table(s) restored, every one equal to its checksum in the manifest")
    return Outcome(value={"tables": len(out["tables"]), "mismatched": bad}, lines=lines, failure=failure, data=out)
