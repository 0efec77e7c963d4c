"""A big step split into key ranges that separate tasks run (phases.load.ranges; the 4B DAG's
mapped run_range over plan_ranges' XCom, when it runs by the step graph).

Engine tier: the three functions called directly - ranges run out of order, one twice, one
whose done mark was lost, one whose worker's backend is killed mid-insert and then retried,
an unfinished run resumed by the next - always end equal to an unbatched step (test-side
digest and the engine's checksums). DAG tier: one dag.test of 4B with `batch_rows` on
public.sbr_parsed_games and the graph present: 4 map indexes, every range and the gate pass,
and the consolidated schemas equal the engine's 4B stage.
"""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from consolidation import api
from consolidation.core import config, ledger
from consolidation.core.plan import load_plan
from consolidation.core.runs import step_graph
from consolidation.phases.load import ranges
from consolidation.phases.migrate import StepFailed, run_step

from conftest import REPO_ROOT, read_only
from phase_helpers import PLAN, USER, snapshot, table_md5

COPY, COPY_TARGET = "copy__public__sbr_raw_html", "raw_data.sbr_raw_html"
BIG = "copy__public__sbr_parsed_games"
DAG_FILE = REPO_ROOT / "dags" / "phase4b_data_migration.py"
DAG_ID = "phase4b_data_migration"


def plan_with(tmp_path, batch_rows: dict[str, int]):
    raw = yaml.safe_load(config.plan_path().read_text())
    for step, entry in zip(PLAN.steps, raw["steps"]):
        if step.name in batch_rows:
            entry["batch_rows"] = batch_rows[step.name]
    path = tmp_path / "mapped.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_plan(path)


def unbatched(make_db, template_4a) -> tuple[str, tuple[str, int], int]:
    """(target checksum, test-side digest, rows read) of the plain one-transaction step, on a clone of its own."""
    with psycopg.connect(make_db(template=template_4a.name)) as conn:
        r = run_step(conn, PLAN, COPY, run_id="t-clean", user=USER)
        return r.target_checksum, table_md5(conn, COPY_TARGET), r.read


def entry_of(conn, plan, entry_id: int) -> dict:
    (row,) = ledger.rows(conn, plan, sql.SQL("id = {}").format(sql.Literal(entry_id)))
    return row


def move(conn, plan, key_range, run_id="t-mapped") -> dict:
    return ranges.run_range(conn, plan, COPY, key_range, run_id=run_id)[0]


@pytest.mark.engine
def test_ranges_out_of_order_twice_or_with_a_lost_mark_equal_an_unbatched_step(make_db, template_4a, tmp_path):
    checksum, digest, n = unbatched(make_db, template_4a)
    size = n // 4 + 1
    plan = plan_with(tmp_path, {COPY: size})
    with psycopg.connect(make_db(template=template_4a.name)) as conn:
        rs, line = ranges.plan_ranges(conn, plan, COPY, run_id="t-mapped", user=USER)
        assert line == f"{COPY}: {n:,} rows, 4 key ranges of {size:,} rows over (id)"
        # bounds only: the first open below, the last open above, each range starting where the last ended
        assert [r["index"] for r in rs] == [0, 1, 2, 3] and rs[0]["lo"] is None and rs[-1]["hi"] is None
        assert all(a["hi"] == b["lo"] is not None for a, b in zip(rs, rs[1:]))
        entry_id = rs[0]["entry"]
        assert entry_of(conn, plan, entry_id)["status"] == ledger.RUNNING
        assert "backend" not in entry_of(conn, plan, entry_id)["details"]  # it spans tasks
        done = [move(conn, plan, rs[i]) for i in (2, 0, 3)]
        again = move(conn, plan, rs[2])  # a retried task of a range already done: nothing twice
        assert again["skipped"] and again["inserted"] == 0
        # the finish refuses while a range is missing, naming it, and the step's row says so
        with pytest.raises(StepFailed, match=r"1 of 4 key ranges not done \(range 2\); re-run their run_range"):
            ranges.finish_ranges(conn, plan, COPY, entry_id)
        assert entry_of(conn, plan, entry_id)["status"] == ledger.FAILED
        done.append(move(conn, plan, rs[1]))
        assert sum(d["rows"] for d in done) == sum(d["inserted"] for d in done) == n
        # a done mark lost (rows committed, mark gone): the range runs again and inserts nothing
        conn.execute(sql.SQL("UPDATE {} SET details = details #- '{{ranges,done,3}}' WHERE id = %s").format(
            ledger.tool_ident(plan, "ledger")), (entry_id,))
        conn.commit()
        relost = move(conn, plan, rs[3])
        assert not relost["skipped"] and relost["inserted"] == 0 and relost["rows"] == done[2]["rows"]
        r = ranges.finish_ranges(conn, plan, COPY, entry_id)
        assert r.path == f"mapped (4 key ranges of {size:,} rows)"
        # the re-run range's rows count as already present, as in a re-run step
        k = relost["rows"]
        assert (r.read, r.inserted, r.quarantined, r.already_present) == (n, n - k, 0, k)
        assert r.source_checksum == r.target_checksum == checksum
        assert table_md5(conn, COPY_TARGET) == digest
        e = entry_of(conn, plan, entry_id)
        assert (e["status"], e["rows_inserted"], e["target_checksum"]) == (ledger.SUCCESS, n - k, checksum)
        assert sorted(e["details"]["ranges"]["done"]) == ["0", "1", "2", "3"]


@pytest.mark.engine
def test_a_range_killed_mid_insert_is_retried_and_a_later_run_resumes(make_db, template_4a, tmp_path):
    checksum, digest, n = unbatched(make_db, template_4a)
    size = n // 4 + 1
    plan = plan_with(tmp_path, {COPY: size})
    dsn = make_db(template=template_4a.name)
    with psycopg.connect(dsn) as conn:
        rs, _ = ranges.plan_ranges(conn, plan, COPY, run_id="t-a", user=USER)
        entry_id = rs[0]["entry"]
        first = move(conn, plan, rs[0], "t-a")
    # a worker killed mid-range: its insert waits on a lock, then its backend is terminated
    errors, pids = [], []

    def worker():
        try:
            with psycopg.connect(dsn) as c:
                pids.append(c.info.backend_pid)
                move(c, plan, rs[1], "t-a")
        except Exception as exc:  # the killed connection; asserted below
            errors.append(exc)

    with psycopg.connect(dsn) as blocker:
        blocker.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(sql.Identifier(*COPY_TARGET.split("."))))
        thread = threading.Thread(target=worker)
        thread.start()
        with psycopg.connect(dsn, autocommit=True) as watch:
            while thread.is_alive() and not watch.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = %s::regclass "
                    "AND pid = ANY(%s))", (COPY_TARGET, pids)).fetchone()[0]:
                time.sleep(0.05)
            watch.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
        thread.join(timeout=60)
        blocker.rollback()
    assert errors and isinstance(errors[0], psycopg.OperationalError), errors
    with psycopg.connect(dsn) as conn:
        # the killed range left nothing: only range 1's rows are in, only range 1 is done
        assert conn.execute(sql.SQL("SELECT count(*) FROM raw_data.sbr_raw_html")).fetchone()[0] == first["rows"]
        assert list(entry_of(conn, plan, entry_id)["details"]["ranges"]["done"]) == ["0"]
        retried = move(conn, plan, rs[1], "t-a")  # the task's retry
        assert retried["inserted"] == retried["rows"] == size
        # run a stops there (its other ranges never ran); run b resumes it
        with pytest.raises(StepFailed, match=r"2 of 4 key ranges not done \(range 3, 4\)"):
            ranges.finish_ranges(conn, plan, COPY, entry_id)
        rs_b, line = ranges.plan_ranges(conn, plan, COPY, run_id="t-b", user=USER)
        assert line.endswith("; resuming run t-a: 2 range(s) already done")
        assert [(r["lo"], r["hi"]) for r in rs_b] == [(r["lo"], r["hi"]) for r in rs]
        moved = [move(conn, plan, r, "t-b") for r in rs_b]
        assert [m["skipped"] for m in moved] == [True, True, False, False]
        r = ranges.finish_ranges(conn, plan, COPY, rs_b[0]["entry"])
        assert r.path == f"mapped (4 key ranges of {size:,} rows, 2 done by run t-a)"
        assert (r.read, r.inserted, r.quarantined) == (n, n, 0) and r.target_checksum == checksum
        assert table_md5(conn, COPY_TARGET) == digest


@pytest.mark.engine
def test_a_small_source_is_one_range_the_ordinary_step(make_db, template_4a, tmp_path):
    checksum, digest, n = unbatched(make_db, template_4a)
    plan = plan_with(tmp_path, {COPY: n})  # not bigger than one range
    with psycopg.connect(make_db(template=template_4a.name)) as conn:
        rs, line = ranges.plan_ranges(conn, plan, COPY, run_id="t-one", user=USER)
        assert len(rs) == 1 and "one range" in line
        assert move(conn, plan, rs[0], "t-one")["inserted"] == n
        r = ranges.finish_ranges(conn, plan, COPY, rs[0]["entry"])
        assert r.path == "mapped (1 range: bulk load)" and r.target_checksum == checksum
        assert table_md5(conn, COPY_TARGET) == digest


# ------------------------------------------------------------------ the DAG
def test_4b_dag_maps_a_big_step_over_key_ranges(db_4a, template_4b, run_dag, airflow_dags, tmp_path, monkeypatch):
    """One 4B run with batch_rows on public.sbr_parsed_games (19,436 rows at scale 1, 5,000 a range)
    and the step graph: the step is plan_ranges -> run_range x4 -> finish, wired into the graph."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    plan = plan_with(tmp_path, {BIG: 5000})
    monkeypatch.setenv("CONSOLIDATION_PLAN", str(plan.path))
    with psycopg.connect(db_4a) as conn:
        # 4A's DDL does not depend on batch_rows: the stage's 4A, its gate recorded for this plan
        ledger.record(conn, plan, status=ledger.SUCCESS, run_id="t-4a", phase="4A", kind="gate", name="gate_4A",
                      details={"plan_sha256": plan.sha256})
        conn.commit()
        assert api.step_graph(conn, plan, written_by="test").ok
    bag = DagBag(str(DAG_FILE))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags[DAG_ID]
    group = "public.copy__public__sbr_parsed_games"
    assert dag.get_task(f"{group}.plan_ranges").upstream_task_ids == {"public.copy__public__sbr_raw_html"}
    assert dag.get_task(f"{group}.finish").upstream_task_ids == {f"{group}.plan_ranges", f"{group}.run_range"}
    assert f"{group}.finish" in dag.get_task("gate_4B").upstream_task_ids
    # the steps the graph makes wait for parsed games (none in this plan) would wait for finish
    waiting = {name for name, ups in step_graph.read(plan)[0].upstream.items() if BIG in ups}
    assert {t.task_id.rsplit(".", 1)[-1] for t in dag.get_task(f"{group}.finish").downstream_list} == \
        {"gate_4B"} | waiting

    assert run_dag(DAG_ID, db_4a, dags={DAG_ID: dag}) == "success"
    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.id.desc())).first()
        tis = session.execute(select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state,
                                     TaskInstance.rendered_map_index)
                              .where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run.run_id)).all()
    mapped = sorted((m, str(getattr(s, "value", s)), label) for t, m, s, label in tis if t == f"{group}.run_range")
    assert [(m, s) for m, s, _ in mapped] == [(i, "success") for i in range(4)]
    assert mapped[0][2].startswith("(-inf, ") and mapped[-1][2].endswith(", +inf]")
    states = {t: str(getattr(s, "value", s)) for t, m, s, _ in tis if m == -1}
    assert states["gate_4B"] == states[f"{group}.finish"] == "success"
    with psycopg.connect(db_4a) as conn:
        (e,) = [r for r in ledger.rows(conn, plan, sql.SQL("kind = 'step' AND name = {}").format(sql.Literal(BIG)))]
        assert e["status"] == ledger.SUCCESS and e["details"]["path"] == "mapped (4 key ranges of 5,000 rows)"
        assert e["rows_inserted"] == 19436 and e["source_checksum"] == e["target_checksum"]
        assert len({d["run_id"] for d in e["details"]["ranges"]["done"].values()}) == 1
    # exactly the rows of the engine's 4B stage (every step, the mapped one included)
    assert snapshot(db_4a, PLAN.consolidated_schemas) == snapshot(read_only(template_4b.dsn), PLAN.consolidated_schemas)
