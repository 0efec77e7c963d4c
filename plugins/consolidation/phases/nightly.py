"""Nightly validation of the consolidated schemas, after the migration.

The expectations are derived every night from the plan and the live catalog, never listed
by hand per table. For each consolidated schema (one Airflow TaskGroup each, one Great
Expectations checkpoint each, via checks.gates.run_phase_gate):

  schema_exists         the consolidated schema is there.
  key_unique            every table's key is unique (expect_column_values_to_be_unique, or
  key_not_null          expect_compound_columns_to_be_unique) and never null. The key is the
                        catalog's primary key; a table whose primary key has gone keeps being
                        checked on the key remembered from the previous validation (history),
                        else on the plan's key for that target (while the plan can still be
                        derived). Tables with none of these are listed as "not key-checked".
  foreign_key_resolves  every foreign key of the catalog resolves (MATCH SIMPLE semantics).
  rows_not_dropped      a migrated table (a plan target that is a table) holds at least as many
                        rows as at its BASELINE: the count stored by the latest validation in
                        which this check passed, in another run. A drop passes only when the
                        ledger explains it after that baseline: a successful row with
                        details->>'allow_count_drop' = '<schema>.<table>' whose optional
                        details->>'min_rows' is not above the current count (written by
                        `python -m consolidation validate --accept-drop TABLE --reason TEXT`,
                        kind 'approval', phase 'nightly'), or a successful 'rollback' row for
                        that target (or for no particular target). Because the baseline only
                        moves on a pass, a silent loss keeps failing every night until the rows
                        are restored or the drop is accepted; it never "heals" by itself.
  freshness             for plan steps with `freshness: {column, max_age_hours}`: the newest
                        value of the column, or the time 4B migrated the target if later, is at
                        most max_age_hours old. Measuring from the migration (ledger: the
                        latest successful 4B step into the target) lets a freshly migrated copy
                        of old data pass, and still catches the real failure mode of a
                        consolidation: nothing arrives in the new table any more (the writer
                        still writes to the old one). The plan's rule is unchanged.
  registry_resolves     when the tool's registry table exists (plan.tool_table('registry'),
                        written by phase 4C): every entry's target names an existing relation.
                        Its columns are the registry's own (phases.registry.COLUMNS); a
                        registry table without them FAILS, naming the columns it has and those
                        missing - a check that cannot run is never a pass.

  migrated_rows_intact  per target of migrating steps: while the legacy table exists, every legacy
                        row minus the step's quarantined rows (as the 4C gate subtracts them) is in
                        the target with the plan's values, named by key when not; that is recorded
                        as the baseline the target is compared with once the legacy table is gone
  quarantine_accounted  per target whose step quarantined rows: the quarantine listed, each row still
                        in the legacy table (after 4D: as many rows as the baseline recorded).
                        Both: phases.validation.migrated_rows.

The tool's own tables (<tool schema>.<tool prefix>*) are not validated as data.

Every check's outcome is stored, per run, table and check, in the history table
plan.tool_table('validation_history'): run_id, checked_at (database time when the row counts
were taken), schema_name, table_name, check_name, column_names, passed, observed (GX's count of
unexpected values/rows), rows (the table's count(*) taken before the checks ran), expectation
(GX expectation type), description, details (sample, error, baseline, key source) - the
columns the brief calls schema/table/check are schema_name/table_name/check_name (no quoting
of reserved words). GX validation results go to state_dir()/gx (gates.run_gate). The verdict
of a run is one ledger row (phase 'nightly', kind 'gate', name 'nightly_validation') and an
offline HTML page (inline CSS, no CDN) state_dir()/nightly/<run>/index.html, with
result.json beside it; the Airflow UI plugin (plugins/consolidation_ui.py) serves them.
GX Data Docs are not built: their pages load CSS/JS from CDNs and re-render every stored
result each time; the page here is the equivalent, built from the history table.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from psycopg import sql

from consolidation.core.errors import Refusal
from consolidation.core import config, ledger
from consolidation.core import dsn as dsns
from consolidation.phases.validation.migrated_rows import CHECK as ROWS_CHECK, PINNED
from consolidation.checks.gates import record_verdict, run_phase_gate
from consolidation.checks.gx import CheckResult, GateResult
from consolidation.core.files import atomic_write, safe_name
from consolidation.core.plan import Plan
from consolidation.core.catalog import relation_exists
from consolidation.phases.nightly_checks import (COUNT_CHECK, EXPECTATIONS, HISTORY, SchemaChecks,
                                                 _count, _qualified, build_checks, ensure_history,
                                                 history_ident, migrated_tables)

log = logging.getLogger(__name__)

PHASE = "nightly"
DAG_ID = "consolidation_nightly_validation"


class NightlyFailed(Refusal):
    """The nightly validation found a problem; str() is the summary naming each one."""


def require_migrated(conn, plan: Plan) -> None:
    """The nightly validates a migrated database: the ledger must exist."""
    if not ledger.tool_tables_exist(conn, plan):
        raise NightlyFailed(
            f"no ledger ({_qualified(plan, 'ledger')}): this database has not been migrated; "
            "run phase4a_schema_extension and phase4b_data_migration first")



# --------------------------------------------------------------------- running
@dataclass
class SchemaOutcome:
    schema: str
    passed: bool
    checks: int
    failures: list[dict]

    def summary(self) -> str:
        if self.passed:
            return f"{self.schema}: {self.checks} of {self.checks} checks passed"
        lines = [f"{self.schema}: {len(self.failures)} of {self.checks} checks FAILED"]
        lines += [f"  - {describe_failure(f)}" for f in self.failures]
        return "\n".join(lines)


def validate_schema(conn, dsn: str, plan: Plan, schema: str, *, run_id: str, user: str | None) -> SchemaOutcome:
    """Build, run (one GX checkpoint) and record the checks of one consolidated schema
    (in the history: the run's verdict is finish()'s one ledger row)."""
    if not relation_exists(conn, *plan.tool_table(HISTORY)):
        ensure_history(conn, plan)
        conn.commit()
    built = build_checks(conn, plan, schema, run_id=run_id)
    rows: list[dict] = []

    def record(result: GateResult) -> None:
        rows.extend(_history_row(built, r) for r in result.results)
        h = history_ident(plan)
        with conn.transaction():
            conn.execute(sql.SQL("DELETE FROM {} WHERE run_id = %s AND schema_name = %s").format(h), (run_id, schema))
            with conn.cursor() as cur:
                cur.executemany(sql.SQL("""
                    INSERT INTO {} (run_id, checked_at, schema_name, table_name, check_name, column_names, passed,
                                    observed, rows, expectation, description, details, gx_run_id, triggered_by)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)""").format(h),
                    [(run_id, built.checked_at, r["schema_name"], r["table_name"], r["check_name"], r["column_names"],
                      r["passed"], r["observed"], r["rows"], r["expectation"], r["description"],
                      json.dumps(r["details"], default=str), result.gx_run_id, user) for r in rows])
        conn.commit()

    # row hashes are text-based: the checkpoint reads with the settings the baseline was hashed with
    run_phase_gate(conn, dsns.with_settings(dsn, PINNED), plan, PHASE, built.checks, run_id=run_id, user=user,
                   gate=f"nightly_{schema}", record=record, raise_failed=False)
    failures = [r for r in rows if not r["passed"]]
    return SchemaOutcome(schema, not failures, len(rows), failures)


def _history_row(built: SchemaChecks, r: CheckResult) -> dict:
    c = r.check
    schema, _, table = c.table.partition(".") if "." in c.table else (c.table, "", "")
    details: dict = {"sample": r.sample}
    if r.error:
        details["error"] = r.error
    if c.table in built.key_source and c.name.startswith("key_"):
        details["key_source"] = built.key_source[c.table]
    if c.name == COUNT_CHECK:
        details["baseline"] = built.baselines.get(table)
    if c.name == "schema_exists":
        details["not_key_checked"] = built.not_key_checked
        details["not_row_compared"] = built.not_row_compared
    if not r.passed:
        details["query"] = c.query
    return {"schema_name": schema, "table_name": table, "check_name": c.name, "column_names": c.column,
            "passed": r.passed, "observed": r.observed, "rows": built.counts.get(c.table),
            "expectation": EXPECTATIONS[c.kind], "description": c.description, "details": details}


def describe_failure(row: dict) -> str:
    """One line naming the table, the expectation and the observed value (and the fix when known)."""
    where = f"{row['schema_name']}.{row['table_name']}" if row["table_name"] else f"schema {row['schema_name']}"
    check = row["check_name"] + (f" on {row['column_names']}" if row.get("column_names") else "")
    details = row.get("details") or {}
    sample = details.get("sample") or []
    head = f"{where}: {check} ({row['expectation']})"
    if details.get("error"):
        return f"{head} could not be evaluated: {details['error']}"
    first = sample[0] if sample and isinstance(sample[0], dict) else {}
    n = row.get("observed")
    name = row["check_name"]
    if name == COUNT_CHECK and first:
        return (f"{head}: observed {first.get('current_rows')} rows, {first.get('baseline_rows')} at the last passing "
                f"validation (run {first.get('baseline_run')}, {first.get('baseline_checked_at')}): "
                f"{first.get('rows_lost')} rows gone and no ledger record says why; restore them, or record why with "
                f"`python -m consolidation validate --accept-drop {where} --reason TEXT`")
    if name == "freshness" and first:
        return (f"{head}: observed newest {row.get('column_names')} = {first.get('newest')}, migrated at "
                f"{first.get('migrated_at')}, age {first.get('age')} > {_num(first.get('max_age_hours'))} h; the table "
                "receives no new rows: check that its writers were switched to it")
    if name == ROWS_CHECK:
        keys = "; ".join(f"{x.get('row_key')}: {x.get('problem')}" for x in sample[:5] if isinstance(x, dict))
        return (f"{head}: observed {n} migrated row(s) missing or changed, e.g. {keys}; restore them from the legacy "
                "table or its backup, or find what changed them")
    if name == "key_unique":
        return f"{head}: observed {n} rows with a duplicated key; e.g. {json.dumps(sample[:5], default=str)}"
    if name == "key_not_null":
        return f"{head}: observed {n} rows with a null key"
    if name == "foreign_key_resolves":
        return f"{head}: observed {n} rows referring to nothing; e.g. {json.dumps(sample[:5], default=str)}"
    if name == "registry_resolves":
        def entry(x):
            if not isinstance(x, dict):
                return str(x)
            e = x.get("entry") if isinstance(x.get("entry"), dict) else {}
            label = str(e["logical_name"]) if e.get("logical_name") else None  # phases.registry's entries
            return f"{label + ' -> ' if label else ''}{x.get('target')}: {x.get('problem', 'does not resolve')}"
        return f"{head}: observed {n} entries that do not resolve; e.g. " + "; ".join(entry(x) for x in sample[:5])
    return f"{head}: observed {n} unexpected; e.g. {json.dumps(sample[:5], default=str)}"


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


# --------------------------------------------------------------------- the verdict
@dataclass
class Verdict:
    run_id: str
    passed: bool
    rows: list[dict]
    problems: list[str]  # one line each
    page: Path | None = None

    def summary(self) -> str:
        failed = [r for r in self.rows if not r["passed"]]
        if self.passed:
            return f"nightly validation passed (run {self.run_id}): {len(self.rows)} of {len(self.rows)} checks"
        head = (f"nightly validation FAILED (run {self.run_id}): {len(failed)} of {len(self.rows)} checks failed"
                + (f", {len(self.problems) - len(failed)} schema(s) not validated"
                   if len(self.problems) > len(failed) else ""))
        return "\n".join([head] + [f"  - {p}" for p in self.problems])


def run_rows(conn, plan: Plan, run_id: str) -> list[dict]:
    """The history rows of one run, in schema/table/check order."""
    if not relation_exists(conn, *plan.tool_table(HISTORY)):
        return []
    cur = conn.execute(sql.SQL("""
        SELECT run_id, checked_at, schema_name, table_name, check_name, column_names, passed, observed, rows,
               expectation, description, details, gx_run_id, triggered_by
          FROM {} WHERE run_id = %s ORDER BY schema_name, table_name, check_name, column_names, id""").format(
        history_ident(plan)), (run_id,))
    cols = [d.name for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def finish(conn, plan: Plan, *, run_id: str, user: str | None, schemas: list[str] | None = None) -> Verdict:
    """Read the run's history, write the page and the ledger row; the verdict (never raises on failure)."""
    schemas = schemas or list(plan.consolidated_schemas)
    rows = run_rows(conn, plan, run_id)
    problems = [describe_failure(r) for r in rows if not r["passed"]]
    seen = {r["schema_name"] for r in rows}
    for schema in schemas:
        if schema not in seen:
            problems.append(f"schema {schema}: no validation was recorded in this run (its task failed before "
                            "recording: see that task's log)")
    verdict = Verdict(run_id, not problems, rows, problems)
    verdict.page = write_page(plan, verdict)
    if ledger.tool_tables_exist(conn, plan):
        failed = [r for r in rows if not r["passed"]]
        record_verdict(conn, plan, phase=PHASE, name="nightly_validation", passed=verdict.passed,
                       summary=verdict.summary()[:4000], run_id=run_id, user=user,
                       details={"checks": len(rows), "failed": len(failed), "page": str(verdict.page),
                                "plan_sha256": plan.sha256,
                                "failures": [f"{r['schema_name']}.{r['table_name']}:{r['check_name']}" for r in failed]})
    return verdict


def validate(dsn: str, plan: Plan, *, run_id: str, user: str | None,
             schemas: list[str] | None = None) -> Verdict:
    """All of it, in one process (the CLI): every schema, then the verdict."""
    from consolidation.core import db

    schemas = schemas or list(plan.consolidated_schemas)
    with db.connect(dsn) as conn:
        require_migrated(conn, plan)
        ensure_history(conn, plan)
        conn.commit()
        for schema in schemas:
            validate_schema(conn, dsn, plan, schema, run_id=run_id, user=user)
        return finish(conn, plan, run_id=run_id, user=user, schemas=schemas)


# --------------------------------------------------------------------- accepting a drop
def accept_drop(conn, plan: Plan, table: str, *, reason: str, min_rows: int | None = None,
                user: str | None = None) -> dict:
    """Record in the ledger why a migrated table may hold fewer rows at the next validation.

    The drop is accepted down to `min_rows` (default: the table's count now), for the
    validations after this row; the next passing validation makes the new count the baseline.
    """
    if table not in migrated_tables(plan):
        raise ValueError(f"{table} is not a migrated table of the plan; use one of: {', '.join(migrated_tables(plan))}")
    if not reason or not reason.strip():
        raise ValueError("--reason is required: the ledger records why rows may be gone")
    require_migrated(conn, plan)
    schema, name = table.split(".", 1)
    now = _count(conn, schema, name)
    if now is None:
        raise ValueError(f"{table} does not exist: a missing table is not a drop to accept; restore it")
    floor = now if min_rows is None else int(min_rows)
    entry = ledger.record(conn, plan, status=ledger.SUCCESS, message=reason.strip(), run_id=f"accept-drop__{_stamp()}",
                          phase=PHASE, kind="approval", name="allow_count_drop", target=table, triggered_by=user,
                          details={"allow_count_drop": table, "min_rows": floor, "rows_now": now,
                                   "reason": reason.strip()})
    conn.commit()
    return {"ledger_id": entry, "table": table, "min_rows": floor, "rows_now": now}


# --------------------------------------------------------------------- the page
def nightly_dir() -> Path:
    path = config.state_dir() / "nightly"
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_run(run_id: str) -> str:
    """A run id as one file name (Airflow run ids contain ':' and '+')."""
    return safe_name(run_id, strip="._")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem;color:#1f2328;background:#fff}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.verdict{display:inline-block;padding:.15rem .6rem;border-radius:4px;font-weight:600;color:#fff}
.ok{background:#1a7f37}.bad{background:#cf222e}.meta{color:#59636e;margin:.2rem 0 1rem}
table{border-collapse:collapse;width:100%;margin:.3rem 0 1rem}th,td{border:1px solid #d1d9e0;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f6f8fa}tr.fail td{background:#ffebe9}
td.n{text-align:right;font-variant-numeric:tabular-nums}code,pre{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
pre{white-space:pre-wrap;margin:0}ul.problems li{margin:.25rem 0}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def render_page(verdict: Verdict) -> str:
    rows = verdict.rows
    failed = [r for r in rows if not r["passed"]]
    checked_at = min((r["checked_at"] for r in rows), default=None)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Nightly validation {_e(verdict.run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Nightly validation <span class='verdict {'ok' if verdict.passed else 'bad'}'>"
        f"{'PASSED' if verdict.passed else 'FAILED'}</span></h1>",
        f"<p class='meta'>run <code>{_e(verdict.run_id)}</code> &middot; checked at {_e(checked_at)} &middot; "
        f"{len(rows) - len(failed)} of {len(rows)} checks passed &middot; DAG <code>{DAG_ID}</code></p>",
    ]
    if verdict.problems:
        parts.append("<h2>Problems</h2><ul class='problems'>")
        parts += [f"<li>{_e(p)}</li>" for p in verdict.problems]
        parts.append("</ul>")
    by_schema: dict[str, list[dict]] = {}
    for r in rows:
        by_schema.setdefault(r["schema_name"], []).append(r)
    for schema, items in by_schema.items():
        bad = sum(1 for r in items if not r["passed"])
        parts.append(f"<h2>{_e(schema)} &mdash; {len(items) - bad} of {len(items)} passed</h2>")
        parts.append("<table><tr><th>table</th><th>check</th><th>column(s)</th><th>expectation</th>"
                     "<th>result</th><th>observed</th><th>rows</th><th>details</th></tr>")
        for r in sorted(items, key=lambda r: (r["passed"], r["table_name"], r["check_name"])):
            d = r.get("details") or {}
            extra = []
            if d.get("error"):
                extra.append(f"error: {d['error']}")
            if d.get("sample"):
                extra.append("sample: " + json.dumps(d["sample"], default=str))
            if d.get("baseline"):
                b = d["baseline"]
                extra.append(f"baseline {b.get('rows')} rows (run {b.get('run_id')})")
            elif r["check_name"] == COUNT_CHECK:
                extra.append("first validation of this table: baseline recorded")
            if d.get("key_source") and d["key_source"] != "primary_key":
                extra.append(f"key source: {d['key_source']}")
            if d.get("not_key_checked"):
                extra.append("not key-checked (no primary key, no remembered or planned key): "
                             + ", ".join(d["not_key_checked"]))
            if d.get("not_row_compared"):
                extra += d["not_row_compared"]
            extra.append(r.get("description") or "")
            parts.append(
                f"<tr class='{'' if r['passed'] else 'fail'}'><td>{_e(r['table_name'] or '(schema)')}</td>"
                f"<td>{_e(r['check_name'])}</td><td>{_e(r['column_names'])}</td><td>{_e(r['expectation'])}</td>"
                f"<td>{'ok' if r['passed'] else '<b>FAILED</b>'}</td><td class='n'>{_e(r['observed'])}</td>"
                f"<td class='n'>{_e(r['rows'])}</td><td><pre>{_e(chr(10).join(x for x in extra if x))}</pre></td></tr>")
        parts.append("</table>")
    gx = sorted({r["gx_run_id"] for r in rows if r.get("gx_run_id")})
    if gx:
        parts.append(f"<p class='meta'>Great Expectations validation results: {_e(config.state_dir() / 'gx')} "
                     f"(checkpoints {_e(', '.join(gx))})</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_page(plan: Plan, verdict: Verdict) -> Path:
    folder = nightly_dir() / safe_run(verdict.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "index.html"
    atomic_write(page, render_page(verdict))
    atomic_write(folder / "result.json", json.dumps({
        "run_id": verdict.run_id, "passed": verdict.passed, "summary": verdict.summary(),
        "checks": len(verdict.rows), "failed": sum(1 for r in verdict.rows if not r["passed"]),
        "problems": verdict.problems, "finished_at": datetime.now(timezone.utc).isoformat(),
        "plan_sha256": plan.sha256,
    }, indent=2, default=str))
    return page


def latest_runs(limit: int = 30) -> list[dict]:
    """result.json of the latest validations written to the state folder, newest first."""
    found = []
    for result in nightly_dir().glob("*/result.json"):
        try:
            data = json.loads(result.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data["folder"] = result.parent.name
        found.append(data)
    found.sort(key=lambda d: str(d.get("finished_at", "")), reverse=True)
    return found[:limit]


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
