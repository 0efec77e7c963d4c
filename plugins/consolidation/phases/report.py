"""The completion report: what Phase 4 did, from the ledger and the database, as
Markdown and as one self-contained HTML page (inline <style>, no external CSS, fonts
or scripts), recorded in the ledger (kind 'report').

Sections: schemas before (the 4D inventory) and after (the catalog now); each table's
rows from source to target (the latest 4B step of each, and the target's rows now);
merges, conflicts and quarantine; every gate with its time and result; the approval
(who, when, via what, why); backup files with size and sha256; what 4D dropped; the
duration of each phase's latest run. Usable after any run: `python -m consolidation
report [--run RUN_ID] [--out DIR]`.
"""
from __future__ import annotations

import hashlib
import html
from datetime import datetime
from pathlib import Path

from psycopg import sql

from consolidation.checks.quarantine import summary as quarantine_summary
from consolidation.core import config, ledger
from consolidation.core.catalog import relation_exists
from consolidation.core.files import atomic_write, safe_name
from consolidation.core.plan import Plan

PHASES = ("4A", "4B", "4C", "4D", "rollback")


def _fmt_time(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if isinstance(value, datetime) else ("-" if value is None else str(value))


def _n(value) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def latest_run(conn, plan: Plan, phase: str = "4D") -> str | None:
    row = conn.execute(sql.SQL("SELECT run_id FROM {} WHERE phase = %s ORDER BY id DESC LIMIT 1").format(
        ledger.tool_ident(plan, "ledger")), (phase,)).fetchone()
    return row[0] if row else None


def _made_with(details: dict) -> str | None:
    """Which pg_dump wrote a backup archive and which pg_restore reads it (phases.backup)."""
    if not details.get("pg_dump_version"):
        return None
    warn = "" if (details.get("pg_dump") or {}).get("matches_server", True) else " - NOT the server's own pg_restore"
    return (f"{details.get('format', 'custom')}, pg_dump {details['pg_dump_version']} of PostgreSQL "
            f"{details.get('server_version', '?')}: readable by {details.get('readable_by', '?')}{warn}")


def collect(conn, plan: Plan, run_id: str | None = None) -> dict:
    """Everything the report shows, as plain data (also what `--json` would print)."""
    from consolidation.phases.cleanup import schema_summary

    if not ledger.tool_tables_exist(conn, plan):
        raise RuntimeError("no ledger in this database: Phase 4 never ran here (run phase4a_schema_extension first)")
    run_id = run_id or latest_run(conn, plan) or latest_run(conn, plan, "4B")
    rows = ledger.rows(conn, plan)
    of_run = [r for r in rows if r["run_id"] == run_id]
    inv = next((r for r in reversed(of_run) if r["kind"] == "run" and r["name"] == "inventory_4D"), None)
    schemas = list(plan.legacy_schemas) + list(plan.consolidated_schemas)
    after = schema_summary(conn, schemas)
    conn.rollback()

    steps: dict[str, dict] = {}
    moved: dict[str, dict] = {}  # over all runs: a re-run's "inserted 0" does not hide what moved before
    for r in rows:
        if r["kind"] == "rollback" and r["status"] == ledger.SUCCESS:
            moved.clear()  # a rollback removed what earlier runs moved
        if r["kind"] == "step" and r["status"] == ledger.SUCCESS and r["phase"] in ("4B", "4D"):
            m = moved.setdefault(r["name"], {"inserted": 0, "merged": 0, "runs": 0})
            m["inserted"] += r["rows_inserted"] or 0
            m["merged"] += r["rows_merged"] or 0
            m["runs"] += 1
        if r["phase"] == "4B" and r["kind"] == "step" and r["status"] != ledger.RUNNING:
            steps[r["name"]] = r  # the latest run of each step wins
    in_backup = {t: v.get("rows") for r in of_run if r["kind"] == "backup" and r["name"].startswith("backup:")
                 for t, v in (r["details"] or {}).get("tables", {}).items()}
    dropped = {r["source"] for r in of_run if r["phase"] == "4D" and r["kind"] == "ddl"}
    migrated = []
    for s in plan.steps:
        r = steps.get(s.name)
        now = None
        if s.target:
            if relation_exists(conn, s.target_schema, s.target_table):
                now = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(s.target_schema, s.target_table))).fetchone()[0]
        migrated.append({
            "source": s.source, "action": s.action, "target": s.target or "(backed up, dropped in 4D)",
            "read": r and r["rows_read"], "inserted": r and r["rows_inserted"], "merged": r and r["rows_merged"],
            "quarantined": r and r["rows_quarantined"],
            "inserted_all_runs": moved.get(s.name, {}).get("inserted"), "merged_all_runs": moved.get(s.name, {}).get("merged"),
            "runs": moved.get(s.name, {}).get("runs"),
            "ignored": dict(s.ignore),
            "foreign_keys_dropped": dict(s.drop_foreign_keys),  # the plan's drop_foreign_keys, with reasons
            "filled": {c.target: ("constant " + repr(c.value)) if c.kind == "value" else f"default {c.default!r} for NULL"
                       for c in (s.columns or {}).values() if c.kind == "value" or c.default is not None},
            "already_present": r and (r["details"] or {}).get("already_present"),
            "status": r["status"] if r else ("not run" if s.target else
                                             "in the backup, dropped" if s.source in dropped and s.source in in_backup
                                             else "in the backup" if s.source in in_backup else "not migrated"),
            "backup_rows": in_backup.get(s.source),
            "checksums_equal": (r["source_checksum"] == r["target_checksum"]) if r and r["source_checksum"] else None,
            "target_rows_now": now, "run_id": r and r["run_id"]})

    conflicts = [dict(zip(("step", "target", "key", "column", "target_value", "source_value", "resolution"), c))
                 for c in conn.execute(sql.SQL(
                     "SELECT step, target, key::text, column_name, target_value, source_value, resolution FROM {} "
                     "ORDER BY step, key::text, column_name").format(ledger.tool_ident(plan, "conflicts"))).fetchall()]
    quarantine = quarantine_summary(conn, plan)
    for q in quarantine:  # the legacy table's backup holds them too
        q["in_backup"] = in_backup.get(q["source"])

    gates = [{"phase": r["phase"], "name": r["name"], "status": r["status"], "run_id": r["run_id"],
              "started_at": r["started_at"], "finished_at": r["finished_at"],
              "checks": (r["details"] or {}).get("checks"), "failed": (r["details"] or {}).get("failed"),
              "message": r["message"], "by": r["triggered_by"]} for r in rows if r["kind"] == "gate"]

    approvals = []
    from consolidation.phases import approvals as appr
    if appr.table_exists(conn, plan):
        cur = conn.execute(sql.SQL(
            "SELECT id, run_id, status, requested_at, requested_by, decided_by, decided_via, os_user, db_role, "
            "reason, decided_at, fingerprint, refusal FROM {} WHERE run_id = %s ORDER BY id").format(
            ledger.tool_ident(plan, "approvals")), (run_id,))
        cols = [d.name for d in cur.description]
        approvals = [dict(zip(cols, a)) for a in cur.fetchall()]
    approval_events = [{"name": r["name"], "status": r["status"], "at": r["finished_at"], "by": r["triggered_by"],
                        "message": r["message"]} for r in of_run if r["kind"] == "approval"]

    backups = [{"schema": r["source"], "file": r["target"], "bytes": (r["details"] or {}).get("bytes"),
                "sha256": (r["details"] or {}).get("sha256"), "tables": len((r["details"] or {}).get("tables", {})),
                "rows": sum(t.get("rows", 0) for t in (r["details"] or {}).get("tables", {}).values()),
                "made_with": _made_with(r["details"] or {}), "at": r["finished_at"]}
               for r in of_run if r["kind"] == "backup" and r["name"].startswith("backup:")]
    drops = [{"what": r["message"], "at": r["finished_at"]} for r in of_run if r["phase"] == "4D" and r["kind"] == "ddl"]
    # a resumed 4D: what earlier (interrupted) 4D runs dropped, and every interruption
    drops = [{"what": f"{r['message']} (by earlier run {r['run_id']})", "at": r["finished_at"]}
             for r in rows if r["phase"] == "4D" and r["kind"] == "ddl" and r["run_id"] != run_id
             and r["status"] == ledger.SUCCESS and r["run_id"] in _resumed_from(of_run)] + drops
    shown = next((r for r in reversed(of_run) if r["kind"] == "approval" and r["name"] == "drop_preview"), None)
    drop_preview = [{"schema": schema, "statement": stmt, "request_id": (shown["details"] or {}).get("request_id")}
                    for schema, e in ((shown or {}).get("details") or {}).get("schemas", {}).items()
                    for stmt in e.get("statements", [])]
    interrupted = [{"phase": r["phase"], "run_id": r["run_id"], "what": f"{r['kind']} {r['name']}",
                    "started_at": r["started_at"], "noticed_at": r["finished_at"], "message": r["message"]}
                   for r in rows if r["status"] == ledger.INTERRUPTED]

    durations = []
    for phase in PHASES:
        ph = [r for r in rows if r["phase"] == phase]
        if not ph:
            continue
        last = ph[-1]["run_id"]
        run_rows = [r for r in ph if r["run_id"] == last]
        start = min(r["started_at"] for r in run_rows)
        end = max((r["finished_at"] or r["started_at"]) for r in run_rows)
        durations.append({"phase": phase, "run_id": last, "started_at": start, "finished_at": end,
                          "seconds": round((end - start).total_seconds(), 1)})
    conn.rollback()
    return {"plan": plan.name, "plan_sha256": plan.sha256, "run_id": run_id, "generated_at": datetime.now().astimezone(),
            "before": (inv or {}).get("details", {}).get("schemas"), "after": after, "steps": migrated,
            "conflicts": conflicts, "quarantine": quarantine, "gates": gates, "approvals": approvals,
            "approval_events": approval_events, "drop_preview": drop_preview, "backups": backups, "drops": drops,
            "durations": durations,
            "interruptions": interrupted}


def _resumed_from(of_run: list[dict]) -> set[str]:
    """Run ids of the earlier 4D runs whose drops this run resumed after (its resume_4D row)."""
    return {run for r in of_run if r["kind"] == "run" and r["name"] == "resume_4D"
            for run in (r["details"] or {}).get("dropped_by_runs", [])}


# ------------------------------------------------------------------ rendering
def _tables(data: dict) -> list[tuple[str, str, list[str], list[list]]]:
    """(section id, title, header, rows) in report order; rows hold plain values."""
    before, after = data["before"] or {}, data["after"]
    schemas = list(dict.fromkeys(list(before) + list(after)))

    def desc(d):
        if not d:
            return "-"
        if not d.get("exists"):
            return "absent"
        return f"{d['tables']} tables, {d['views']} views, {d['rows']:,} rows"
    out = [("schemas", "Schemas before and after", ["schema", "before the cleanup", "after"],
            [[s, desc(before.get(s)) if before else "(no 4D inventory in this run)", desc(after.get(s))]
             for s in schemas])]
    out.append(("tables", "Tables: rows from source to target (inserted and merged: over all runs)",
                ["source", "action", "target", "read", "inserted", "merged", "already present", "quarantined",
                 "checksums equal", "target rows now", "rows in the backup", "status"],
                [[r["source"], r["action"], r["target"], _n(r["read"]), _n(r.get("inserted_all_runs", r["inserted"])),
                  _n(r.get("merged_all_runs", r["merged"])), _n(r["already_present"]), _n(r["quarantined"]),
                  "-" if r["checksums_equal"] is None else ("yes" if r["checksums_equal"] else "NO"),
                  _n(r["target_rows_now"]), _n(r["backup_rows"]), r["status"]] for r in data["steps"]]))
    out.append(("conflicts", "Merges: conflicts (recorded, resolution applied)",
                ["step", "target", "key", "column", "target value", "source value", "resolution"],
                [[c["step"], c["target"], c["key"], c["column"], c["target_value"], c["source_value"], c["resolution"]]
                 for c in data["conflicts"]]))
    out.append(("columns", "Columns and foreign keys not migrated, or filled by the plan",
                ["source", "target", "column", "how"],
                [[r["source"], r["target"], c, f"ignored: {why}"] for r in data["steps"]
                 for c, why in (r.get("ignored") or {}).items()]
                + [[r["source"], r["target"], c, f"foreign key not carried: {why}"] for r in data["steps"]
                   for c, why in (r.get("foreign_keys_dropped") or {}).items()]
                + [[r["source"], r["target"], c, how] for r in data["steps"] for c, how in (r.get("filled") or {}).items()]))
    out.append(("quarantine", "Quarantine (accounted for, not migrated)",
                ["step", "source", "rows", "reasons", "kept in", "rows of the source in the backup"],
                [[q["step"], q["source"], _n(q["rows"]),
                  "; ".join(f"{x['rows']} x {x['reason']}" for x in q["reasons"]), q["kept_in"], _n(q.get("in_backup"))]
                 for q in data["quarantine"]]))
    out.append(("gates", "Gates", ["phase", "gate", "result", "checks", "failed", "finished", "run", "by"],
                [[g["phase"], g["name"], g["status"], _n(g["checks"]), _n(g["failed"]), _fmt_time(g["finished_at"]),
                  g["run_id"], g["by"]] for g in data["gates"]]))
    out.append(("approval", "Approval", ["request", "status", "decided by", "via", "OS user / DB role", "when", "why",
                                         "fingerprint"],
                [[a["id"], a["status"], a["decided_by"] or "-", a["decided_via"] or "-",
                  f"{a['os_user'] or '-'} / {a['db_role'] or '-'}", _fmt_time(a["decided_at"]),
                  a["reason"] or a["refusal"] or "-", (a["fingerprint"] or "")[:16]] for a in data["approvals"]]))
    out.append(("approval_events", "Approval events", ["event", "status", "when", "by", "message"],
                [[e["name"], e["status"], _fmt_time(e["at"]), e["by"], e["message"]] for e in data["approval_events"]]))
    out.append(("drop_preview", "DROP statements shown to the approver (4D preview at request time)",
                ["request", "schema", "statement"],
                [[p["request_id"], p["schema"], p["statement"]] for p in data.get("drop_preview", [])]))
    out.append(("backups", "Backup files", ["schema", "file", "bytes", "sha256", "tables", "rows", "made with",
                                            "taken"],
                [[b["schema"], b["file"], _n(b["bytes"]), b["sha256"], _n(b["tables"]), _n(b["rows"]),
                  b.get("made_with") or "-", _fmt_time(b["at"])] for b in data["backups"]]))
    out.append(("drops", "Dropped by 4D", ["what", "when"], [[d["what"], _fmt_time(d["at"])] for d in data["drops"]]))
    out.append(("interruptions", "Interruptions (work whose process was gone; re-runs continued it)",
                ["phase", "run", "what", "started", "noticed", "message"],
                [[i["phase"], i["run_id"], i["what"], _fmt_time(i["started_at"]), _fmt_time(i["noticed_at"]),
                  i["message"]] for i in data.get("interruptions", [])]))
    out.append(("durations", "Phase durations (latest run of each)", ["phase", "run", "started", "finished", "seconds"],
                [[d["phase"], d["run_id"], _fmt_time(d["started_at"]), _fmt_time(d["finished_at"]), d["seconds"]]
                 for d in data["durations"]]))
    return out


def render_markdown(data: dict) -> str:
    def cell(v) -> str:
        return str("-" if v is None else v).replace("|", "\\|").replace("\n", " ")
    lines = [f"# Phase 4 completion report: plan {data['plan']}", "",
             f"- run: `{data['run_id']}`", f"- plan sha256: `{data['plan_sha256']}`",
             f"- generated: {_fmt_time(data['generated_at'])}", ""]
    for _, title, header, rows in _tables(data):
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["(none)", ""]
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem;color:#1d2733;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d5dbe3;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #d5dbe3;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#eef2f6}tr:nth-child(even) td{background:#f8fafc}
td.bad{color:#a4161a;font-weight:600}td.good{color:#1b6e2d}code{font-size:.85rem}.none{color:#6b7785}
"""


def render_html(data: dict) -> str:
    esc = html.escape
    bad, good = {"failed", "refused", "rejected", "NO", "expired", "interrupted"}, {"success", "approved", "yes"}

    def td(v) -> str:
        text = "-" if v is None else str(v)
        cls = ' class="bad"' if text in bad else ' class="good"' if text in good else ""
        return f"<td{cls}>{esc(text)}</td>"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>Phase 4 completion report: {esc(data['plan'])}</title>", f"<style>{_STYLE}</style></head><body>",
             f"<h1>Phase 4 completion report: plan {esc(data['plan'])}</h1>",
             f"<p>run <code>{esc(str(data['run_id']))}</code> &middot; plan sha256 <code>{esc(data['plan_sha256'])}</code>"
             f" &middot; generated {esc(_fmt_time(data['generated_at']))}</p>"]
    for sid, title, header, rows in _tables(data):
        parts.append(f'<h2 id="{sid}">{esc(title)}</h2>')
        if not rows:
            parts.append('<p class="none">(none)</p>')
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(td(v) for v in r) + "</tr>" for r in rows]
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(conn, plan: Plan, *, run_id: str | None = None, folder: str | Path | None = None,
                 user: str | None = None) -> dict:
    """Write report.md and report.html; record them in the ledger; return their paths."""
    data = collect(conn, plan, run_id)
    folder = Path(folder) if folder else config.report_dir() / safe_name(str(data["run_id"] or "no-run"))
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / "report.md", folder / "report.html"
    atomic_write(md, render_markdown(data))
    atomic_write(page, render_html(data))
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (md, page)}
    ledger.record(conn, plan, status=ledger.SUCCESS, run_id=str(data["run_id"] or "report"), phase="4D",
                  kind="report", name="report", target=str(page), triggered_by=user,
                  message=f"completion report: {md} and {page}",
                  details={"markdown": str(md), "html": str(page), "sha256": digests,
                           "gates": len(data["gates"]), "approvals": len(data["approvals"]),
                           "backups": len(data["backups"])})
    conn.commit()
    return {"markdown": str(md), "html": str(page), "run_id": data["run_id"]}
