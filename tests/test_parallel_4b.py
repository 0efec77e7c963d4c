"""Parallel 4B: the step graph 4A writes, the 4B DAG built from it at parse time, and steps
running side by side without deadlocking.

- 4A's finalize writes the graph beside the plan (keyed by its sha256); `consolidation plan
  --graph` writes the same from the catalog. Steps into one target always wait for each other.
- Parsed with the graph, each step task waits only for its upstream steps (a child target's
  step for its parent's, nothing between unrelated steps), the gate after every step, at most
  CONSOLIDATION_4B_PARALLEL tasks at once; one run of that DAG migrates exactly the rows of
  the 4B stage and its gate passes (test_phase4ab runs it). Without a graph (or for another
  plan) it is the old chain.
- Two bulk steps whose targets reference the same two tables (in opposite constraint order,
  the textbook deadlock) run at once from two connections: both wait, both load, no deadlock.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from consolidation import api
from consolidation.core.runs import step_graph
from consolidation.core.session import load_specs
from consolidation.phases import migrate

from phase_helpers import DAG_4B as DAG_ID, PLAN, USER, parse_4b, q, steps_4b, table_md5


def _task(dag, step: str):
    return next(t for t in dag.tasks if t.task_id.rsplit(".", 1)[-1] == step)


def _ancestors(dag, step: str) -> set[str]:
    return {t.task_id.rsplit(".", 1)[-1] for t in _task(dag, step).get_flat_relatives(upstream=True)}


# ------------------------------------------------------------------ the graph file
@pytest.mark.unit
def test_graph_reader_refuses_what_it_cannot_use(state_dir, monkeypatch):
    names = [s.name for s in PLAN.migrating_steps()]
    graph, why = step_graph.read(PLAN)
    assert graph is None and "no step graph for this plan" in why and PLAN.sha256[:12] in why
    upstream = {n: [] for n in names} | {names[1]: [names[0]]}
    path = step_graph.write(PLAN, upstream, {}, names, written_by="test")
    assert path == state_dir / "plans" / f"{PLAN.sha256}.graph.json"
    graph, why = step_graph.read(PLAN)
    assert why == "" and graph.upstream[names[1]] == [names[0]] and graph.edges() == 1
    # another plan (one byte changed: another sha256) finds no graph
    assert step_graph.read(replace(PLAN, sha256="0" * 64))[0] is None
    # a cycle, a step the plan lacks, a broken file: each the fallback, with its reason
    doc = json.loads(path.read_text())
    doc["steps"][names[0]]["upstream"] = [names[1]]
    path.write_text(json.dumps(doc))
    assert "a cycle" in step_graph.read(PLAN)[1]
    doc["steps"][names[0]]["upstream"] = ["no_such_step"]
    path.write_text(json.dumps(doc))
    assert "does not match the plan's steps" in step_graph.read(PLAN)[1]
    path.write_text("{")
    assert "cannot be read" in step_graph.read(PLAN)[1]
    # the setting
    assert step_graph.parallel() == 2
    monkeypatch.setenv("CONSOLIDATION_4B_PARALLEL", "3")
    assert step_graph.parallel() == 3
    monkeypatch.setenv("CONSOLIDATION_4B_PARALLEL", "many")
    with pytest.raises(ValueError, match="CONSOLIDATION_4B_PARALLEL='many' is not a whole number"):
        step_graph.parallel()


def test_step_graph_from_the_catalog(ro_4b, template_4a, cli, state_dir):
    """4A's finalize wrote the graph (the stage's state folder); `plan --graph` writes the same
    from the catalog. Steps into one target serialize (two unions into strategy_configurations),
    a child target's step waits for its parent's, the graph is acyclic and covers every step."""
    written_by_4a = json.loads((template_4a.state / "plans" / f"{PLAN.sha256}.graph.json").read_text())
    assert written_by_4a["written_by"].startswith("4A finalize, run setup-4a")
    result = cli("plan", "--graph", dsn=ro_4b)
    assert result.returncode == 0, result.stderr
    path = state_dir / "plans" / f"{PLAN.sha256}.graph.json"
    assert f"step graph written to {path}: 28 steps" in result.stdout
    graph, why = step_graph.read(PLAN)
    assert why == "" and graph.upstream == {k: v["upstream"] for k, v in written_by_4a["steps"].items()}
    up = graph.upstream
    assert up["union__backtesting__strategy_configurations"] == ["union__tracking__active_strategy_configs"]
    assert up["copy__public__sbr_parsed_games"] == ["copy__public__sbr_raw_html"]  # foreign key to its target
    assert up["copy__tracking__pre_game_recommendations"] == ["copy__public__game_outcomes"]  # across schemas
    assert up["merge__action__teams_formatted"] == ["merge__action__dim_teams"]
    assert up["copy__splits__games"] == [] and up["copy__backtesting__strategy_alerts"] == []
    assert graph.targets["copy__public__sbr_parsed_games"] == "raw_data.sbr_parsed_games"
    # the same as order_steps says, every edge kept (no cycle in this plan)
    with psycopg.connect(ro_4b) as conn:
        _, specs = load_specs(conn, PLAN)
    assert {k: sorted(v) for k, v in up.items()} == migrate.order_steps(PLAN, specs)


# ------------------------------------------------------------------ the DAG, parsed with and without it
def test_4b_dag_without_a_graph_is_the_chain_in_plan_order(state_dir):
    dag = parse_4b()[DAG_ID]
    order = steps_4b()
    assert sorted(_task(dag, order[0]).upstream_task_ids) == ["require_4A_gate"]
    for before, step in zip(order, order[1:]):
        assert [t.rsplit(".", 1)[-1] for t in _task(dag, step).upstream_task_ids] == [before], step
    assert [t.rsplit(".", 1)[-1] for t in dag.get_task("gate_4B").upstream_task_ids] == [order[-1]]
    assert "runs its steps one after another, in plan order**: no step graph for this plan" in dag.doc_md


def test_4b_dag_parsed_with_the_graph_waits_only_for_upstream_steps(db_4a, cli):
    assert cli("plan", "--graph", dsn=db_4a).returncode == 0
    dag = parse_4b()[DAG_ID]
    assert dag.max_active_tasks == 2  # CONSOLIDATION_4B_PARALLEL's default
    assert "runs its steps by the step graph" in dag.doc_md and "at most 2 tasks at a time" in dag.doc_md
    # still one TaskGroup per legacy schema
    assert _task(dag, "copy__tracking__pre_game_recommendations").task_id == \
        "tracking.copy__tracking__pre_game_recommendations"
    # a child target's step waits for its parent's (here across TaskGroups), and only for it
    assert _task(dag, "copy__tracking__pre_game_recommendations").upstream_task_ids == \
        {"public.copy__public__game_outcomes"}
    assert _task(dag, "copy__public__sbr_parsed_games").upstream_task_ids == {"public.copy__public__sbr_raw_html"}
    assert _task(dag, "union__backtesting__strategy_configurations").upstream_task_ids == \
        {"tracking.union__tracking__active_strategy_configs"}
    # unrelated steps: no path between them; a step that waits for none starts after the guard
    assert "copy__splits__games" not in _ancestors(dag, "copy__backtesting__strategy_alerts")
    assert "copy__backtesting__strategy_alerts" not in _ancestors(dag, "copy__splits__games")
    assert _task(dag, "copy__splits__games").upstream_task_ids == {"require_4A_gate"}
    # the gate after every step, the lease around everything
    assert set(steps_4b()) <= _ancestors(dag, "gate_4B")
    assert dag.get_task("release_lease").upstream_task_ids == {"acquire_lease", "gate_4B"}

    # one run of it migrates exactly the rows of the engine's 4B stage, steps side by side:
    # test_phase4ab.test_4a_then_4b_dags_migrate_exactly_what_the_engine_does runs it so


# ------------------------------------------------------------------ locks: side by side, no deadlock
A, B = "copy__tracking__strategy_integration_log", "copy__backtesting__orchestrator_update_triggers"


def _target(step: str) -> str:
    return next(s.target for s in PLAN.steps if s.name == step)


def _source(step: str) -> str:
    return next(s.source for s in PLAN.steps if s.name == step)


def test_two_bulk_steps_referencing_the_same_tables_wait_and_never_deadlock(db_4a):
    """Both targets get foreign keys to the same two tables, in opposite constraint-name order
    (the order the bulk load drops them in). A third session holds both tables, so both steps
    queue on them; once it lets go, both must load (bulk path: a deadlock would have sent the
    victim down the per-row path), with equal checksums and their foreign keys back."""
    with psycopg.connect(db_4a, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA lockprobe")
        for parent in ("p1", "p2"):
            conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY)").format(sql.Identifier("lockprobe", parent)))
            conn.execute(sql.SQL("INSERT INTO {} SELECT id FROM {} UNION SELECT id FROM {}").format(
                sql.Identifier("lockprobe", parent), q(_source(A)), q(_source(B))))
        for step, first, second in ((A, "p1", "p2"), (B, "p2", "p1")):
            for name, parent in (("a_parent", first), ("b_parent", second)):
                conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY (id) REFERENCES {} (id)").format(
                    q(_target(step)), sql.Identifier(name), sql.Identifier("lockprobe", parent)))
        parents = [r[0] for r in conn.execute("SELECT oid FROM pg_class WHERE relnamespace = 'lockprobe'::regnamespace "
                                              "AND relkind = 'r'").fetchall()]

    errors = {}
    outcomes = {}

    def run_step(step):
        try:
            with psycopg.connect(db_4a) as conn:
                outcomes[step] = api.run_step(conn, PLAN, step, run_id="parallel", user=USER)
        except Exception as exc:  # reported by the assertion below
            errors[step] = exc

    with psycopg.connect(db_4a) as blocker:
        blocker.execute("LOCK TABLE lockprobe.p1, lockprobe.p2 IN ACCESS SHARE MODE")
        threads = [threading.Thread(target=run_step, args=(s,)) for s in (A, B)]
        for t in threads:
            t.start()
        with psycopg.connect(db_4a, autocommit=True) as watch:  # until both steps queue on those tables
            while watch.execute("SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND relation = ANY(%s)",
                                (parents,)).fetchone()[0] < 2 and all(t.is_alive() for t in threads):
                time.sleep(0.05)
        blocker.commit()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    for step in (A, B):
        r = outcomes[step].data
        assert outcomes[step].ok and r.path == "bulk load", (step, r.path)
        assert r.quarantined == 0 and r.read == r.inserted > 0
        assert r.source_checksum == r.target_checksum
    with psycopg.connect(db_4a) as conn:
        for step in (A, B):
            flows = [f for f in load_specs(conn, PLAN)[1][_target(step)].flows[step] if f.source and not f.cast]
            assert table_md5(conn, _target(step), [f.target for f in flows]) == \
                table_md5(conn, _source(step), [f.source for f in flows])  # test-side: every row, every value
            assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f' "
                                "AND confrelid::regclass::text LIKE 'lockprobe.%%'", (_target(step),)).fetchone()[0] == 2
