"""The `emulator` probe: in process on emulators with known errors, and end to end on the toy SMF project."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from audit.api.context import Context, DatasetHandle, ModelHandle
from audit.api.errors import ProbeInputError
from conftest import audit_cli
from model_audit_probes.emulator import toy
from model_audit_probes.emulator.probe import EmulatorProbe

P = toy.N_BINS


class Table(nn.Module):
    """An 'emulator' whose prediction for input i is row i of a table (the inputs are row indices)."""

    def __init__(self, rows: np.ndarray):
        super().__init__()
        self.register_buffer("rows", torch.from_numpy(np.asarray(rows, dtype=np.float32)))

    def forward(self, idx):
        return self.rows[idx.long().reshape(-1)]


def held_out(name: str, targets: np.ndarray) -> DatasetHandle:
    idx = np.arange(len(targets))

    def batches(bs, device):  # onto the job's device, as the runner's datasets do
        for s in range(0, len(targets), bs):
            yield (
                torch.from_numpy(idx[s : s + bs]).to(device),
                torch.from_numpy(targets[s : s + bs].astype(np.float32)).to(device),
            )

    return DatasetHandle(name, f"fp-{name}", len(targets), "regression", True, batches)


def covariance_set(name: str, rows: np.ndarray) -> DatasetHandle:
    def batches(bs, device):
        for s in range(0, len(rows), bs):
            yield torch.from_numpy(np.asarray(rows[s : s + bs], dtype=np.float32)).to(device), None

    return DatasetHandle(name, f"fp-{name}", len(rows), None, False, batches)


def run_probe(models: dict[str, np.ndarray], datasets: list[DatasetHandle], device="cpu", **params):
    handles = [ModelHandle(n, f"fp-{n}", (lambda t=t: Table(t).to(device))) for n, t in models.items()]
    probe = EmulatorProbe()
    ctx = Context(handles, datasets, torch.device(device), seed=0)
    return probe.run(ctx, probe.validate_params(params))


def values(result, name):
    return {(m.model, m.dataset): m.value for m in result.metrics if m.name == name}


@pytest.fixture(scope="module")
def boxes():
    """Truth, noisy simulation outputs (log10 φ) and the noise covariance of the toy problem."""
    data = toy.smf_boxes(2000, seed=3)
    return data["truth"].astype(np.float64), data["targets"].astype(np.float64), toy.noise_covariance()


def test_the_truth_is_calibrated_and_a_biased_emulator_is_caught(boxes, device):
    truth, measured, cov = boxes
    sigma = np.sqrt(np.diag(cov))
    result = run_probe(
        {"truth": truth, "biased": truth - 0.5 * sigma, "poor": truth + 0.2 * np.sin(np.arange(P))},
        [held_out("boxes", measured), covariance_set("cov", cov)],
        device,
        covariance="cov",
        stored="log10",
        baseline="poor",
    )
    chi2_mean = values(result, "chi2_mean")
    calib = values(result, "calibration_p_value")
    assert abs(chi2_mean["truth", "boxes"] - 1) < 4 * np.sqrt(2 / (P * 2000))
    assert calib["truth", "boxes"] > 0.01
    # a common shift is partly a high-variance direction of the correlated noise, so χ² grows by bᵀΣ⁻¹b/p only
    sigma_inv = np.linalg.inv(cov)
    n = len(measured)  # 2000 boxes, toy seed 3
    lam = (0.5 * sigma) @ sigma_inv @ (0.5 * sigma)  # bᵀΣ⁻¹b
    excess = lam / P
    # per box χ²_biased − χ²_truth = bᵀΣ⁻¹b + 2 bᵀΣ⁻¹r, r ~ N(0, Σ): the cross term has sd 2√λ, so the
    # difference of the two per-bin means has sd 2√λ / (P √n) (≈ 0.0036 here); 4 sd is the margin
    margin = 4 * 2 * np.sqrt(lam) / (P * np.sqrt(n))
    assert chi2_mean["biased", "boxes"] == pytest.approx(chi2_mean["truth", "boxes"] + excess, abs=margin)
    assert excess > 0.05 and calib["biased", "boxes"] < 1e-6
    # every bin's mean pull is 0.5 plus noise of sd 1/√n (≈ 0.022); the largest of 14 stays within 4 sd
    assert values(result, "pull_bias_max")["biased", "boxes"] == pytest.approx(0.5, abs=4 / np.sqrt(n))
    ratio = values(result, "chi2_mean_ratio")
    assert ratio["truth", "boxes"] == pytest.approx(chi2_mean["truth", "boxes"] / chi2_mean["poor", "boxes"])
    assert ("poor", "boxes") not in ratio  # the baseline is not compared with itself
    # the stored per-sample χ² is the direct formula, in log10 space as stored
    r = measured - truth.astype(np.float32).astype(np.float64)
    direct = np.einsum("ij,jk,ik->i", r, np.linalg.inv(cov.astype(np.float32).astype(np.float64)), r)
    np.testing.assert_allclose(result.arrays["truth@boxes:chi2"], direct, rtol=1e-6)
    np.testing.assert_allclose(
        result.arrays["truth@boxes:p_values"], stats.chi2.sf(direct, P), rtol=1e-5, atol=1e-12
    )
    assert result.arrays["truth@boxes:frac_err_percentiles"].shape == (3, P)
    assert result.arrays["covariance_kind"][0] == "full"
    assert values(result, "hartlap_factor")[None, None] == pytest.approx(1.0, rel=1e-15)  # a known Σ: none


def test_realisations_estimate_the_covariance_with_hartlap(boxes, device):
    truth, measured, _ = boxes
    reals = toy.smf_realisations(60, seed=5)["inputs"]
    result = run_probe(
        {"truth": truth},
        [held_out("boxes", measured), covariance_set("sims", reals)],
        device,
        covariance="sims",
        stored="log10",
    )
    assert result.arrays["covariance_kind"][0] == "realisations"
    assert values(result, "hartlap_factor")[None, None] == pytest.approx((60 - P - 2) / 59)
    # Hotelling p-values of the true model are calibrated even with only 60 realisations
    assert values(result, "calibration_p_value")["truth", "boxes"] > 0.001


def test_linear_storage_compared_in_log10_with_the_nonpositive_rule(device):
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 10, size=(300, 4))
    measured = truth * 10 ** (0.05 * rng.normal(size=truth.shape))
    errors = np.full((1, 4), 0.05)
    ds = [held_out("t", measured), covariance_set("err", errors)]
    result = run_probe({"m": truth}, ds, device, covariance="err", stored="linear", space="log10")
    assert abs(values(result, "chi2_mean")["m", "t"] - 1) < 0.15
    fe = np.abs(truth.astype(np.float32) / measured.astype(np.float32) - 1)
    assert values(result, "frac_err_p95")["m", "t"] == pytest.approx(np.percentile(fe, 95), rel=1e-4)

    broken = truth.copy()
    broken[3, 2] = 0.0
    with pytest.raises(ValueError, match=r"outputs of 'm': 1 value\(s\) ≤ 0 in bins 2"):
        run_probe({"m": broken}, ds, covariance="err", stored="linear", space="log10")
    masked = run_probe(
        {"m": broken}, ds, covariance="err", stored="linear", space="log10", nonpositive="mask"
    )
    assert values(masked, "masked_fraction")["m", "t"] == pytest.approx(1 / 1200)
    assert any("masked" in w for w in masked.warnings)
    assert masked.arrays["m@t:chi2"].shape == (300,) and np.isfinite(masked.arrays["m@t:chi2"]).all()


def test_singular_covariance_is_an_error_or_a_warned_pseudo_inverse(boxes, device):
    truth, measured, cov = boxes
    singular = cov.copy()
    singular[-1, :] = singular[:, -1] = 0.0
    ds = [held_out("boxes", measured), covariance_set("cov", singular)]
    with pytest.raises(ProbeInputError, match=r"covariance dataset 'cov'.*rank 13 of 14.*pinv"):
        run_probe({"truth": truth}, ds, covariance="cov", stored="log10")
    result = run_probe({"truth": truth}, ds, device, covariance="cov", stored="log10", singular="pinv")
    assert any("pseudo-inverse" in w for w in result.warnings)
    assert values(result, "covariance_rank")[None, None] == 13
    assert np.isfinite(result.arrays["truth@boxes:chi2"]).all()
    assert abs(values(result, "chi2_mean")["truth", "boxes"] - 1) < 0.05


def test_job_errors_name_what_to_fix(boxes):
    truth, measured, cov = boxes
    ds = [held_out("boxes", measured), covariance_set("cov", cov)]
    with pytest.raises(ValueError, match=r"params\.covariance: name"):
        run_probe({"truth": truth}, ds)
    with pytest.raises(ValueError, match=r"'nope' is not one of the job's datasets \(boxes, cov\)"):
        run_probe({"truth": truth}, ds, covariance="nope")
    with pytest.raises(ValueError, match="matches 2 of the job's models"):
        run_probe({"a": truth, "b": truth}, ds, covariance="cov", baseline="*")
    with pytest.raises(ProbeInputError, match=r"outputs of shape \(2000, 13\)"):
        run_probe({"short": truth[:, :13]}, ds, covariance="cov")
    with pytest.raises(ProbeInputError, match="13 bins per row"):
        run_probe(
            {"truth": truth},
            [held_out("boxes", measured), covariance_set("c", cov[:13, :13])],
            covariance="c",
            covariance_kind="full",
        )
    with pytest.raises(ProbeInputError, match="no targets"):
        run_probe(
            {"truth": truth}, [covariance_set("x", measured), covariance_set("cov", cov)], covariance="cov"
        )


# ------------------------------------------------------------------------------ end to end (CLI)

PROJECT = """
[models.smf_emulator]
factory = "model_audit_probes.emulator.toy:smf_emulator"
kwargs = { epochs = 400 }
[models.smf_polynomial]
factory = "model_audit_probes.emulator.toy:smf_polynomial"
kwargs = { degree = 1 }
[datasets.smf_test]
factory = "model_audit_probes.emulator.toy:smf_boxes"
kwargs = { n = 300, seed = 0 }
targets = "targets"
[datasets.smf_errors]
factory = "model_audit_probes.emulator.toy:smf_errors"

[[probes]]
probe = "emulator"
models = ["smf_emulator", "smf_polynomial"]
datasets = ["smf_test", "smf_errors"]
params = { covariance = "smf_errors", stored = "log10", baseline = "smf_polynomial" }

[[gates]]
probe = "emulator"
metric = "chi2_mean_ratio"
model = "smf_emulator"
max = 0.5

[[gates]]
probe = "emulator"
metric = "chi2_mean"
model = "smf_polynomial"
max = 2
"""


def test_toy_emulators_run_on_the_device_of_their_inputs(device):
    """The toy models build nothing on the CPU inside forward: on CUDA the demo's emulator job failed with
    "Expected all tensors to be on the same device" (issue 17). Same outputs as on the CPU up to float32
    rounding, which CUDA's pow and matmul do differently: the degree-3 polynomial sums 34 monomials |z^e| ≤ 1
    with Σ|w| ≈ 12 per bin, so the two differ by at most ~34 · 12 · 2⁻²³ ≈ 5e-5 (the MLP by less)."""
    theta = torch.from_numpy(toy.smf_boxes(64, seed=2)["inputs"])
    for model in (toy.smf_polynomial(degree=3), toy.smf_emulator(epochs=5)):
        expected = model(theta)
        with torch.no_grad():
            got = model.to(device)(theta.to(device))
        assert got.device.type == torch.device(device).type
        torch.testing.assert_close(got.cpu(), expected.detach(), rtol=0, atol=1e-4)


def test_cli_run_and_gate_on_the_toy_project(tmp_path, device):
    (tmp_path / "audit.toml").write_text(PROJECT)
    # the executors are tested on their own
    run = audit_cli("run", "--executor", "inline", "--device", str(device), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = audit_cli(
        "query",
        "select model, metric, value from metrics where probe = 'emulator' and metric = 'chi2_mean' order by model",
        "--format",
        "csv",
        cwd=tmp_path,
    )
    lines = rows.stdout.strip().splitlines()[1:]
    chi = {line.split(",")[0]: float(line.split(",")[2]) for line in lines}
    assert chi["smf_emulator"] < chi["smf_polynomial"]  # a trained MLP beats a linear fit in θ
    gate = audit_cli("gate", "--markdown", str(tmp_path / "gates.md"), cwd=tmp_path)
    assert gate.returncode == 1  # the linear baseline fails its χ² gate; the emulator passes its ratio gate
    md = (tmp_path / "gates.md").read_text()
    assert "chi2_mean_ratio" in md and "smf_polynomial" in md and "fail" in md.lower()


def test_cli_unknown_parameter_is_one_line_exit_2(tmp_path):
    (tmp_path / "audit.toml").write_text(PROJECT.replace('stored = "log10"', 'stored = "log"'))
    run = audit_cli("run", cwd=tmp_path)
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and "stored" in run.stderr


def test_figures_draw_from_the_stored_arrays_alone(boxes):
    from datetime import datetime

    from audit.api.results import ResultView, StoredMetric
    from model_audit_probes.emulator.figures import render

    truth, measured, cov = boxes
    result = run_probe(
        {"truth": truth, "poor": truth + 0.1},
        [held_out("boxes", measured), covariance_set("cov", cov)],
        covariance="cov",
        stored="log10",
        baseline="poor",
    )
    view = ResultView(
        "r1", "run1", "emulator", EmulatorProbe.version, {}, ("truth", "poor"), ("boxes", "cov"), "ok", None,
        (), datetime.now(), 1.0, "cpu",
        tuple(StoredMetric(m.name, m.value, m.model, m.dataset) for m in result.metrics),
        lambda: {k: v.copy() for k, v in result.arrays.items()},
    )  # fmt: skip
    figures = render(view)
    assert len(figures) == 1 and figures[0].dataset == "boxes"
    assert figures[0].png.startswith(b"\x89PNG") and len(figures[0].png) > 10_000
