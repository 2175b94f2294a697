"""`audit demo`, the quick start's main job, end to end.

The first `audit demo` of the session (`demo_run` in conftest.py: an empty folder, every model trained,
every probe run) is the one checked here; the other demo tests read or copy what it left.
"""

from __future__ import annotations

import json
import tomllib

from conftest import audit_cli, copy_project


def test_demo_builds_the_project_runs_every_probe_and_shows_results_and_gates(demo_run):
    project, first = demo_run
    assert first.returncode == 0, first.stderr
    assert "key metrics" in first.stdout and "gates" in first.stdout
    assert "7 computed, 0 reused" in first.stderr
    assert "trained mlp_a" in first.stderr and "trained mlp_b" in first.stderr

    config = tomllib.loads((project / "audit.toml").read_text())
    assert {e["probe"] for e in config["probes"]} == {
        "cka",
        "embedding",
        "emulator",
        "entk",
        "trimmed_ks",
    }  # every installed probe with a demo entry
    assert (project / "models" / "mlp_a.safetensors").exists()

    query = "select dataset, value from latest_metrics where metric = 'accuracy' and model = 'mlp_a'"
    rows = json.loads(audit_cli("query", query, "--format", "json", cwd=project).stdout)
    accuracy = {r["dataset"]: r["value"] for r in rows}
    assert accuracy["digits_test"] > 0.9  # a real model on real data ...
    assert accuracy["digits_rotated"] < 0.5  # ... that fails out of distribution


def test_a_second_demo_keeps_the_weights_and_reuses_every_result(demo_catalog, tmp_path):
    project = copy_project(
        demo_catalog, tmp_path / "demo", catalog=True
    )  # the session's demo stays as it was
    again = audit_cli("demo", "--dir", str(project))
    assert again.returncode == 0 and "0 computed, 7 reused" in again.stderr, again.stderr
    assert "trained" not in again.stderr  # existing weights are kept, so results are reused
    assert audit_cli("gate", cwd=project).returncode == 0


def test_the_demo_configures_the_installed_built_in_probes_and_no_other():
    """The demo's entries, tables and gates live in the demo, by built-in probe name: a built-in probe that is
    not installed is left out, and so is a third-party probe (even one that takes a built-in's name)."""
    from audit import Probe
    from audit.face.demo import BUILT_IN, demo_parts
    from audit.registry import installed_probes

    class Stranger(Probe):
        name, version, description = "cka", "0", "a third-party probe under a built-in's name"

    installed = {n: p for n, p in installed_probes().items() if n in BUILT_IN}
    assert set(installed) == set(BUILT_IN)
    said: list[str] = []
    parts = demo_parts({**{n: p for n, p in installed.items() if n != "emulator"}, "cka": Stranger()}, said.append)
    assert {e["probe"] for part in parts for e in part.entries} == {"embedding", "entk", "trimmed_ks"}
    assert not any("smf_emulator" in part.tables.get("models", {}) for part in parts)
    assert len(said) == 1 and "'cka'" in said[0]
    assert not [a for a in dir(Probe) if a.startswith("demo")]  # not part of the probe contract
