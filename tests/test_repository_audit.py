"""The repository's own audit.toml (README, "A tour"): valid against the installed probes, and `audit run`
then `audit gate` on it do something real — every job succeeds and every gate passes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audit.config import load_config
from audit.registry import installed_probes
from audit.run.executors import installed_executors
from conftest import audit_cli

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_config_loads_with_two_labelled_cka_entries():
    cfg = load_config(ROOT / "audit.toml", installed_probes(), installed_executors())
    assert {e.label for e in cfg.probes if e.probe == "cka"} == {"cka", "cka-biased"}
    assert all(g.params_fingerprint for g in cfg.gates)
    assert cfg.catalog == ROOT / ".audit" / "catalog.duckdb"


@pytest.mark.slow  # trains four small MLPs (about a second each) and runs four jobs
def test_a_fresh_clone_runs_and_gates_the_repository_config(tmp_path):
    shutil.copy(ROOT / "audit.toml", tmp_path / "audit.toml")
    shutil.copytree(ROOT / "tour", tmp_path / "tour", ignore=shutil.ignore_patterns("__pycache__"))
    ran = audit_cli("run", "--executor", "inline", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "4 computed, 0 reused" in ran.stdout + ran.stderr
    gated = audit_cli("gate", cwd=tmp_path)
    assert gated.returncode == 0, gated.stdout + gated.stderr
    assert "3 of 3 gate check(s) passed" in gated.stdout
    again = audit_cli("run", "--executor", "inline", cwd=tmp_path)  # the factories' models are reused
    assert "0 computed, 4 reused" in again.stdout + again.stderr
