"""The `consolidation` command that `make venv` installs works without PYTHONPATH, from anywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(sys.executable).with_name("consolidation")


@pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} not installed: run `make venv`")
def test_installed_command_runs_without_pythonpath(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(SCRIPT), "plan"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("plan phase4 (") and "34 steps" in out.stdout.splitlines()[0]
    # the same package as the one in plugins/ (editable), not a copy
    where = subprocess.run([sys.executable, "-c", "import consolidation; print(consolidation.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert Path(where.stdout.strip()).resolve().parent == (Path(__file__).resolve().parents[1] / "plugins" / "consolidation")


def test_output_piped_into_a_reader_that_leaves_early_is_no_error():
    """`consolidation plan | head -1`: the reader closes the pipe (here before anything is
    written); the command stops quietly (exit 0, no BrokenPipeError traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "consolidation", "plan"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err, err
