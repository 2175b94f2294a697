"""A probe defined outside the package shows up in `audit probes` and runs under `audit run`."""

from __future__ import annotations

import json
import os

import pytest

from conftest import MINI_SIZES, audit_cli, run_audit
from external_plugin import install_external_plugin, install_plugin


@pytest.mark.slow  # a plugin found on PYTHONPATH by a fresh process: `audit probes`, `run`, `query`, its command
def test_external_probe_is_listed_and_runs_with_no_change_to_the_core(mini_project, tmp_path):
    site = install_external_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}

    listed = run_audit("probes", "--format", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    probes = {p["name"]: p for p in json.loads(listed.stdout)}
    assert set(probes) >= {"cka", "output_mean"}
    assert probes["output_mean"]["version"] == "0.3.0"
    assert probes["output_mean"]["plugin"] == "audit-output-mean 0.3.0"
    assert [p["name"] for p in probes["output_mean"]["params"]] == ["batch_size", "sleep", "fail_on"]
    assert probes["output_mean"]["needs"] == {"models": [1, 1], "datasets": [1, 1], "gpus": 1.0}

    # named on the command line, not configured: runs on every model × dataset the flags name (2 × 3)
    ran = run_audit(
        "run",
        "output_mean",
        "--model",
        "mlp_a",
        "--model",
        "mlp_b",
        *("--data", "digits_train", "--data", "digits_test", "--data", "digits_rotated"),
        "--config",
        str(mini_project / "audit.toml"),
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    assert "6 computed" in ran.stderr
    q = run_audit(
        "query",
        "select model, dataset, value from metrics where probe = 'output_mean' and metric = 'outputs' "
        "order by model, dataset",
        "--format",
        "json",
        "--config",
        str(mini_project / "audit.toml"),
        env=env,
    )
    rows = {(r["model"], r["dataset"]): r["value"] for r in json.loads(q.stdout)}
    assert set(rows) == {
        (m, d) for m in ("mlp_a", "mlp_b") for d in ("digits_train", "digits_test", "digits_rotated")
    }
    n_test, n_train = MINI_SIZES["digits_test"], MINI_SIZES["digits_train"]
    assert (
        rows[("mlp_a", "digits_test")] == rows[("mlp_b", "digits_rotated")] == n_test * 10
    )  # outputs counted
    assert rows[("mlp_a", "digits_train")] == n_train * 10

    # plugins may add commands too (register_commands gets the Typer app)
    added = run_audit("output-mean-info", env=env)
    assert added.returncode == 0 and added.stdout.strip() == "output_mean plugin, version 0.3.0"

    # without the plugin on the path (as in this process) the probe is simply not there
    assert "output_mean" not in audit_cli("probes", "--format", "json").stdout


def test_the_core_never_imports_a_probe():
    """The core reaches probes only through the entry-point group; no module of `audit` names one."""
    import ast
    from pathlib import Path

    import audit

    offenders = []
    for path in Path(audit.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "model_audit_probes"]
    assert offenders == []


@pytest.mark.slow  # a fresh process that finds a broken plugin on PYTHONPATH
def test_a_broken_plugin_is_a_warning_not_a_crash(tmp_path):
    source = "raise ImportError('missing dependency foo')\n"
    site = install_plugin(tmp_path / "site", "broken_probe", source, "1.0", "broken")
    r = run_audit("probes", "--format", "json", env={"PYTHONPATH": str(site)})
    assert r.returncode == 0
    assert "cka" in {p["name"] for p in json.loads(r.stdout)}
    assert (
        "warning: plugin 'broken' (broken_probe) failed to load: ImportError: missing dependency foo"
        in r.stderr
    )
