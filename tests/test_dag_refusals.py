"""A plan refused at DAG-parse time, and a refusal inside a task, end in one readable line.

- Every DAG file still parses when the plan file is broken (no import error with a traceback in
  six files): the DAG shows `plan rejected: ...` on top of its description and docs, and a run
  fails at its first task with that line.
- A task whose engine call refuses (a blocked inventory) fails with the refusal's lines in its
  log and no traceback; the database is unchanged.
"""
from __future__ import annotations

import os

import psycopg
import pytest
import yaml

from conftest import REPO_ROOT


def _bag(plan_path: str):
    from airflow.dag_processing.dagbag import DagBag

    saved = os.environ.get("CONSOLIDATION_PLAN")
    os.environ["CONSOLIDATION_PLAN"] = plan_path
    try:
        return DagBag(str(REPO_ROOT / "dags"))
    finally:
        if saved is None:
            os.environ.pop("CONSOLIDATION_PLAN", None)
        else:
            os.environ["CONSOLIDATION_PLAN"] = saved


@pytest.fixture(scope="module")
def broken_plan(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("plans") / "broken.yaml"
    path.write_text("name: broken\nsteps: [\n", encoding="utf-8")  # not YAML at all
    return str(path)


def test_every_dag_parses_and_names_the_refused_plan(broken_plan):
    bag = _bag(broken_plan)
    assert bag.import_errors == {}
    planned = ("phase4a_schema_extension", "phase4b_data_migration", "phase4c_service_updates",
               "phase4d_legacy_cleanup", "consolidation_nightly_validation")
    for dag_id in planned:
        dag = bag.dags[dag_id]
        assert dag.description.startswith(f"plan rejected: plan file {broken_plan} is not valid YAML"), dag.description
        assert "plan rejected" in dag.doc_md and "plan-rejected" in dag.tags
        # nothing of a plan: no schema groups, no steps
        assert not [g for g in dag.task_group.children if g in ("public", "action", "splits")]
    assert "phase4_rollback" in bag.dags  # the rollback reads its plan at run time only


def test_a_run_of_a_refused_plan_fails_at_its_first_task_in_one_line(broken_plan, airflow_dags, run_dag,
                                                                      legacy_db, capfd):
    from conftest import task_states
    import phase_helpers as ph

    bag = _bag(broken_plan)
    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    capfd.readouterr()
    os.environ["CONSOLIDATION_PLAN"] = broken_plan
    try:
        assert run_dag("phase4a_schema_extension", legacy_db, dags=bag.dags) == "failed"
    finally:
        os.environ.pop("CONSOLIDATION_PLAN", None)
    _, states = task_states("phase4a_schema_extension")
    assert states["acquire_lease"] == "failed", states
    out = capfd.readouterr()
    text = out.out + out.err
    lines = [line for line in text.splitlines() if line.startswith("plan rejected: ")]
    assert lines and broken_plan in lines[0], text[-2000:]
    assert "Traceback" not in text
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before


def test_a_blocked_inventory_fails_its_task_without_a_traceback(tmp_path, airflow_dags, run_dag, legacy_db, capfd):
    """A plan whose step reads a table the database does not have: `plan` accepts it (it is
    well-formed), the 4A run's inventory blocks, naming the table, in lines and no traceback."""
    from conftest import task_states
    import phase_helpers as ph

    raw = yaml.safe_load((REPO_ROOT / "include" / "plans" / "phase4.yaml").read_text(encoding="utf-8"))
    step = next(s for s in raw["steps"] if s["source"] == "public.test_table")
    step["source"] = "public.no_such_table_here"
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with psycopg.connect(legacy_db) as conn:
        conn.execute("SELECT 1")
    bag = _bag(str(path))
    assert bag.import_errors == {}
    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    capfd.readouterr()
    os.environ["CONSOLIDATION_PLAN"] = str(path)
    try:
        assert run_dag("phase4a_schema_extension", legacy_db, dags=bag.dags) == "failed"
    finally:
        os.environ.pop("CONSOLIDATION_PLAN", None)
    _, states = task_states("phase4a_schema_extension")
    assert states["inventory"] == "failed" and states.get("prepare") != "success", states
    text = "".join(capfd.readouterr())
    assert "inventory found" in text and "no_such_table_here" in text, text[-2000:]
    assert "Traceback" not in text
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before
