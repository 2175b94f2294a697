"""Shared fixtures. Threads are pinned before numpy/torch load: two cores oversubscribe easily."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

torch.set_num_threads(1)
threadpool_limits(1)

SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "COLUMNS": "200",
    "NO_COLOR": "1",
}


def run_audit(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real `audit` CLI in a subprocess (real exit codes, real catalog files)."""
    return subprocess.run(
        [sys.executable, "-m", "audit.cli", *args],
        cwd=cwd,
        env={**SUBPROCESS_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory) -> Path:
    """The demo project (trained models, data, audit.toml), built once; copy it before writing a catalog."""
    from audit.demo import build_project

    return build_project(tmp_path_factory.mktemp("demo-src") / "project")


@pytest.fixture
def demo_project(demo_source: Path, tmp_path: Path) -> Path:
    """A private copy of the demo project, without a catalog."""
    import shutil

    dest = tmp_path / "project"
    shutil.copytree(demo_source, dest, ignore=shutil.ignore_patterns(".audit", "__pycache__"))
    return dest


@pytest.fixture(scope="session")
def demo_catalog(demo_source: Path, tmp_path_factory) -> Path:
    """A copy of the demo project after `audit demo` (every installed probe run once), shared by the tests
    that only read its catalog (reports, `audit show`): copy it before writing anything."""
    import shutil

    dest = tmp_path_factory.mktemp("demo-run") / "project"
    shutil.copytree(demo_source, dest, ignore=shutil.ignore_patterns(".audit", "__pycache__"))
    r = run_audit("demo", "--dir", str(dest), timeout=600)
    assert r.returncode in (0, 1), r.stderr  # 1: a gate failed, which the reports must show too
    assert (dest / ".audit" / "catalog.duckdb").exists(), r.stderr
    return dest


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
_GENERATED = ("data", "models", ".audit", "*.html", "__pycache__")


def run_example_quick(name: str, tmp_path: Path) -> Path:
    """A private copy of examples/<name> after `python make_data.py --quick && audit run` (the reduced version)."""
    import shutil

    dest = tmp_path / name
    shutil.copytree(EXAMPLES / name, dest, ignore=shutil.ignore_patterns(*_GENERATED))
    made = subprocess.run(
        [sys.executable, "make_data.py", "--quick"],
        cwd=dest,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    ran = run_audit("run", cwd=dest)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return dest
