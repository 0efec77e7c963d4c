"""Big copy/union steps in key-range batches (phases.load.batches, plan key `batch_rows`):
each batch commits with its progress in the ledger; a SIGKILLed run resumes after its last
committed batch, and the result equals an uninterrupted, unbatched run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from consolidation.core import config, ledger
from consolidation.core.plan import PlanError, load_plan, parse_plan
from consolidation.phases.migrate import run_step

from phase_helpers import PLAN, table_md5

COPY, COPY_TARGET = "copy__public__sbr_raw_html", "raw_data.sbr_raw_html"
UNIONS = ["union__tracking__active_strategy_configs", "union__backtesting__strategy_configurations"]
UNION_TARGET = "operational.strategy_configurations"


def raw_plan() -> dict:
    return yaml.safe_load(config.plan_path().read_text())


def plan_with(tmp_path, batch_rows: dict[str, int]):
    """The bundled plan with `batch_rows` set on some steps, as a file (a subprocess reads it too)."""
    raw = raw_plan()
    for step, entry in zip(PLAN.steps, raw["steps"]):
        if step.name in batch_rows:
            entry["batch_rows"] = batch_rows[step.name]
    path = tmp_path / "batched.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_plan(path)


def rows_of(conn, step: str) -> int:
    s = next(x for x in PLAN.steps if x.name == step)
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(s.source_schema, s.source_table))).fetchone()[0]


def columns_but(conn, table: str, skip: set[str]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
        "ORDER BY attnum", (table,)) if r[0] not in skip]


def step_entries(conn, plan, step: str) -> list[dict]:
    return ledger.rows(conn, plan, sql.SQL("kind = 'step' AND name = {}").format(sql.Literal(step)))


# ---------------------------------------------------------------- plan key
@pytest.mark.unit
def test_batch_rows_plan_key_per_step_and_default():
    raw = raw_plan()
    raw.setdefault("defaults", {})["batch_rows"] = 5000
    plan = parse_plan(raw)
    by = {s.name: s for s in plan.steps}
    assert by[COPY].batch_rows == 5000 and by[UNIONS[0]].batch_rows == 5000
    assert by["merge__action__dim_teams"].batch_rows is None  # merges never batch
    raw["steps"][0]["batch_rows"] = 10
    assert parse_plan(raw).steps[0].batch_rows == 10


@pytest.mark.unit
@pytest.mark.parametrize("value, message", [
    (0, r"\(public.sbr_raw_html\).batch_rows is 0; it must be a number >= 1"),
    (-3, r"\(public.sbr_raw_html\).batch_rows is -3; it must be a number >= 1"),
    ("many", r"\(public.sbr_raw_html\).batch_rows is text \('many'\); write a whole number >= 1"),
])
def test_bad_batch_rows_refused_in_one_line(value, message):
    raw = raw_plan()
    raw["steps"][0]["batch_rows"] = value
    with pytest.raises(PlanError, match=message):
        parse_plan(raw)


@pytest.mark.unit
def test_batch_rows_on_a_merge_step_refused():
    raw = raw_plan()
    i = next(s.index for s in PLAN.steps if s.action == "merge") - 1
    raw["steps"][i]["batch_rows"] = 10
    with pytest.raises(PlanError, match=r"`batch_rows` applies to copy steps and union steps only"):
        parse_plan(raw)


# ---------------------------------------------------------------- batches
@pytest.mark.engine
def test_batched_copy_equals_one_transaction_and_records_progress(make_db, template_4a, tmp_path, capsys):
    clean, batched = make_db(template=template_4a.name), make_db(template=template_4a.name)
    with psycopg.connect(clean) as conn:
        run_step(conn, PLAN, COPY, run_id="t-clean", user="test")
        expected = table_md5(conn, COPY_TARGET)
        n = rows_of(conn, COPY)
    assert n >= 20, "the fixture's step is too small to batch"
    size = n // 6 + 1  # six batches
    plan = plan_with(tmp_path, {COPY: size})
    with psycopg.connect(batched) as conn:
        r = run_step(conn, plan, COPY, run_id="t-batched", user="test")
        assert r.path == f"batched (6 batches of {size:,} rows)"
        assert (r.read, r.inserted, r.quarantined) == (n, n, 0) and r.source_checksum == r.target_checksum
        assert table_md5(conn, COPY_TARGET) == expected
        (entry,) = step_entries(conn, plan, COPY)
        b = entry["details"]["batches"]
        assert (b["done"], b["rows_done"], b["total"], b["inserted"], b["complete"], b["resumed_from"]) == \
            (6, n, n, n, True, 0)
        assert entry["status"] == ledger.SUCCESS and entry["rows_inserted"] == n
        # a re-run (a finished step) starts over from the first key and inserts nothing
        again = run_step(conn, plan, COPY, run_id="t-batched-2", user="test")
        assert (again.inserted, again.already_present) == (0, n)
        assert table_md5(conn, COPY_TARGET) == expected
    out = capsys.readouterr().out
    assert f"{COPY}: batch 1: {size:,} / {n:,} rows" in out and "rows/s, about" in out and f"batch 6: {n:,} / {n:,}" in out


@pytest.mark.engine
def test_batched_union_equals_one_transaction(make_db, template_4a, tmp_path):
    clean, batched = make_db(template=template_4a.name), make_db(template=template_4a.name)
    with psycopg.connect(clean) as conn:
        for step in UNIONS:
            run_step(conn, PLAN, step, run_id="t-clean", user="test")
        target_key = next(s.target_key for s in PLAN.steps if s.name == UNIONS[0])
        cols = columns_but(conn, UNION_TARGET, {target_key})  # new identity keys follow insert order
        expected = table_md5(conn, UNION_TARGET, cols)
        sizes = [rows_of(conn, s) for s in UNIONS]
    assert min(sizes) >= 3, "the fixture's union sources are too small to batch"
    plan = plan_with(tmp_path, {s: max(1, n // 3) for s, n in zip(UNIONS, sizes)})
    with psycopg.connect(batched) as conn:
        for step, n in zip(UNIONS, sizes):
            r = run_step(conn, plan, step, run_id="t-batched", user="test")
            assert r.path.startswith("batched (") and (r.read, r.inserted) == (n, n)
            assert r.source_checksum == r.target_checksum
        assert table_md5(conn, UNION_TARGET, cols) == expected


KILLED_RUN = """
import sys
sys.path.insert(0, {plugins!r})
import psycopg
from consolidation.core.plan import load_plan
from consolidation.phases.migrate import run_step
with psycopg.connect({dsn!r}) as conn:
    run_step(conn, load_plan({plan!r}), {step!r}, run_id="t-killed", user="test")
"""


@pytest.mark.engine
def test_sigkilled_batched_step_resumes_at_its_last_committed_batch(make_db, template_4a, tmp_path):
    clean, killed = make_db(template=template_4a.name), make_db(template=template_4a.name)
    with psycopg.connect(clean) as conn:
        run_step(conn, PLAN, COPY, run_id="t-clean", user="test")
        expected = table_md5(conn, COPY_TARGET)
        n = rows_of(conn, COPY)
    size = max(1, n // 10)
    plan = plan_with(tmp_path, {COPY: size})
    code = KILLED_RUN.format(plugins=str(config.REPO_ROOT / "plugins"), dsn=killed, plan=str(plan.path), step=COPY)
    env = os.environ | {"CONSOLIDATION_BATCH_PAUSE": "0.5"}  # slow batches: the kill lands between two
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = 0
    try:
        with psycopg.connect(killed, autocommit=True) as watch:
            deadline = time.monotonic() + 60
            while done < 2 and time.monotonic() < deadline and proc.poll() is None:
                row = watch.execute(sql.SQL("SELECT max((details->'batches'->>'done')::int) FROM {} "
                                            "WHERE kind = 'step' AND name = %s").format(
                    ledger.tool_ident(plan, "ledger")), (COPY,)).fetchone()
                done = row[0] or 0
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode()
    assert done >= 2, f"the batched run never committed two batches: {out}"
    assert "Traceback" not in out
    with psycopg.connect(killed) as conn:
        (dead,) = step_entries(conn, plan, COPY)
        committed = dead["details"]["batches"]
        assert dead["status"] != ledger.SUCCESS and not committed["complete"]
        k = committed["done"]
        assert 2 <= k < 10 and committed["rows_done"] == k * size
        # what the killed run committed is in the target: exactly its batches' rows
        assert conn.execute(sql.SQL("SELECT count(*) FROM raw_data.sbr_raw_html")).fetchone()[0] == k * size
        r = run_step(conn, plan, COPY, run_id="t-resumed", user="test")
        assert r.path.endswith(f"resumed after batch {k})")
        assert (r.read, r.inserted, r.quarantined) == (n, n, 0) and r.source_checksum == r.target_checksum
        resumed = step_entries(conn, plan, COPY)[-1]
        assert resumed["details"]["batches"]["resumed_from"] == k > 0
        assert resumed["status"] == ledger.SUCCESS
        assert table_md5(conn, COPY_TARGET) == expected  # equals the uninterrupted run on the other clone
