"""The Phase 1-3 fixture: plan row counts, structure, determinism, scale, refusals.

Runs against the conftest's server (embedded, or CONSOLIDATION_DB_URL, e.g. the local
PostgreSQL 15). One scale-1 build is shared by the read-only tests of the session.
"""
from __future__ import annotations

import time

import psycopg
import pytest
import yaml
from psycopg import sql

from consolidation.cli import dev as dev_cli, main as cli
from consolidation.core import config
from consolidation.dev import fixture

LEGACY = ("public", "action", "splits", "tracking", "validation", "backtesting")
NON_PUBLIC_LEGACY = LEGACY[1:]


def _plan() -> dict:
    with open(config.DEFAULT_PLAN, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _ident(name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(*map(sql.Identifier, name.split(".", 1)))


def _counts(dsn: str, names) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return fixture.count_rows(conn, names)


def _digests(dsn: str) -> dict[str, str]:
    """md5 of every fixture relation's rows, tables ordered by primary key, views by row text."""
    out = {}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        rels = conn.execute(
            """
            SELECT n.nspname || '.' || c.relname, c.relkind,
                   (SELECT array_agg(a.attname::text ORDER BY k.ord)
                      FROM pg_index AS i
                      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                      JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = c.oid AND i.indisprimary)
              FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v')
             ORDER BY 1
            """,
            (list(LEGACY) + ["core_betting", "raw_data", "analytics", "operational"],),
        ).fetchall()
        for name, kind, pk in rels:
            order = (
                sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk)
                if pk else sql.SQL("t::text")
            )
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY {}), '')) FROM {} AS t"
            ).format(order, _ident(name))
            out[name] = conn.execute(query).fetchone()[0]
    return out


@pytest.fixture(scope="module")
def built(make_session_db):
    """(dsn, counts, seconds) of one scale-1 build, shared by the module."""
    dsn = make_session_db()
    started = time.perf_counter()
    counts = fixture.build(dsn)
    seconds = time.perf_counter() - started
    print(f"\nfixture.build(scale=1): {seconds:.2f} s")
    return dsn, counts, seconds


# ------------------------------------------------------------------ counts
def test_counts_equal_the_plan_rows_for_every_step(built):
    dsn, counts, _ = built
    steps = _plan()["steps"]
    sources = [s["source"] for s in steps]
    assert len(sources) == len(set(sources)) == 34
    actual = _counts(dsn, sources)
    for step in steps:
        assert actual[step["source"]] == step["rows"], step["source"]
        assert counts[step["source"]] == step["rows"], step["source"]


def test_module_constants_agree_with_the_plan():
    steps = _plan()["steps"]
    assert {s["source"]: s["rows"] for s in steps} == fixture.LEGACY_OBJECTS
    assert {s["source"] for s in steps if s.get("object") == "view"} == set(fixture.VIEWS)
    assert set(_plan()["legacy_schemas"]) == set(fixture.LEGACY_SCHEMAS)
    assert set(_plan()["consolidated_schemas"]) == set(fixture.CONSOLIDATED_SCHEMAS)


def test_schema_totals_match_the_plan_table_lists(built):
    """The per-schema sums of the step rows (not the seed's stated_rows, see the YAML)."""
    dsn, counts, _ = built
    totals: dict[str, int] = {}
    for name, rows in counts.items():
        if name in fixture.LEGACY_OBJECTS:
            totals[name.split(".")[0]] = totals.get(name.split(".")[0], 0) + rows
    assert totals == {"public": 22016, "action": 90, "splits": 252, "tracking": 183,
                      "validation": 0, "backtesting": 175}


def test_build_takes_well_under_two_seconds(built):
    _, _, seconds = built
    assert seconds < 5, f"fixture build took {seconds:.2f} s"  # ~1 s here; loose for slow CI


# --------------------------------------------------------------- structure
def test_the_three_views_are_views_and_everything_else_tables(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        kinds = dict(conn.execute(
            """
            SELECT n.nspname || '.' || c.relname, c.relkind::text
              FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
            """,
            (list(LEGACY),),
        ).fetchall())
    assert set(kinds) == set(fixture.LEGACY_OBJECTS)
    for name, kind in kinds.items():
        assert kind == ("v" if name in fixture.VIEWS else "r"), name


def test_legacy_schemas_hold_only_the_plan_objects_sequences_and_indexes(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        rels = conn.execute(
            """
            SELECT c.relkind::text, n.nspname || '.' || c.relname
              FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY(%s) AND c.relkind NOT IN ('r', 'v', 'S', 'i', 't')
            """,
            (list(LEGACY),),
        ).fetchall()
        assert rels == []
        # every index belongs to a fixture table; every sequence is owned by one of its columns
        stray = conn.execute(
            """
            SELECT n.nspname || '.' || c.relname
              FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY(%s) AND c.relkind = 'S'
               AND NOT EXISTS (SELECT 1 FROM pg_depend AS d
                                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                  AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i'))
            """,
            (list(LEGACY),),
        ).fetchall()
        assert stray == []
        funcs = conn.execute(
            "SELECT count(*) FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace"
            " WHERE n.nspname = ANY(%s)", (list(LEGACY),)
        ).fetchone()[0]
        assert funcs == 0
        # the consolidated schemas hold only what Phases 1-3 made
        tables = conn.execute(
            """
            SELECT n.nspname || '.' || c.relname
              FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('raw_data', 'core_betting', 'analytics', 'operational')
               AND c.relkind IN ('r', 'v', 'm', 'p')
             ORDER BY 1
            """
        ).fetchall()
        assert [t for (t,) in tables] == sorted(fixture.CONSOLIDATED_OBJECTS)


def test_every_key_sequence_is_owned_by_its_column_and_past_the_max(built):
    dsn, _, _ = built
    tables = [n for n in fixture.LEGACY_OBJECTS if n not in fixture.VIEWS] + list(fixture.CONSOLIDATED_OBJECTS)
    with psycopg.connect(dsn) as conn:
        for name in tables:
            pk = conn.execute(
                """
                SELECT a.attname, a.attidentity
                  FROM pg_index AS i JOIN pg_attribute AS a
                    ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = %s::regclass AND i.indisprimary
                """,
                (name,),
            ).fetchall()
            assert len(pk) == 1, name
            column, _identity = pk[0]
            seq = conn.execute("SELECT pg_get_serial_sequence(%s, %s)", (name, column)).fetchone()[0]
            assert seq, f"{name}.{column} has no owned sequence"
            top = conn.execute(
                sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(sql.Identifier(column), _ident(name))
            ).fetchone()[0]
            last, called = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(seq))
            ).fetchone()
            next_value = last + 1 if called else last
            assert next_value == top + 1, name
        # one identity column (the real schema mixes both), the rest serial
        identity = conn.execute(
            "SELECT attrelid::regclass::text FROM pg_attribute WHERE attidentity <> '' "
            "AND attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'backtesting'::regnamespace)"
        ).fetchall()
        assert identity == [("backtesting.standardization_audit_log",)]


def test_an_insert_with_default_keys_works(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        with conn.transaction(force_rollback=True):
            new = conn.execute(
                "INSERT INTO public.test_table (name, created_at) VALUES ('x', now()) RETURNING id"
            ).fetchone()[0]
            assert new == 2
            new = conn.execute(
                "INSERT INTO backtesting.standardization_audit_log (table_name, action, performed_at)"
                " VALUES ('t', 'a', now()) RETURNING id"
            ).fetchone()[0]
            assert new == 18


def test_parsed_games_reference_raw_html(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        fks = conn.execute(
            """
            SELECT conname, confrelid::regclass::text, pg_get_constraintdef(oid)
              FROM pg_constraint
             WHERE conrelid = 'public.sbr_parsed_games'::regclass AND contype = 'f'
            """
        ).fetchall()
        assert len(fks) == 1
        assert fks[0][1] == "sbr_raw_html"
        assert "(raw_html_id) REFERENCES sbr_raw_html(id)" in fks[0][2]
        lo, hi, pages = conn.execute(
            "SELECT min(n), max(n), count(*) FROM "
            "(SELECT count(*) AS n FROM public.sbr_parsed_games GROUP BY raw_html_id) AS x"
        ).fetchone()
        assert pages == 418 and lo >= 2 and hi <= 50
        assert conn.execute(
            "SELECT count(*) FROM public.sbr_parsed_games WHERE NOT payload ? 'odds'"
        ).fetchone()[0] == 0


def test_pre_game_recommendations_reference_game_outcomes_across_schemas(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        fks = conn.execute(
            """
            SELECT confrelid::regclass::text, pg_get_constraintdef(oid)
              FROM pg_constraint
             WHERE conrelid = 'tracking.pre_game_recommendations'::regclass AND contype = 'f'
            """
        ).fetchall()
        assert fks == [("game_outcomes", "FOREIGN KEY (game_outcome_id) REFERENCES game_outcomes(id)")]
        refs = conn.execute(
            "SELECT r.id, r.game_outcome_id, o.id IS NOT NULL FROM tracking.pre_game_recommendations AS r"
            " LEFT JOIN public.game_outcomes AS o ON o.id = r.game_outcome_id ORDER BY r.id"
        ).fetchall()
        assert refs == [(1, 241, True), (2, 242, True), (3, 243, True), (4, 247, True), (5, None, False)]


def test_teams_and_action_dim_teams_align_with_two_name_conflicts(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        teams = conn.execute(
            "SELECT abbreviation, name, city, league, division FROM core_betting.teams ORDER BY team_id"
        ).fetchall()
        assert len(teams) == 30
        assert len({t[0] for t in teams}) == 30
        assert teams[2][:2] == ("NYY", "New York Yankees")
        assert sum(t[3] == "AL" for t in teams) == 15
        divisions = {(t[3], t[4]) for t in teams}
        assert len(divisions) == 6
        joined = conn.execute(
            """
            SELECT t.abbreviation, t.name, d.full_name, t.city = d.city
              FROM core_betting.teams AS t FULL JOIN action.dim_teams AS d ON d.abbr = t.abbreviation
            """
        ).fetchall()
        assert len(joined) == 30 and all(r[0] is not None and r[2] is not None for r in joined)
        assert all(r[3] for r in joined)
        differing = sorted((r[0], r[1], r[2]) for r in joined if r[1] != r[2])
        assert differing == [
            ("CLE", "Cleveland Guardians", "Cleveland Indians"),
            ("OAK", "Oakland Athletics", "Athletics"),
        ]
        assert conn.execute(
            "SELECT display_name, slug FROM action.teams_formatted WHERE abbr = 'NYY'"
        ).fetchone() == ("New York Yankees (NYY)", "nyy")


def test_data_shapes_the_migration_must_handle(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        q = lambda text: conn.execute(text).fetchone()  # noqa: E731
        assert q("SELECT count(*) FROM public.game_outcomes WHERE game_id LIKE 'test_sharp_action_%'")[0] == 2
        assert q("SELECT count(*) FROM public.game_outcomes WHERE home_score IS NULL")[0] > 0
        assert q("SELECT count(*) FROM public.game_outcomes WHERE game_id !~ '^[0-9]+$'")[0] == 3
        # splits.games: every id casts to bigint, uniquely; some sources NULL (plan default)
        assert q("SELECT count(DISTINCT game_id::bigint) FROM splits.games")[0] == 252
        assert q("SELECT count(*) FROM splits.games WHERE source IS NULL")[0] > 0
        assert q("SELECT count(*) FROM public.migration_log WHERE finished_at IS NULL")[0] == 1
        assert q("SELECT count(DISTINCT changed_at) FROM backtesting.strategy_config_history")[0] == 26
        # the view shows the 20 latest changes
        assert q(
            "SELECT count(*) FROM backtesting.recent_config_changes AS r JOIN ("
            " SELECT id FROM backtesting.strategy_config_history ORDER BY changed_at DESC LIMIT 20) AS h"
            " USING (id)"
        )[0] == 20
        assert q("SELECT count(*) FROM action.games_with_teams WHERE home_abbr = away_abbr")[0] == 0
        # overlapping ids across the two config sources of the union
        assert q(
            "SELECT count(*) FROM tracking.active_strategy_configs AS a"
            " JOIN backtesting.strategy_configurations AS b USING (id)"
        )[0] == 20
        # reserved-word columns, a CHECK, timestamptz everywhere
        assert q("SELECT count(DISTINCT \"user\") FROM tracking.strategy_integration_log")[0] > 1
        assert q("SELECT count(\"limit\") FROM backtesting.threshold_configurations")[0] > 0
        assert q(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'c'"
            " AND conrelid = 'backtesting.threshold_configurations'::regclass"
        )[0] == 1
        loose = conn.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = ANY(%s) AND data_type IN ('timestamp without time zone',"
            " 'time without time zone', 'real', 'double precision', 'money')",
            (list(LEGACY),),
        ).fetchall()
        assert loose == []
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'core_betting' AND table_name = 'supplementary_games'"
            " ORDER BY ordinal_position"
        ).fetchall()
        assert [c for c, _ in cols] == ["id", "external_game_id", "game_date", "home_team",
                                       "away_team", "data_source", "created_at"]
        assert q("SELECT count(*) FROM core_betting.supplementary_games")[0] == 0


def test_role_and_grants(built):
    dsn, _, _ = built
    with psycopg.connect(dsn) as conn:
        q = lambda text, *a: conn.execute(text, a).fetchone()[0]  # noqa: E731
        assert q("SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = 'betting_app'")
        for schema in LEGACY + ("raw_data", "core_betting", "analytics", "operational"):
            assert q("SELECT has_schema_privilege('betting_app', %s, 'USAGE')", schema), schema
        for name in fixture.LEGACY_OBJECTS:
            assert q("SELECT has_table_privilege('betting_app', %s, 'SELECT')", name), name
            writable = name not in fixture.VIEWS
            for priv in ("INSERT", "UPDATE"):
                assert q("SELECT has_table_privilege('betting_app', %s, %s)", name, priv) is writable, name
            assert not q("SELECT has_table_privilege('betting_app', %s, 'DELETE')", name)
        seqs = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class AS c JOIN pg_namespace AS n"
            " ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname = ANY(%s)",
            (list(LEGACY),),
        ).fetchall()
        assert len(seqs) == 31
        for (seq,) in seqs:
            assert q("SELECT has_sequence_privilege('betting_app', %s, 'USAGE')", seq), seq


# ------------------------------------------------------------- determinism
def test_two_builds_are_identical(built, make_db):
    dsn, _, _ = built
    other = make_db()
    fixture.build(other)
    first, second = _digests(dsn), _digests(other)
    assert len(first) == 34 + 3
    assert first == second


def test_scale_two_doubles_only_the_large_tables(built, make_db):
    dsn, one, _ = built
    other = make_db()
    started = time.perf_counter()
    two = fixture.build(other, scale=2)
    print(f"\nfixture.build(scale=2): {time.perf_counter() - started:.2f} s")
    assert two == fixture.expected_counts(2)
    assert _counts(other, two) == two
    for name, rows in one.items():
        factor = 2 if name in fixture.SCALED else 1
        assert two[name] == rows * factor, name
    assert {n for n in one if two[n] != one[n]} == set(fixture.SCALED)
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT count(DISTINCT game_id::bigint) FROM splits.games").fetchone()[0] == 504
        assert conn.execute(
            "SELECT count(DISTINCT raw_html_id) FROM public.sbr_parsed_games"
        ).fetchone()[0] == 836


# ---------------------------------------------------------------- refusals
def test_building_twice_raises_a_clear_error_and_if_empty_skips(built):
    dsn, _, _ = built
    before = _digests(dsn)
    assert not fixture.is_empty(dsn)
    with pytest.raises(fixture.FixtureError, match=r"already has .*action.*if_empty"):
        fixture.build(dsn)
    assert fixture.build(dsn, if_empty=True) == {}
    assert _digests(dsn) == before


def test_is_empty_on_a_fresh_database(db_dsn):
    assert fixture.is_empty(db_dsn)
    with psycopg.connect(db_dsn) as conn:
        assert fixture.is_empty(conn)


def test_a_consolidated_schema_alone_makes_the_database_non_empty(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA operational")
    assert not fixture.is_empty(db_dsn)
    with pytest.raises(fixture.FixtureError, match="operational"):
        fixture.build(db_dsn)
    assert fixture.build(db_dsn, if_empty=True) == {}


def test_a_failed_build_leaves_nothing_behind(db_dsn):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        # a type named like a legacy table: CREATE TABLE fails midway through the build
        conn.execute("CREATE TYPE public.test_table AS (x int)")
    with pytest.raises(psycopg.errors.DuplicateTable, match="test_table"):
        fixture.build(db_dsn)
    assert fixture.is_empty(db_dsn)


def test_bad_scale_is_refused(db_dsn):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(fixture.FixtureError, match="scale"):
            fixture.build(db_dsn, scale=bad)
    assert fixture.is_empty(db_dsn)


def test_build_on_a_caller_connection_commits_with_it(db_dsn):
    with psycopg.connect(db_dsn) as conn:
        counts = fixture.build(conn)
        assert counts["core_betting.teams"] == 30
    assert not fixture.is_empty(db_dsn)


# --------------------------------------------------------------------- cli
def test_cli_build_then_if_empty(db_dsn, monkeypatch, capsys):
    monkeypatch.setenv("CONSOLIDATION_DB_URL", db_dsn)
    assert cli.main(["fixture", "build"]) == 0
    out = capsys.readouterr().out
    assert "34 legacy objects" in out and "scale 1" in out
    assert cli.main(["fixture", "build", "--if-empty"]) == 0
    assert "nothing built" in capsys.readouterr().out
    assert cli.main(["fixture", "build", "--scale", "2"]) == 1
    assert "refusing to build" in capsys.readouterr().err


def test_cli_unreachable_server_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("CONSOLIDATION_DB_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert cli.main(["fixture", "build"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach" in err


def test_register_adds_the_fixture_build_command():
    parser = cli.build_parser()
    args = parser.parse_args(["fixture", "build", "--scale", "3", "--if-empty"])
    assert (args.command, args.fixture_command, args.scale, args.if_empty) == ("fixture", "build", 3, True)
    assert cli.handler(args.func) is dev_cli.fixture_build
    with pytest.raises(SystemExit):
        parser.parse_args(["fixture", "build", "--scale", "0"])
