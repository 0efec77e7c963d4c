"""Functions, triggers, types and leftover relations of the legacy schemas (the plan's `objects:`,
checks.legacy_objects, phases.objects.recreate): listed by the inventory with what the plan says,
recreated by 4A, carried with a copied table (the trigger fires on its target after 4D), dropped
with their schema in 4D; anything unplanned blocks only the drop of its schema, named."""
from __future__ import annotations

import psycopg
import pytest
import yaml

from consolidation.dev import realapp

from phase_helpers import engine_4a, engine_4b

PLAN_FILE = str(realapp.PLAN_FILE)
UNPLANNED = ("wagers.bets_export_2023 (table) is not in the plan: add `objects: - {name: wagers.bets_export_2023, "
             "drop: reason}` or `recreate: schema`")


def _raw() -> dict:
    return yaml.safe_load(realapp.PLAN_FILE.read_text(encoding="utf-8"))


def _without_leftover():
    from consolidation.core.plan import parse_plan

    raw = _raw()
    raw["objects"] = [o for o in raw["objects"] if o["name"] != "wagers.bets_export_2023"]
    return parse_plan(raw)


@pytest.mark.unit
@pytest.mark.parametrize("entry, message", [
    ({"name": "scraper.f", "recreate": "ingest", "drop": "x"}, "exactly one of `recreate` or `drop`"),
    ({"name": "scraper.f"}, "exactly one of `recreate` or `drop`"),
    ({"name": "scraper.f", "recreate": "elsewhere"}, "'elsewhere' is not a consolidated schema"),
    ({"name": "nowhere.f", "drop": "x"}, "'nowhere' is not a legacy schema"),
    ({"name": "scraper.games", "drop": "x"}, "step 2's table"),
    ({"name": "f", "drop": "x"}, "write schema.object in a legacy schema"),
    ({"name": "scraper.f", "drop": "x", "kind": "function"}, "unknown key(s) kind"),
])
def test_objects_entries_are_validated(entry, message):
    from consolidation.core.plan import PlanError, parse_plan

    raw = _raw()
    raw["objects"] = [entry]
    with pytest.raises(PlanError) as err:
        parse_plan(raw)
    assert message in str(err.value), str(err.value)
    raw["objects"] = [{"name": "scraper.f", "drop": "x"}, {"name": "scraper.f", "recreate": "ingest"}]
    with pytest.raises(PlanError, match=r"already listed as objects\[0\]"):
        parse_plan(raw)


def test_realapp_trigger_carried_leftover_dropped_unplanned_blocks_only_its_schema(make_db, tmp_path, monkeypatch):
    """The whole realapp fixture: the trigger's function recreated in ingest, the trigger carried to
    ingest.scrape_runs (and firing there after 4D), the leftover table dropped with wagers, backed up;
    without its plan entry the leftover is a warning that refuses only the drop of wagers."""
    from consolidation.checks.inventory import take_inventory
    from consolidation.core.plan import load_plan
    from consolidation.phases import backup, cleanup
    from consolidation.phases.hitl.preview import drop_preview

    monkeypatch.setenv("CONSOLIDATION_PLAN", PLAN_FILE)
    plan, partial = load_plan(PLAN_FILE), _without_leftover()
    dsn = make_db()
    realapp.build(dsn)
    with psycopg.connect(dsn) as conn:
        inv = take_inventory(conn, plan)
        assert inv.ok, [f.message for f in inv.blocking]
        says = {o["object"]: (o["kind"], o["plan"]) for o in inv.legacy_objects}
        assert says == {"scraper.set_scrape_duration()": ("function", "recreate in ingest"),
                        "scraper.scrape_runs.scrape_runs_duration": ("trigger", "carried to ingest.scrape_runs"),
                        "wagers.bets_export_2023": ("table", "drop: one-off export of 2023's bets; the backup keeps it")}
        assert not [f for f in inv.findings if f.code == "unplanned_object"]
        # without the entry: a warning naming the object and what to add, nothing blocks 4A-4C
        inv = take_inventory(conn, partial)
        assert inv.ok
        found = [f for f in inv.findings if f.code == "unplanned_object"]
        assert [(f.severity, f.object, f.message) for f in found] == [("warning", "wagers.bets_export_2023", UNPLANNED)]
    engine_4a(dsn, plan)  # its gate proves the function recreated and the trigger carried
    engine_4b(dsn, plan)
    with psycopg.connect(dsn) as conn:
        gate = conn.execute("SELECT details::text FROM ops.consolidation_ledger WHERE kind = 'gate' AND name = 'gate_4A' "
                            "ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert "object_recreated" in gate and "trigger_carried" in gate
        assert conn.execute("SELECT tgfoid::regprocedure::text FROM pg_trigger WHERE tgrelid = 'ingest.scrape_runs'::regclass "
                            "AND tgname = 'scrape_runs_duration'").fetchone() == ("ingest.set_scrape_duration()",)
        preview = drop_preview(conn, plan)
        assert 'DROP TABLE "wagers"."bets_export_2023" RESTRICT;  -- 25 rows' in preview["wagers"]["statements"]
        assert 'DROP FUNCTION "scraper"."set_scrape_duration"() RESTRICT;  -- plan: objects' in preview["scraper"]["statements"]
        assert drop_preview(conn, partial)["wagers"]["blockers"] == [UNPLANNED]

    backup.take_backup(dsn, plan, tmp_path / "backup", run_id="objects", user="test")
    with psycopg.connect(dsn) as conn:
        rows = backup.latest_backups(conn, plan, "objects")
        assert rows["wagers"]["details"]["tables"]["wagers.bets_export_2023"]["rows"] == 25
        with pytest.raises(cleanup.CleanupBlocked) as blocked:
            cleanup.drop_schema_objects(conn, partial, "wagers", run_id="objects", user="test", backup_row=rows["wagers"])
        assert UNPLANNED in str(blocked.value) and "schema wagers is not dropped" in str(blocked.value)
        assert conn.execute("SELECT count(*) FROM wagers.bets_export_2023").fetchone()[0] == 25
        assert conn.execute("SELECT count(*) FROM wagers.bets").fetchone()[0] == 300
        for schema in plan.legacy_schemas:
            cleanup.drop_schema_objects(conn, plan, schema, run_id="objects", user="test", backup_row=rows[schema])
        assert conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname IN ('scraper', 'wagers')").fetchone()[0] == 0
        dropped = {r[0] for r in conn.execute("SELECT name FROM ops.consolidation_ledger WHERE phase = '4D' AND kind = 'ddl'")}
        assert {"drop_table:wagers.bets_export_2023", "drop_object:scraper.set_scrape_duration()"} <= dropped
    with psycopg.connect(dsn) as conn:  # the application writes; the carried trigger computes duration_s
        conn.execute("SET ROLE realapp_writer")
        conn.execute("INSERT INTO ingest.scrape_runs (started_at, finished_at, duration_s) "
                     "VALUES ('2024-05-01 10:00+00', '2024-05-01 10:02:05+00', -1)")
        assert conn.execute("SELECT duration_s FROM ingest.scrape_runs WHERE started_at = '2024-05-01 10:00+00'"
                            ).fetchone() == (125,)


def test_types_and_functions_recreated_refused_and_dropped(db_dsn):
    """An enum, a domain and a function recreated in the consolidated schema from the catalog; a
    function whose body names the legacy schema is refused, naming it; 4D's drops run in order."""
    from consolidation.checks.legacy_objects import legacy_objects
    from consolidation.core.plan import PlanError, parse_plan
    from consolidation.phases.objects import recreate

    with psycopg.connect(db_dsn) as conn:
        conn.execute("""
            CREATE SCHEMA lg; CREATE SCHEMA cs;
            CREATE TYPE lg.mood AS ENUM ('sad', 'ok', 'happy');
            CREATE DOMAIN lg.stake AS numeric(8,2) DEFAULT 1 NOT NULL CONSTRAINT stake_positive CHECK (VALUE > 0);
            CREATE FUNCTION lg.double(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT x * 2';
            CREATE FUNCTION lg.count_t() RETURNS bigint LANGUAGE plpgsql AS $$BEGIN RETURN (SELECT count(*) FROM lg.t); END$$;
            CREATE TABLE lg.t (id integer PRIMARY KEY);""")
        raw = {"consolidated_schemas": {"cs": "", "ops": ""}, "legacy_schemas": {"lg": {}}, "tool": {"schema": "ops"},
               "steps": [{"source": "lg.t", "action": "copy", "target": "cs.t"}],
               "objects": [{"name": "lg.mood", "recreate": "cs"}, {"name": "lg.stake", "recreate": "cs"},
                           {"name": "lg.double", "recreate": "cs"}, {"name": "lg.count_t", "recreate": "cs"}]}
        objs = {o.qualified: o for o in legacy_objects(conn, parse_plan(raw))}
        assert "names a legacy schema (lg)" in objs["lg.count_t"].problem
        assert "give the legacy one `drop: reason`" in objs["lg.count_t"].problem
        with pytest.raises(PlanError, match="lg.count_t"):
            recreate.ddl(conn, parse_plan(raw))
        raw["objects"][3] = {"name": "lg.count_t", "drop": "rewritten by the application"}
        plan = parse_plan(raw)
        for _, _, stmts, _ in recreate.ddl(conn, plan):
            for stmt in stmts:
                conn.execute(stmt)
        assert conn.execute("SELECT enum_range(NULL::cs.mood)::text, cs.double(21), 5::cs.stake").fetchone() == (
            "{sad,ok,happy}", 42, 5)
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute("SELECT 0::cs.stake")
        assert recreate.ddl(conn, plan) == []  # converged: the copies are there
        conn.execute("DROP TABLE lg.t")
        for _, stmt in recreate.drop_statements(conn, plan, "lg"):
            conn.execute(stmt)
        conn.execute("DROP SCHEMA lg RESTRICT")  # nothing left behind
