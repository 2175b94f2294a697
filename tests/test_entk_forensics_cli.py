"""examples/02_optimizer_forensics/forensics.py, the one-command forensics experiment, in-process (CliRunner)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model_audit_probes.entk.forensics import EXPECTED, OPTIMIZERS, run_experiment

# The smallest instance that still separates with margin: at d = h = n = 300 and 600 steps, seeds 0–11 all
# classify as expected (large-step SGD ≥ 15 spikes, top ≥ 2.4× the edge; Adam ΔW stable rank ≥ 10.3 against
# the threshold 8). 400 steps, or d = 250, leave the Adam rank too close to its threshold.
SMALL = ["--dim", "300", "--width", "300", "--samples", "300", "--steps", "600", "--seed", "0"]


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "02_optimizer_forensics" / "forensics.py"
    spec = importlib.util.spec_from_file_location("optimizer_forensics_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_example().app


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def small_json(runner) -> dict:
    threads = torch.get_num_threads()
    result = runner.invoke(app, [*SMALL, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # the command runs on one thread and restores the setting
    return json.loads(result.stdout)


def test_json_classifies_every_optimizer_as_expected(small_json):
    rows = small_json["optimizers"]
    assert list(rows) == list(OPTIMIZERS)
    for name, row in rows.items():
        assert row["verdict"] == EXPECTED[name], (name, row)
        assert row["expected"] == EXPECTED[name] and row["matches"] is True
    assert small_json["all_match"] is True
    assert small_json["settings"] == {
        **small_json["settings"],
        "seed": 0,
        "dim": 300,
        "width": 300,
        "samples": 300,
        "steps": 600,
    }
    # the statistics that separate them
    assert rows["gd"]["spikes"] == rows["sgd_small"]["spikes"] == 0
    assert rows["sgd_large"]["spikes"] >= 10 and rows["sgd_large"]["top_edge_ratio"] > 2
    assert rows["sgd_large"]["alpha"] < min(rows["gd"]["alpha"], rows["sgd_small"]["alpha"])
    assert rows["adam"]["dw_stable_rank"] > 5 * rows["gd"]["dw_stable_rank"]
    chance = small_json["settings"]["chance_alignment"]
    assert rows["gd"]["align_dw"] > 6 * chance
    for row in rows.values():
        assert set(row) >= {"spikes", "top_edge_ratio", "alpha", "alpha_ks", "dw_stable_rank", "align_w"}


def test_table_and_markdown_show_every_optimizer_and_the_rule(runner):
    # tiny sizes: only the rendering is checked here (NaN statistics render as —)
    tiny = ["--dim", "12", "--width", "10", "--samples", "40", "--steps", "5"]
    for fmt in ("table", "markdown"):
        result = runner.invoke(app, [*tiny, "--format", fmt], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for name in OPTIMIZERS:
            assert name in result.stdout
        assert "count past the edge" in result.stdout
        assert "classified as expected" in result.stderr
    assert result.stdout.count("\n| ") == 1 + len(OPTIMIZERS)  # markdown: header and one row each


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--dim", "0"], "--dim"),
        (["--d", "-3"], "--dim"),
        (["--width", "0"], "--width"),
        (["--samples", "-1"], "--samples"),
        (["--steps", "-5"], "--steps"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runner, args, flag):
    result = runner.invoke(app, [*args])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_progress_callback_does_not_change_the_results():
    messages: list[str] = []
    kwargs = dict(d=30, h=20, n=50, steps=40, seed=3)
    with_progress = run_experiment(**kwargs, progress=messages.append)
    assert json.dumps(with_progress) == json.dumps(run_experiment(**kwargs))
    assert messages[0] == "gd: step 0/40" and "adam: step 40/40" in messages
    assert messages[-1] == "adam: spectrum and statistics"
