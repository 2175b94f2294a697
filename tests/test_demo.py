"""`audit demo`, the quick start's main job, end to end in a subprocess."""

from __future__ import annotations

import json
import tomllib

from conftest import run_audit


def test_demo_builds_the_project_runs_every_probe_and_shows_results_and_gates(tmp_path):
    project = tmp_path / "demo"
    first = run_audit("demo", "--dir", str(project))
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

    rows = json.loads(
        run_audit(
            "query",
            "select dataset, value from latest_metrics where metric = 'accuracy' and model = 'mlp_a'",
            "--format",
            "json",
            cwd=project,
        ).stdout
    )
    accuracy = {r["dataset"]: r["value"] for r in rows}
    assert accuracy["digits_test"] > 0.9  # a real model on real data ...
    assert accuracy["digits_rotated"] < 0.5  # ... that fails out of distribution

    again = run_audit("demo", "--dir", str(project))
    assert again.returncode == 0 and "0 computed, 7 reused" in again.stderr
    assert "trained" not in again.stderr  # existing weights are kept, so results are reused
    assert run_audit("gate", cwd=project).returncode == 0
