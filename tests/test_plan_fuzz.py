"""Broken and hostile plan files: each is refused by `plan`, `inventory`, `sql --phase 4a/4b` in ONE
line naming the file, the entry and the fix, exit code 1, no traceback, no hang; the destructive
ones (SQL after a view's SELECT, a quoted 'false' for drop_schema) are refused at `plan` time and
leave the database exactly as it was; 4A refuses what the database refuses before its first write."""
from __future__ import annotations

import copy
import signal
from contextlib import contextmanager

import psycopg
import pytest
import yaml

from consolidation.core import config

COMMANDS = (("plan",), ("inventory",), ("sql", "--phase", "4a"), ("sql", "--phase", "4b"))


def seed() -> dict:
    with open(config.DEFAULT_PLAN, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@contextmanager
def deadline(seconds: int, what: str):
    def hung(*_):
        raise AssertionError(f"{what}: still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ the fuzzed set
def _wrong_values(value):
    """Values of the wrong type (or out of range) for what `value` is in the seed plan."""
    if isinstance(value, bool):
        return ["false", 1]
    if isinstance(value, int):
        return [-1, "10", 1.5]
    if isinstance(value, str):
        return [["x"], 12]
    if isinstance(value, dict):
        return [5, [1, 2]]
    if isinstance(value, list):
        return ["x", [{"a": 1}]]
    return []


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list) and path != ("steps",):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


def _set(raw, path, value):
    _get(raw, path[:-1])[path[-1]] = value


# One step of each kind, so every key of every action is mutated (and the list of steps itself).
KINDS = ("public.sbr_raw_html", "action.dim_teams", "splits.games", "tracking.active_strategy_configs",
         "public.test_table")


def fuzzed_plans() -> list[tuple[str, dict]]:
    base = seed()
    out = []
    paths = [p for p in _paths(base) if p and p[0] != "steps"]
    for i, step in enumerate(base["steps"]):
        if step["source"] in KINDS:
            paths += [("steps", i) + p for p in _paths(step)]
    paths.append(("steps",))
    for path in paths:
        values = _wrong_values(_get(base, path))
        if path[-1] in ("default", "value", "else"):  # any single value is fine there
            values = [["x"], {"a": 1}]
        for bad in values:
            if path[-1] == "max_age_hours" and bad == 1.5:  # hours may be fractional
                continue
            raw = copy.deepcopy(base)
            _set(raw, path, bad)
            out.append((f"{'.'.join(map(str, path))}={bad!r}", raw))
    # hostile by design, not by type
    steps = {s["source"]: i for i, s in enumerate(base["steps"])}
    view = steps["backtesting.recent_config_changes"]

    def mutate(label, change):
        raw = copy.deepcopy(base)
        change(raw)
        out.append((label, raw))

    def recreate(definition):
        def change(raw):
            raw["steps"][view].update(view_mode="recreate", definition=definition)
        return change

    mutate("definition with a DROP after it", recreate("SELECT 1 AS x;\nDROP TABLE public.test_table"))
    mutate("definition that is a DROP", recreate("DROP TABLE public.test_table"))
    mutate("definition with a comment swallowing the rest", recreate("SELECT 1 -- x"))
    mutate("definition with an open literal", recreate("SELECT 'x"))
    mutate("drop_schema quoted", lambda r: r["legacy_schemas"]["public"].update(drop_schema="false"))
    mutate("integer schema key", lambda r: r["legacy_schemas"].update({1: {}}))
    mutate("integer column key", lambda r: r["steps"][steps["splits.games"]]["columns"].update({7: "home"}))
    mutate("default mapping", lambda r: r["steps"][steps["splits.games"]]["columns"].update(
        {"data_source": {"from": "source", "default": {"a": 1}}}))
    mutate("cast list", lambda r: r["steps"][steps["splits.games"]]["columns"].update(
        {"external_game_id": {"from": "game_id", "cast": ["bigint"]}}))
    mutate("type with a statement after it", lambda r: r["steps"][steps["action.dim_teams"]]["add_columns"].update(
        {"logo_url": {"type": "text; DROP TABLE public.test_table"}}))
    mutate("negative freshness", lambda r: r["steps"][0].update(freshness={"column": "fetched_at", "max_age_hours": -5}))
    mutate("freshness soon", lambda r: r["steps"][0].update(freshness={"column": "fetched_at", "max_age_hours": "soon"}))
    mutate("name too long", lambda r: r["steps"][0].update(target="raw_data." + "x" * 64))
    mutate("name with a dot", lambda r: r["steps"][0].update(target="raw_data.a.b"))
    mutate("name with NUL", lambda r: r["steps"][0].update(target="raw_data.a\0b"))
    mutate("prefix too long", lambda r: r["tool"].update(prefix="p" * 50))
    mutate("not a mapping", lambda r: r.clear() or r.update({"steps": 1}))
    return out


FUZZED = fuzzed_plans()


def _assert_refused(out, path, what):
    assert out.returncode == 1, (what, out.returncode, out.stdout[-500:], out.stderr[-500:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, (what, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout, what
    assert lines[0].startswith("plan rejected: ") and str(path) in lines[0], (what, lines[0])
    assert out.stdout == "", (what, out.stdout[:300])
    return lines[0]


def test_every_fuzzed_plan_is_refused_in_one_line_by_every_command(tmp_path, legacy_db, cli):
    """A few hundred plans with a wrong type at every key (and the hostile ones): one line each,
    from `plan`, `inventory` and `sql --phase 4a/4b`, and the database is exactly as before."""
    import phase_helpers as ph

    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    assert len(FUZZED) > 150
    messages = {}
    for n, (what, raw) in enumerate(FUZZED):
        path = tmp_path / f"fuzz_{n}.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
        # `plan` reads every one; the commands that also connect read the hostile ones and every
        # tenth of the others (each reads the file the same way; reading YAML is the time here)
        hostile = "=" not in what
        for command in COMMANDS if hostile or n % 10 == 0 else COMMANDS[:1]:
            args = ["plan", "--file", str(path)] if command == ("plan",) else list(command)
            with deadline(30, f"{what}: {' '.join(command)}"):
                out = cli(*args, dsn=legacy_db, env={"CONSOLIDATION_PLAN": str(path)})
            messages[what] = _assert_refused(out, path, f"{what}: {' '.join(command)}")
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before
    assert all(m.count("plan rejected") == 1 for m in messages.values())
    print(f"[fuzz] {len(FUZZED)} plans x {len(COMMANDS)} commands refused in one line each")


@pytest.mark.parametrize("what, fragments", [
    ("drop_schema quoted", ["legacy_schemas.public.drop_schema is text ('false')", "write false"]),
    ("definition with a DROP after it", ["backtesting.recent_config_changes", "definition",
                                         "more than one statement"]),
    ("definition that is a DROP", ["not SELECT"]),
    ("integer schema key", ["legacy_schemas: the key 1 is a number", "quote it"]),
    ("default mapping", ["steps[15] (splits.games).columns.data_source.default is a mapping"]),
    ("cast list", ["columns.external_game_id.cast is a list"]),
    ("type with a statement after it", ["add_columns.logo_url.type", "a PostgreSQL type"]),
    ("negative freshness", ["steps[0] (public.sbr_raw_html).freshness.max_age_hours is -5", "> 0"]),
    ("freshness soon", ["max_age_hours is text ('soon')"]),
    ("name too long", ["steps[0] (public.sbr_raw_html).target", "63 bytes"]),
    ("prefix too long", ["tool.prefix", "at most 45"]),
])
def test_refusals_name_the_entry_and_the_fix(tmp_path, cli, what, fragments):
    raw = dict(FUZZED)[what]
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    line = _assert_refused(cli("plan", "--file", str(path)), path, what)
    for fragment in fragments:
        assert fragment in line, line


def test_destructive_plans_change_nothing_in_any_phase(tmp_path, legacy_db, cli):
    """The DROP-in-definition plan and drop_schema 'false' never reach the database: refused by
    `plan`, by the inventory, by the SQL preview and by 4A's first task."""
    import phase_helpers as ph
    from consolidation.core.plan import PlanError, load_plan

    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    for what in ("definition with a DROP after it", "drop_schema quoted"):
        path = tmp_path / f"{what.replace(' ', '_')}.yaml"
        path.write_text(yaml.safe_dump(dict(FUZZED)[what], sort_keys=False), encoding="utf-8")
        for command in COMMANDS:
            args = ["plan", "--file", str(path)] if command == ("plan",) else list(command)
            _assert_refused(cli(*args, dsn=legacy_db, env={"CONSOLIDATION_PLAN": str(path)}), path, what)
        with pytest.raises(PlanError):
            load_plan(path)
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before
    with psycopg.connect(legacy_db) as conn:
        assert conn.execute("SELECT count(*) FROM public.test_table").fetchone()[0] == 1
        assert conn.execute("SELECT to_regnamespace('public') IS NOT NULL").fetchone()[0]


def _tool_tables(dsn) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'consolidation\\_%' ORDER BY 1")]


@pytest.mark.parametrize("what, change, fragment", [
    ("a cast type the server does not know",
     lambda raw, steps: raw["steps"][steps["splits.games"]]["columns"].update(
         {"external_game_id": {"from": "game_id", "cast": "no_such_type"}}),
     "type 'no_such_type' is not a PostgreSQL type"),
    ("a view definition the server refuses",
     lambda raw, steps: raw["steps"][steps["backtesting.recent_config_changes"]].update(
         view_mode="recreate", definition="SELECT no_such_column FROM analytics.backtest_results"),
     "definition"),
    ("a data-modifying CTE in a view definition",
     lambda raw, steps: raw["steps"][steps["backtesting.recent_config_changes"]].update(
         view_mode="recreate", definition="WITH d AS (DELETE FROM public.test_table RETURNING *) SELECT * FROM d"),
     "definition"),
])
def test_4a_refuses_before_its_first_write(tmp_path, legacy_db, cli, what, change, fragment):
    """What only the database can judge (a type, a definition over the new tables) is judged in
    4A's rehearsal - every DDL in one transaction, rolled back - before anything is written: no
    tool table, no target, no schema appears, and the message is one line naming the step."""
    import phase_helpers as ph
    from consolidation import api
    from consolidation.core.plan import PlanError, load_plan

    raw = seed()
    change(raw, {s["source"]: i for i, s in enumerate(raw["steps"])})
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    plan = load_plan(path)  # the file itself is well-formed
    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    with psycopg.connect(legacy_db) as conn:
        with pytest.raises(PlanError) as err:
            api.extend_prepare(conn, plan, run_id="t", user="test")
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert _tool_tables(legacy_db) == []
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before
    with psycopg.connect(legacy_db) as conn:
        assert conn.execute("SELECT count(*) FROM public.test_table").fetchone()[0] == 1
    out = cli("sql", "--phase", "4a", dsn=legacy_db, env={"CONSOLIDATION_PLAN": str(path)})
    assert "Traceback" not in out.stderr
    if out.returncode:
        _assert_refused(out, path, what)


def test_a_phase_task_refuses_in_one_line_and_4a_writes_nothing(tmp_path, legacy_db, run_dag, monkeypatch, capfd):
    """The 4A DAG run with a plan whose view definition the database refuses (which only the new
    tables let it read: the inventory passes): the run fails at its first writing task, whose
    output ends with the one-line refusal (no traceback), and no target or schema was created."""
    import phase_helpers as ph
    from conftest import task_states

    raw = seed()
    view = next(s for s in raw["steps"] if s["source"] == "backtesting.recent_config_changes")
    view.update(view_mode="recreate", definition="SELECT no_such_column FROM analytics.backtest_results")
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    before = ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True)
    monkeypatch.setenv("CONSOLIDATION_PLAN", str(path))
    capfd.readouterr()
    assert run_dag("phase4a_schema_extension", legacy_db) == "failed"
    _, states = task_states("phase4a_schema_extension")
    assert states["prepare"] == "failed", states
    out = capfd.readouterr()
    refusals = [line for line in (out.out + out.err).splitlines() if "plan rejected: " in line]
    assert refusals and "backtesting.recent_config_changes" in refusals[0] and "definition" in refusals[0], refusals
    assert "Traceback" not in out.out + out.err
    assert ph.snapshot(legacy_db, ph.EVERYTHING, kinds=True) == before
