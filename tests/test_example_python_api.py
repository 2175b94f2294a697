"""examples/09_python_api/notebook.py runs as a script (its reduced version) and says what it measured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SUBPROCESS_ENV

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "09_python_api"


@pytest.mark.slow
def test_the_notebook_runs_and_reuses_its_result(tmp_path):
    dest = tmp_path / "09_python_api"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns(".audit"))
    r = subprocess.run(
        [sys.executable, "notebook.py", "--quick"], cwd=dest, env=SUBPROCESS_ENV, capture_output=True, text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "second call reused it: True" in r.stdout
    assert "eNTK effective rank of seed_0:" in r.stdout
    assert (dest / ".audit" / "notebook.duckdb").is_file()
