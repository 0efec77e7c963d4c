"""Gates between phases: the engine's checks, run as one Great Expectations checkpoint.

The engine describes what must hold after a phase as `Check`s (SQL returning the unexpected
rows, or a column property of a table). `run_gate` runs them all through GX Core, called
directly, as ONE `gx.Checkpoint`:

* ONE ValidationDefinition, suite `gate_<gate>`, over a query asset `SELECT 1`: every check is
  SQL that names its own tables (a "rows" check is its own query, deliberately cross-schema,
  no `{batch}`; "unique", "not_null" and "compound_unique" are SQL over their table with the
  semantics of GX's column expectations, gx_expectations.check_query);
* its expectations are UnexpectedRowsExpectations (a subclass that runs its query once), each
  over a statement that runs up to 50 checks' queries, table by table, and returns a count and
  a sample per failing check (gx_expectations.batch_query): GX's overhead per expectation
  (20-40 ms) and per validation was most of a gate's time. When a statement raises, another
  checkpoint (`<run>_retry1`, ...) runs each of its queries the planner refuses alone and the
  rest as a batch (a run-time error: its halves), until each error is on its own check
  (`_split`). Column checks on a missing table are not sent to GX: they fail with error
  "table missing";
* each expectation carries its check index (a batch: the list of them) in its `meta`, which
  maps every GX result back to its Check(s); a check GX did not report, or whose expectation
  raised inside GX, FAILS - an error never counts as a pass. A gate with no checks is refused
  (ValueError).

The GX project is the committed folder include/gx (great_expectations.yml). Why an ephemeral
context built from it, and not a FileDataContext on it: a FileDataContext writes every
datasource and asset into great_expectations.yml and every suite, validation definition and
checkpoint into the project folder - the committed files would grow (and churn) on every
gate, and two gates running at once in separate Airflow processes would race on the same
YAML. So `_context()` reads the committed YAML and builds an EphemeralDataContext from it:
suites, validation definitions and checkpoints stay in memory (the YAML declares in-memory
stores for them), while the validation results store and the Data Docs site are filesystem
stores under the results folder (default `config.state_dir()/gx`, git-ignored). Each call
has its own context, so names cannot clash between calls: suites and assets are named per
gate (`gate_4B`, so Data Docs list a gate's runs together) and the
checkpoint and run id are `gate_<gate>_<UTC stamp>_<hex>`; the results store key contains
that unique run id, so concurrent gates write distinct files. The gate's own JSON
(GateResult.to_dict()) goes to <results>/gates/<run id>.json. `build_docs()` renders GX Data
Docs from the stored validation results.

Credentials: the YAML's datasource says `connection_string: ${CONSOLIDATION_GX_URL}`, a GX
config substitution. `run_gate` supplies the value (the SQLAlchemy URL built from the DSN)
through the context's `runtime_environment` - never os.environ (no leak into child
processes, no race between calls) and never a file. Validation results name only the
datasource, never the URL.

Quirks handled here: GX `print`s a warning to stdout for every validation of an
UnexpectedRowsExpectation query without `{batch}` (stdout is redirected while GX runs), it
logs at INFO on import (its loggers are set to WARNING), it formats queries with
`str.format` (literal braces are doubled) and runs them through `sqlalchemy.text` (`:name`
bind-parameter look-alikes are escaped); adding assets one by one re-serialises the whole
project config each time (quadratic), so the assets are declared with the datasource at once.
GX is imported lazily (about 3-5 s): importing this module stays cheap. The stdout redirect
is process-wide: run one gate per process (as Airflow does), not from several threads.

Result format: COMPLETE with partial_unexpected_count 5, the only format in which
UnexpectedRowsExpectation returns rows. A batched rows check sends its count and 5 rows
(as JSON) from the server; a rows check run alone is fetched by GX (at most 200 rows, past
which its count is a server-side COUNT(*)).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from consolidation.core.errors import Refusal
from consolidation.checks import gx_expectations as expectations
from consolidation.core import config
from consolidation.core.files import atomic_write, safe_name

log = logging.getLogger(__name__)

GX_PROJECT_DIR = config.REPO_ROOT / "include" / "gx"
DATASOURCE = "consolidation_db"  # the datasource of include/gx/great_expectations.yml
KINDS = ("rows", "unique", "not_null", "compound_unique")
SAMPLE_SIZE = expectations.SAMPLE_SIZE
TABLE_MISSING = "table missing"
RESULT_FORMAT = {"result_format": "COMPLETE", "partial_unexpected_count": SAMPLE_SIZE}
_URL_VAR = "CONSOLIDATION_GX_URL"
_RESULTS_VAR = "CONSOLIDATION_GX_RESULTS_DIR"


# ---------------------------------------------------------------- the interface


@dataclass
class Check:
    """One thing that must hold; `query` returns the UNEXPECTED rows (0 rows = pass)."""

    name: str
    table: str
    description: str
    query: str | None = None
    step: str | None = None
    column: str | None = None
    kind: str = "rows"

    @property
    def columns(self) -> list[str]:
        """The column(s) of a column check (compound_unique: comma-separated)."""
        return [c.strip() for c in (self.column or "").split(",") if c.strip()]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "table": self.table, "description": self.description,
            "kind": self.kind, "step": self.step, "column": self.column, "query": self.query,
        }


@dataclass
class CheckResult:
    check: Check
    passed: bool
    observed: int | None
    sample: list
    error: str | None = None

    def describe(self) -> str:
        """One line: table, check, step, description, then the count and sample (or error)."""
        c = self.check
        where = f"{c.name}" + (f", step {c.step}" if c.step else "") + (
            f", column {c.column}" if c.column else "")
        line = f"{c.table} [{where}]: {c.description}"
        if self.error:
            return f"{line} -- error: {self.error}"
        if self.passed:
            return f"{line} -- ok"
        text = f"{line} -- {self.observed if self.observed is not None else '?'} unexpected"
        if self.sample:
            text += f"; sample: {json.dumps(self.sample, default=str)}"
        return text

    def to_dict(self, *, with_query: bool = False) -> dict:
        d = {
            "name": self.check.name, "table": self.check.table, "kind": self.check.kind,
            "step": self.check.step, "column": self.check.column,
            "description": self.check.description, "passed": self.passed,
            "observed": self.observed, "sample": expectations.jsonable(self.sample), "error": self.error,
        }
        if with_query:
            d["query"] = self.check.query
        return d


@dataclass
class GateResult:
    gate: str
    passed: bool
    results: list[CheckResult]
    started_at: datetime
    finished_at: datetime
    gx_run_id: str | None
    results_path: Path | None = field(default=None, compare=False)

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """Readable, multi-line: the verdict, then one line per failing check."""
        total, failed = len(self.results), self.failures()
        if not failed:
            return f"gate {self.gate} passed: {total} of {total} checks"
        lines = [f"gate {self.gate} FAILED: {len(failed)} of {total} checks"]
        lines += [f"  - {r.describe()}" for r in failed]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable, for the ledger (queries only for the failing checks)."""
        return {
            "gate": self.gate,
            "passed": self.passed,
            "checks": len(self.results),
            "failed": len(self.failures()),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": round((self.finished_at - self.started_at).total_seconds(), 3),
            "gx_run_id": self.gx_run_id,
            "results_path": str(self.results_path) if self.results_path else None,
            "results": [r.to_dict(with_query=not r.passed) for r in self.results],
        }

    def raise_if_failed(self) -> "GateResult":
        if not self.passed:
            raise GateFailed(self)
        return self


class GateFailed(Refusal):
    """A gate that did not pass; str() is the result's summary."""

    def __init__(self, result: GateResult):
        super().__init__(result.summary())
        self.result = result

    def __str__(self) -> str:
        return self.result.summary()


def run_gate(dsn: str, gate: str, checks: list[Check], *,
             results_dir: Path | None = None) -> GateResult:
    """Run every check as one GX checkpoint; never raises for a failing or erroring check.

    Raises ValueError for an empty or malformed list of checks and db.DatabaseUnreachable
    when the server cannot be reached. Results are stored as GX validation results under
    `results_dir` (default state_dir()/gx), plus the gate's own JSON in results_dir/gates.
    """
    _validate(gate, checks)
    started = datetime.now(timezone.utc)
    out_dir = _results_dir(results_dir)
    existing = _existing_tables(dsn, {c.table for c in checks})
    run_name = f"gate_{_safe(gate)}_{started:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:8]}"

    # column checks on a missing table are not sent to GX; its rows checks are (see above)
    outcome = {i: CheckResult(c, False, None, [], TABLE_MISSING) for i, c in enumerate(checks)
               if c.table not in existing and c.kind != "rows"}
    pending = [i for i in range(len(checks)) if i not in outcome]
    groups = expectations.batches(checks, pending)
    done: dict[int, CheckResult] = {}
    run_error, round_ = None, 0
    while groups:
        name = run_name if round_ == 0 else f"{run_name}_retry{round_}"
        found, error, raised = _run_checkpoint(dsn, gate, name, checks, groups, existing, out_dir)
        done.update(found)
        run_error = run_error or error
        groups = [part for g in raised for part in _split(dsn, checks, existing, g)]
        round_ += 1
    for i in pending:
        outcome[i] = done.get(i) or CheckResult(
            checks[i], False, None, [], run_error or "no result from Great Expectations")

    results = [outcome[i] for i in range(len(checks))]
    result = GateResult(
        gate=gate, passed=all(r.passed for r in results), results=results,
        started_at=started, finished_at=datetime.now(timezone.utc), gx_run_id=run_name,
    )
    result.results_path = _write_gate_json(out_dir, run_name, result)
    log.info("%s", result.summary())
    return result


def _split(dsn: str, checks: list[Check], existing: dict, group: list[int]) -> list[list[int]]:
    """A batch whose statement raised, as the groups to run next: each query the planner refuses
    (EXPLAIN: a missing relation or column, a type error - what a plan gets wrong) alone, the
    rest as one batch; when the planner refuses none (an error at run time), the two halves.
    So each error ends up on its own check in a round or a few, and each other check's query
    is run again only with the batch it is in."""
    from consolidation.core import db

    refused = []
    with db.connect(dsn, autocommit=True) as conn:
        for i in group:
            body = expectations.statement_body(expectations.check_query(checks[i], existing.get(checks[i].table)))
            try:
                conn.execute("EXPLAIN " + body)  # plans, never runs: the engine's own query text
            except Exception:
                refused.append(i)
    rest = [i for i in group if i not in refused]
    if refused:
        return [[i] for i in refused] + ([rest] if rest else [])
    return [part for part in (group[:len(group) // 2], group[len(group) // 2:]) if part]


def build_docs(results_dir: Path | None = None) -> Path:
    """Build GX Data Docs from the stored validation results; return index.html.

    The pages pull their CSS and JavaScript from public CDNs (GX default): offline, they
    render unstyled but readable.
    """
    out_dir = _results_dir(results_dir)
    gx = _import_gx()
    with _quiet():
        context = _context(gx, out_dir, url=None)
        urls = context.build_data_docs(site_names=["local_site"])
    index = out_dir / "data_docs" / "local_site" / "index.html"
    if not index.exists():  # pragma: no cover - GX layout changed
        raise RuntimeError(f"GX Data Docs did not produce {index} (got {urls})")
    return index


# ---------------------------------------------------------------- GX plumbing


def _run_checkpoint(dsn, gate, run_name, checks, groups, existing, out_dir):
    """Run the checks as one checkpoint of one validation, one expectation per group of check
    indexes: ({check index: CheckResult}, the error that stopped GX or None, the groups whose
    statement raised)."""
    gx = _import_gx()
    import great_expectations.expectations as gxe

    results: dict[int, CheckResult] = {}
    raised: list[list[int]] = []
    datasource = None
    try:
        with _quiet():
            # Every check is SQL naming its own tables (gx_expectations.check_query), so the
            # gate's one validation reads a batch that is only `SELECT 1`. Stable per gate (Data
            # Docs group its runs); results of different runs never clash: their store key
            # contains the unique run name.
            label = f"gate_{_safe(gate)}"
            suite_expectations = expectations.suite_expectations(gxe, checks, groups, existing)
            asset = {"type": "query", "name": label, "query": "SELECT 1", "batch_definitions": [{"name": "gate"}]}
            context = _context(gx, out_dir, url=sqlalchemy_url(dsn), assets=[asset])
            datasource = context.data_sources.get(DATASOURCE)
            suite = context.suites.add(gx.ExpectationSuite(
                name=label, expectations=suite_expectations, meta={"gate": gate, "gate_run": run_name}))
            definitions = [context.validation_definitions.add(gx.ValidationDefinition(
                name=label, data=datasource.get_asset(label).get_batch_definition("gate"), suite=suite))]
            checkpoint = context.checkpoints.add(gx.Checkpoint(
                name=run_name, validation_definitions=definitions,
                result_format=dict(RESULT_FORMAT), actions=[]))
            run = checkpoint.run(run_id=gx.RunIdentifier(run_name=run_name))
        _quiet_gx_loggers()  # modules GX imported lazily during the run
        for suite_result in run.run_results.values():
            for r in suite_result.results:
                found, failed_batch = expectations.to_check_results(checks, r, CheckResult)
                results.update(found)
                if failed_batch:
                    raised.append(failed_batch)
        return results, None, raised
    except Exception as exc:  # every check not yet reported fails with this text
        log.warning("gate run %s: Great Expectations raised: %s", run_name, exc, exc_info=True)
        return results, expectations.clean_error(
            f"Great Expectations raised {type(exc).__name__}: {exc}"), []
    finally:
        _dispose(datasource)


_GX_READY = False


def _import_gx():
    """Import great_expectations (slow) with its loggers at WARNING; once per process."""
    if not _GX_READY:
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    _quiet_gx_loggers()
    return gx


def _quiet_gx_loggers() -> None:
    """Some GX modules pin their own logger to INFO when imported (data_context.types.base)."""
    global _GX_READY
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("great_expectations.") and isinstance(logger, logging.Logger) \
                and logger.level and logger.level < logging.WARNING:
            logger.setLevel(logging.NOTSET)  # inherit WARNING from "great_expectations"
    _GX_READY = True


@contextlib.contextmanager
def _quiet():
    """Swallow what GX prints on stdout (the `{batch}` notice) and its Python warnings."""
    buffer = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"great_expectations(\.|$)")
        warnings.filterwarnings("ignore", message=r".*result_format.*")
        with contextlib.redirect_stdout(buffer):
            yield
    printed = sorted({ln.strip() for ln in buffer.getvalue().splitlines() if ln.strip()})
    if printed:
        log.debug("GX printed: %s", " | ".join(printed)[:2000])


def load_project_config() -> dict:
    """The committed include/gx/great_expectations.yml, as a dict."""
    import yaml

    with open(GX_PROJECT_DIR / "great_expectations.yml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _context(gx, results_dir: Path, url: str | None, assets: list[dict] | None = None):
    """An ephemeral GX context from the committed project (see the module docstring).

    With a `url`, the project's datasources are registered; `assets` go to DATASOURCE.
    """
    project = load_project_config()
    datasources = project.pop("fluent_datasources", None) or {}
    runtime = {_RESULTS_VAR: str(results_dir)}
    if url is not None:
        runtime[_URL_VAR] = url
    context = gx.get_context(mode="ephemeral", project_config=project,
                             runtime_environment=runtime)
    if url is not None:
        for name, settings in datasources.items():
            settings = dict(settings)
            kind = settings.pop("type")
            if name == DATASOURCE and assets:
                settings["assets"] = assets
            getattr(context.data_sources, f"add_{kind}")(name=name, **settings)
    return context


def _dispose(datasource) -> None:
    """Close the pooled connections of the GX engines (GX keeps them until collected)."""
    if datasource is None:
        return
    for engine in (getattr(datasource, "_engine", None),
                   getattr(getattr(datasource, "_execution_engine", None), "engine", None)):
        try:
            if engine is not None:
                engine.dispose()
        except Exception:  # pragma: no cover - best effort
            log.debug("could not dispose a GX engine", exc_info=True)


# ---------------------------------------------------------------- helpers


def sqlalchemy_url(dsn: str) -> str:
    """`postgresql+psycopg://...` for a libpq DSN or URL (password quoted, libpq extras kept)."""
    from consolidation.core import dsn as dsns

    return dsns.sqlalchemy_url(dsn, defaults={"connect_timeout": "10", "application_name": "consolidation-gate"})


def _existing_tables(dsn: str, tables: set[str]) -> dict[str, tuple[str | None, str]]:
    """{check table: (schema, relation name)} for the named relations that exist."""
    from consolidation.core import db

    found: dict[str, tuple[str | None, str]] = {}
    with db.connect(dsn, autocommit=True) as conn:
        for table in sorted(tables):
            schema, _, name = table.rpartition(".")
            row = conn.execute(
                """SELECT n.nspname, c.relname FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.oid = to_regclass(CASE WHEN %(s)s = '' THEN quote_ident(%(t)s)
                                        ELSE quote_ident(%(s)s) || '.' || quote_ident(%(t)s) END)
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
                {"s": schema, "t": name},
            ).fetchone()
            if row:
                found[table] = (row[0] if schema else None, row[1])
    return found


def _validate(gate: str, checks: list[Check]) -> None:
    if not gate or not str(gate).strip():
        raise ValueError("a gate needs a name")
    if not checks:
        raise ValueError(f"gate {gate} has no checks: a gate that checks nothing is not a gate")
    for check in checks:
        where = f"gate {gate}, check {check.name!r} on {check.table!r}"
        if not check.table or not check.table.strip():
            raise ValueError(f"{where}: no table")
        if check.kind not in KINDS:
            raise ValueError(f"{where}: unknown kind {check.kind!r} (one of {', '.join(KINDS)})")
        if check.kind == "rows" and not (check.query and check.query.strip()):
            raise ValueError(f"{where}: a rows check needs a query")
        if check.kind in ("unique", "not_null") and len(check.columns) != 1:
            raise ValueError(f"{where}: a {check.kind} check needs exactly one column")
        if check.kind == "compound_unique" and len(check.columns) < 2:
            raise ValueError(f"{where}: compound_unique needs comma-separated columns")


def _results_dir(results_dir: Path | None) -> Path:
    path = Path(results_dir) if results_dir else config.state_dir() / "gx"
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_gate_json(out_dir: Path, run_name: str, result: GateResult) -> Path:
    path = out_dir / "gates" / f"{run_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    payload["results_path"] = str(path)
    return atomic_write(path, json.dumps(payload, indent=2, default=str))


def _safe(text: str) -> str:
    """A name fragment GX stores as one path component (GX splits suite names on dots)."""
    return safe_name(text, keep="_-", empty="x")


