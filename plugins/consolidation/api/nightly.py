"""Operations of the nightly validation: prepare, validate one consolidated schema, the verdict;
and, from the command line, all of it at once or an accepted drop of rows."""
from __future__ import annotations

import json

from consolidation.api.outcome import Outcome
from consolidation.core.plan import Plan
from consolidation.phases import nightly
from consolidation.phases.nightly import HISTORY, NightlyFailed, _stamp


def nightly_prepare(conn, plan: Plan) -> Outcome:
    """Refuses before Phase 4B is done; the validation history table."""
    nightly.require_migrated(conn, plan)
    nightly.ensure_history(conn, plan)
    conn.commit()
    history = ".".join(plan.tool_table(HISTORY))
    return Outcome(value={"history": history}, lines=[f"validation history: {history}"])


def nightly_validate_schema(conn, dsn: str, plan: Plan, schema: str, *, run_id: str, user: str | None) -> Outcome:
    """One GX checkpoint over one consolidated schema, recorded; a failed check is the failure."""
    outcome = nightly.validate_schema(conn, dsn, plan, schema, run_id=run_id, user=user)
    return Outcome(value={"schema": schema, "checks": outcome.checks, "failed": 0}, lines=[outcome.summary()],
                   failure=None if outcome.passed else NightlyFailed(outcome.summary()), data=outcome)


def nightly_report(conn, plan: Plan, *, run_id: str, user: str | None) -> Outcome:
    """The run's verdict, its page and its ledger row; a failed verdict is the failure."""
    verdict = nightly.finish(conn, plan, run_id=run_id, user=user)
    return Outcome(value={"passed": True, "checks": len(verdict.rows), "page": str(verdict.page)},
                   lines=[verdict.summary(), f"page: {verdict.page}"], data=verdict,
                   failure=None if verdict.passed else NightlyFailed(verdict.summary()))


def validate(dsn: str, plan: Plan, *, user: str | None, schemas: list[str] | None = None,
             show: str = "table") -> Outcome:
    """The nightly validation now, in this process (the CLI): every consolidated schema, or
    those named, then the verdict. `show`: "table", "failures" (only the failing checks) or
    "json" (the history rows of this run)."""
    verdict = nightly.validate(dsn, plan, run_id=f"cli__{_stamp()}", user=user, schemas=schemas)
    if show == "json":
        lines = [json.dumps(verdict.rows, indent=2, default=str)]
    else:
        lines = [render_table(verdict.rows, failures_only=show == "failures"), ""]
    lines += [verdict.summary(), f"page: {verdict.page}"]
    return Outcome(lines=lines, data=verdict, failure=None if verdict.passed else NightlyFailed(verdict.summary()))


def accept_drop(conn, plan: Plan, table: str, *, reason: str, min_rows: int | None = None,
                user: str | None = None) -> Outcome:
    """Record in the ledger why a migrated table may hold fewer rows at the next validation
    (ValueError or NightlyFailed when it may not)."""
    done = nightly.accept_drop(conn, plan, table, reason=reason, min_rows=min_rows, user=user)
    return Outcome(value=done, lines=[
        f"recorded (ledger id {done['ledger_id']}): {done['table']} may hold as few as {done['min_rows']} rows "
        f"(now {done['rows_now']}) at the next validation; reason: {reason.strip()}"])


def render_table(rows: list[dict], *, failures_only: bool = False) -> str:
    header = ("schema", "table", "check", "column(s)", "result", "observed", "rows")
    body = [(r["schema_name"], r["table_name"] or "(schema)", r["check_name"], r["column_names"] or "",
             "ok" if r["passed"] else "FAILED", "" if r["observed"] is None else str(r["observed"]),
             "" if r["rows"] is None else str(r["rows"]))
            for r in rows if not (failures_only and r["passed"])]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])
