"""Example 04 (eNTK linearisation under shift, Campbell et al.) in its reduced form.

Copies examples/04_entk_linearisation into tmp_path (without generated files), runs ``python make_data.py
--quick`` and ``audit run`` there as the README says, and asserts from the catalog what the example reproduces:
kernel regression with the pretrained network's eNTK tracks fine-tuning in distribution (and both beat the
linear probe), every method loses accuracy on the rotated digits, and the pretrained eNTK does better out of
distribution than the untrained network's. The README's unreproduced part (eNTK more robust than fine-tuning
OOD) is only bounded, not asserted. Margins from the quick runs of seeds 0–2; no exact values, no times.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import pytest

from conftest import audit_cli, run_example_quick

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "04_entk_linearisation"
# each builds an example (make_data.py --quick trains its models) and runs `audit run` on it: 30–90 s
pytestmark = pytest.mark.slow
REPLICATES = range(5)


def _quick_run(tmp_path: Path) -> Path:
    return run_example_quick(EXAMPLE.name, tmp_path)


def _accuracies(dest: Path) -> dict[tuple[str, str, str], float]:
    sql = (
        "select model, dataset, metric, value from latest_metrics where probe = 'entk' "
        "and metric in ('network_accuracy', 'kernel_regression_accuracy')"
    )
    r = audit_cli("query", "--format", "json", sql, cwd=dest)
    assert r.returncode == 0, r.stderr
    return {(row["model"], row["dataset"], row["metric"]): row["value"] for row in json.loads(r.stdout)}


def test_entk_tracks_fine_tuning_in_distribution(tmp_path):
    dest = _quick_run(tmp_path)
    acc = _accuracies(dest)

    def method(name: str, k: int, dataset: str) -> float:
        """lp and ft: the network's own accuracy; entk/control: kernel regression with pre's/init's eNTK."""
        if name in ("lp", "ft"):
            return acc[(f"{name}/seed_{k}", dataset, "network_accuracy")]
        family = {"entk": "pre", "control": "init"}[name]
        return acc[(f"{family}/seed_{k}", dataset, "kernel_regression_accuracy")]

    def avg(name: str, dataset: str) -> float:
        return mean(method(name, k, dataset) for k in REPLICATES)

    # In distribution the eNTK kernel regression matches fine-tuning on every replicate (quick: |gap| ≤ 0.013,
    # means 0.966 vs 0.961) and both beat the linear probe (0.874).
    for k in REPLICATES:
        assert abs(method("entk", k, "target_test") - method("ft", k, "target_test")) <= 0.04
    assert abs(avg("entk", "target_test") - avg("ft", "target_test")) <= 0.02
    assert avg("lp", "target_test") < avg("ft", "target_test") - 0.03

    # The 30° rotation costs every method a lot (quick: 0.29–0.40).
    for name in ("lp", "ft", "entk", "control"):
        assert avg(name, "target_rotated") < avg(name, "target_test") - 0.15

    # The pretrained eNTK beats the untrained network's out of distribution (quick seeds 0–2: +0.037, +0.020,
    # +0.079), though the two are equal in distribution: the OOD advantage comes from pretraining.
    assert avg("entk", "target_rotated") > avg("control", "target_rotated")
    # Not reproduced reliably (README): eNTK vs fine-tuning OOD; only bounded (quick: +0.006, −0.006, −0.007).
    assert abs(avg("entk", "target_rotated") - avg("ft", "target_rotated")) < 0.08

    r = audit_cli("report", "--out", "report.html", "--model", "pre/seed_0", cwd=dest)
    assert r.returncode == 0, r.stderr
    html = (dest / "report.html").read_text()
    assert "<img" in html and "figure failed" not in html
