"""Legacy foreign keys onto targets that existed before the plan, view targets, volatile
expressions (issue 10), on the realapp fixture (dev/realapp.py): its scraper.odds_raw.game_id
references scraper.games(id); both targets existed before the plan (ingest.odds_snapshots,
betting.games, whose source_game_ref is UNIQUE).

The rule: 4A adds such a key NOT VALID (the target's own rows are not checked yet, every row
inserted from then on is), 4B validates it once the step has loaded, and the 4B gate fails
naming the constraint and the rows' keys when the target's rows violate it. A key that cannot be
carried fails the 4A gate (step, constraint, reason) unless the step drops it with a reason.
"""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
import yaml

import phase_helpers as ph
from consolidation.checks.gx import GateFailed
from consolidation.checks.inventory import take_inventory
from consolidation.core.plan import PlanError, load_plan
from consolidation.core.session import load_specs
from consolidation.dev import realapp
from consolidation.phases import extend, report

pytestmark = pytest.mark.engine

PLAN = load_plan(str(realapp.PLAN_FILE))
FK = "odds_raw_game_id_fkey"
STEP = "copy__scraper__odds_raw"


@pytest.fixture(scope="module")
def realapp_db(make_session_db) -> str:
    """A session database holding the realapp fixture (no trigger, no leftover table); clone it."""
    from conftest import dbname_of

    dsn = make_session_db()
    realapp.build(dsn, trigger=False, unplanned=False)
    return dbname_of(dsn)


def plan_variant(tmp_path: Path, edit) -> object:
    """The realapp plan with `edit(raw)` applied to its YAML, loaded from a copy in tmp_path."""
    raw = yaml.safe_load(realapp.PLAN_FILE.read_text(encoding="utf-8"))
    raw.pop("smoke_dir", None)
    edit(raw)
    path = tmp_path / "realapp.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_plan(str(path))


def step_entry(raw: dict, source: str) -> dict:
    return next(s for s in raw["steps"] if s["source"] == source)


def fk_state(conn) -> list[tuple]:
    return conn.execute(
        "SELECT conname, convalidated, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = 'ingest.odds_snapshots'::regclass AND contype = 'f'").fetchall()


def test_fk_onto_preexisting_targets_is_carried_not_valid_then_validated_by_4b(make_db, realapp_db):
    dsn = make_db(template=realapp_db)
    ph.engine_4a(dsn, PLAN)  # its gate (foreign_key_carried included) must pass
    with psycopg.connect(dsn) as conn:
        assert fk_state(conn) == [("games_game_ref_fkey", False,
                                   "FOREIGN KEY (game_ref) REFERENCES betting.games(source_game_ref) NOT VALID")]
        gate = conn.execute("SELECT details FROM ops.consolidation_ledger WHERE kind = 'gate' AND name = 'gate_4A' "
                            "ORDER BY id DESC LIMIT 1").fetchone()[0]
        assert gate["failed"] == 0
    assert ph.engine_4b(dsn, PLAN) == {}  # gate_4B (foreign_key_validated) passes
    with psycopg.connect(dsn) as conn:
        assert fk_state(conn) == [("games_game_ref_fkey", True,
                                   "FOREIGN KEY (game_ref) REFERENCES betting.games(source_game_ref)")]
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO ingest.odds_snapshots (game_ref, book, scraped_at) VALUES ('nope', 'x', now())")


def test_preexisting_rows_violating_a_carried_fk_fail_the_4b_gate_naming_constraint_and_rows(make_db, realapp_db):
    dsn = make_db(template=realapp_db)
    with psycopg.connect(dsn) as conn:  # one of the application's own rows points at no game
        bad = conn.execute("INSERT INTO ingest.odds_snapshots (game_ref, book, scraped_at) "
                           "VALUES ('app-9999', 'pinnacle', now()) RETURNING snapshot_id").fetchone()[0]
    ph.engine_4a(dsn, PLAN)  # NOT VALID: 4A passes, the application's rows are not checked yet
    assert ph.engine_4b(dsn, PLAN, gate=False) == {}
    with psycopg.connect(dsn) as conn:
        assert fk_state(conn)[0][1] is False  # VALIDATE found the row: the key stays NOT VALID
        path = conn.execute("SELECT details->>'path' FROM ops.consolidation_ledger WHERE kind = 'step' AND name = %s "
                            "ORDER BY id DESC LIMIT 1", (STEP,)).fetchone()[0]
        assert "games_game_ref_fkey of ingest.odds_snapshots stays NOT VALID" in path
    with pytest.raises(GateFailed) as failed:
        ph.run_gate(dsn, "4B", PLAN)
    text = str(failed.value) + repr(getattr(failed.value, "result", ""))
    assert "foreign_key_validated" in text and "games_game_ref_fkey" in text, text
    assert f'"snapshot_id": {bad}' in text and "app-9999" in text, text


def test_fk_that_cannot_be_carried_fails_the_4a_gate_unless_the_plan_drops_it(make_db, realapp_db, tmp_path):
    dsn = make_db(template=realapp_db)
    with psycopg.connect(dsn) as conn:  # the application keeps its game reference as bytes: no key can join
        conn.execute("ALTER TABLE ingest.odds_snapshots ALTER COLUMN game_ref TYPE bytea USING convert_to(game_ref, 'UTF8')")
    with psycopg.connect(dsn) as conn:
        _, specs = load_specs(conn, PLAN)
        [problem] = specs["ingest.odds_snapshots"].foreign_key_problems
        assert problem.constraint == FK and problem.reason.startswith(
            "ingest.odds_snapshots.game_ref is bytea but betting.games.source_game_ref is text; cast it in the plan")
        # and a referenced target without a key on the columns: named too
        conn.execute("ALTER TABLE betting.games DROP CONSTRAINT games_source_game_ref_key")
        _, specs = load_specs(conn, PLAN)
        [problem] = specs["ingest.odds_snapshots"].foreign_key_problems
        assert "betting.games(source_game_ref) has no primary key, unique constraint or unique index" in problem.reason
        conn.rollback()
    with pytest.raises(GateFailed) as failed:
        ph.engine_4a(dsn, PLAN)
    text = str(failed.value) + repr(getattr(failed.value, "result", ""))
    assert "foreign_key_carried" in text and FK in text and "step 3 (scraper.odds_raw)" in text, text

    reason = "games are matched by source_game_ref in the application, which is not unique there"
    dropping = plan_variant(tmp_path, lambda raw: step_entry(raw, "scraper.odds_raw").update(
        drop_foreign_keys={FK: reason}))
    ph.engine_4a(dsn, dropping, run_id="again-4a")  # passes now
    with psycopg.connect(dsn) as conn:
        assert fk_state(conn) == []
        note = conn.execute("SELECT message, details->>'reason' FROM ops.consolidation_ledger WHERE kind = 'ddl' "
                            "AND name = %s", (f"foreign_key_dropped:{FK}",)).fetchone()
        assert note[1] == reason and FK in note[0] and "ingest.odds_snapshots" in note[0]
        preview = "\n".join(f"{h}\n{body}" for h, body in extend.preview(conn, dropping))
        assert "not carried (drop_foreign_keys)" in preview and reason in preview
        markdown = report.render_markdown(report.collect(conn, dropping))
        assert f"| {FK} | foreign key not carried: {reason} |" in markdown, markdown


def test_unknown_constraint_in_drop_foreign_keys_is_refused_naming_it(make_db, realapp_db, tmp_path):
    dsn = make_db(template=realapp_db)
    typo = plan_variant(tmp_path, lambda raw: step_entry(raw, "scraper.odds_raw").update(
        drop_foreign_keys={"odds_raw_game_fkey": "typo"}))
    with psycopg.connect(dsn) as conn:
        inv = take_inventory(conn, typo)
        lines = [f.message for f in inv.blocking if "odds_raw_game_fkey" in f.message]
        assert lines == ["drop_foreign_keys names 'odds_raw_game_fkey', which is no foreign key of scraper.odds_raw "
                         f"(its foreign keys: {FK}); fix the constraint name"], [f.message for f in inv.blocking]
        with pytest.raises(PlanError, match=f"drop_foreign_keys names 'odds_raw_game_fkey'.*its foreign keys: {FK}"):
            load_specs(conn, typo)


def test_a_view_as_target_is_refused_in_one_line_that_says_view(make_db, realapp_db, tmp_path):
    dsn = make_db(template=realapp_db)
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE VIEW betting.wagers_open AS SELECT * FROM betting.wagers WHERE outcome = 'open'")
    to_view = plan_variant(tmp_path, lambda raw: step_entry(raw, "wagers.bets").update(target="betting.wagers_open"))
    with psycopg.connect(dsn) as conn:
        about = [f.message for f in take_inventory(conn, to_view).blocking if "wagers" in f.object]
        assert about == ["target betting.wagers_open is a view, not a table: a copy writes rows into a table; "
                         "name a table (or a new name, which 4A creates) as its target"], about
        with pytest.raises(PlanError, match=r"^step 5 \(wagers.bets\): target betting.wagers_open is a view, not a table"):
            load_specs(conn, to_view)


@pytest.mark.parametrize("expr, called", [
    ("s.stake_cents / 100.0 + random() * 0", "random()"),
    ("s.stake_cents / 100.0 + (SELECT nextval('scraper.odds_raw_id_seq') * 0)", "nextval(regclass)"),
    ("s.stake_cents / 100.0 + extract(epoch FROM clock_timestamp()) * 0", "clock_timestamp()"),
])
def test_volatile_expressions_are_refused_with_step_column_and_why(make_db, realapp_db, tmp_path, expr, called):
    dsn = make_db(template=realapp_db)
    volatile = plan_variant(tmp_path, lambda raw: step_entry(raw, "wagers.bets")["columns"].update(stake={"expr": expr}))
    with psycopg.connect(dsn) as conn:
        messages = [f"{f.object}: {f.message}" for f in take_inventory(conn, volatile).blocking]
        [line] = [m for m in messages if "volatile" in m]
        assert line.startswith(f"step 5 (wagers.bets): columns.stake (expr {expr}) calls the volatile function(s) {called}")
        assert "the 4B gate" in line
        with pytest.raises(PlanError, match="columns.stake .* calls the volatile function"):
            load_specs(conn, volatile)
        # a stable or immutable expression is accepted (the realapp plan's own, e.g. a timestamptz cast)
        load_specs(conn, PLAN)
