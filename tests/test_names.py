"""Names the engine makes: the same input gives the same name, in every process.

Constraint names shortened to PostgreSQL's 63 characters (core.spec._short) are compared
by name for idempotence (4A adds a foreign key only when no constraint of that name
exists), so two task processes must make the same name. File names made from run ids
(core.files.safe_name) are how backups, reports, nightly pages and GX results are found
again: each variant keeps the result it had before it moved to core.files.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from consolidation.core.files import atomic_write, safe_name
from consolidation.core.spec import _short

pytestmark = pytest.mark.unit

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
LONG = "dim_teams_" + "home_team_id_away_team_id_" * 3 + "fkey"


def _short_in_subprocess(name: str, seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(PLUGINS))
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from consolidation.core.spec import _short; print(_short(sys.argv[1]))",
         name], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_short_names_are_the_same_in_every_process():
    names = {_short_in_subprocess(LONG, seed) for seed in ("1", "2", "12345")}
    assert names == {_short(LONG)}
    (name,) = names
    assert len(name) <= 63 and name.startswith(LONG[:54] + "_")


def test_short_names_keep_short_names_and_tell_long_ones_apart():
    assert _short("teams_team_id_fkey") == "teams_team_id_fkey"
    assert _short("x" * 63) == "x" * 63
    assert _short(LONG) != _short(LONG + "2")
    assert _short(LONG) == "dim_teams_home_team_id_away_team_id_home_team_id_away__674a89a8"


# (text, backups and reports, nightly pages, GX names): the results of the former
# phases.backup.safe_name, phases.nightly.safe_run and checks.gx._safe.
SAFE_NAMES = [
    ("manual__2024-01-01T00:00:00+00:00", "manual__2024-01-01T00_00_00_00_00", "manual__2024-01-01T00_00_00_00_00",
     "manual__2024-01-01T00_00_00_00_00"),
    ("scheduled__2025-06-01T02:00:00.123456+00:00", "scheduled__2025-06-01T02_00_00.123456_00_00",
     "scheduled__2025-06-01T02_00_00.123456_00_00", "scheduled__2025-06-01T02_00_00_123456_00_00"),
    (".hidden_", ".hidden", "hidden", "hidden"),
    ("a..b", "a..b", "a..b", "a_b"),
    ("ünï cödé", "n_c_d", "n_c_d", "n_c_d"),
    ("", "run", "run", "x"),
    ("raw_data.x", "raw_data.x", "raw_data.x", "raw_data_x"),
    ("../etc/passwd", ".._etc_passwd", "etc_passwd", "etc_passwd"),
    ("4D", "4D", "4D", "4D"),
]


@pytest.mark.parametrize("text,backup,nightly,gx", SAFE_NAMES)
def test_safe_names_are_what_they_were(text, backup, nightly, gx):
    from consolidation.checks import gx as gx_module
    from consolidation.phases import nightly as nightly_module

    assert safe_name(text) == backup
    assert nightly_module.safe_run(text) == nightly
    assert gx_module._safe(text) == gx


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    atomic_write(path, "old")
    assert atomic_write(path, "néw\n") == path
    assert path.read_text(encoding="utf-8") == "néw\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
