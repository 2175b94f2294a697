"""The `entk` probe's run through a hand-made Context (no CLI, no catalog), on every available device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.api.context import Context, DatasetHandle, ModelHandle
from model_audit_probes.entk.probe import ENTKProbe


def blobs(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes in 6 dimensions: class c moves coordinate c by 2 (`shift` moves everything: OOD)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6))
    x[np.arange(n), y] += 2.0
    return (x + shift).astype(np.float32), y


def dataset(name: str, x: np.ndarray, y: np.ndarray) -> DatasetHandle:
    def batches(bs, device):  # onto the job's device, as the runner's datasets do
        for s in range(0, len(x), bs):
            yield torch.from_numpy(x[s : s + bs]).to(device), torch.from_numpy(y[s : s + bs]).to(device)

    return DatasetHandle(name, f"fp-{name}", len(x), "classification", True, batches)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    """A float32 MLP trained for a moment on the training blobs (on the CPU; tests move a copy)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = (torch.from_numpy(a) for a in blobs(120, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def run(model: nn.Module, device, **params):
    datasets = [
        dataset("train", *blobs(120, 1)),
        dataset("id", *blobs(60, 2)),
        dataset("ood", *blobs(60, 3, 1.5)),
    ]
    ctx = Context([ModelHandle("m", "fp-m", lambda: model)], datasets, torch.device(device), seed=0)
    probe = ENTKProbe()
    return probe.run(ctx, probe.validate_params({"max_examples": 64, **params}))


def by_name(result) -> dict[tuple[str, str | None], float]:
    return {(m.name, m.dataset): m.value for m in result.metrics}


def test_the_probe_runs_on_the_device_in_both_precisions_and_leaves_the_model_alone(trained, device):
    import copy

    model = copy.deepcopy(trained).to(device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r32, r64 = run(model, device), run(model, device, precision="float64")
    for r in (r32, r64):
        m = by_name(r)
        assert not r.warnings
        assert all(np.isfinite(v) for k, v in m.items() if not k[0].endswith(("alpha", "ks", "xmin")))
        for d in ("id", "ood"):
            assert {("kglm_tad", d), ("network_accuracy", d), ("kernel_regression_accuracy", d)} <= set(m)
        assert r.arrays["sizes"].tolist() == [64, 60, 60]
    # the model the user handed over: still float32, on its device, its weights unchanged
    assert all(
        p.dtype == torch.float32 and p.device.type == torch.device(device).type for p in model.parameters()
    )
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # float32 vs float64 kernels of this MLP differ by float32 rounding (≤ 1e-5 of max |K| per entry, see
    # test_entk_kernels.FLOAT32_TOL), so by Weyl's inequality each eigenvalue moves by at most
    # ‖ΔK‖₂ ≤ n·max|ΔK| ≤ 64·1e-5·λ_max (the trace kernel is PSD: max |K| ≤ λ_max)
    e32, e64 = r32.arrays["ntk_eigenvalues"], r64.arrays["ntk_eigenvalues"]
    assert np.abs(e32 - e64).max() <= 64 * 1e-5 * e64.max()
    m32, m64 = by_name(r32), by_name(r64)
    assert m32[("ntk_effective_rank", None)] == pytest.approx(m64[("ntk_effective_rank", None)], rel=1e-3)
    # the network's own outputs come from the loaded model in both runs: identical accuracies
    for d in ("id", "ood"):
        assert m32[("network_accuracy", d)] == m64[("network_accuracy", d)]


@pytest.mark.parametrize("mode", ["projected", "subsampled"])
def test_approximate_modes_run_on_the_device(trained, device, mode):
    import copy

    model = copy.deepcopy(trained).to(device)
    r = run(model, device, mode=mode, projection_dim=64, subsample_params=100, precision="float64")
    assert np.isfinite(by_name(r)[("ntk_effective_rank", None)])


def test_precision_and_budget_parameters_are_validated():
    probe = ENTKProbe()
    params = probe.validate_params({})
    assert params["precision"] == "float32" and params["memory_budget_mb"] == 0  # 0: from the device
    with pytest.raises(ValueError, match="precision: expected one of 'float32', 'float64'"):
        probe.validate_params({"precision": "float16"})
    with pytest.raises(ValueError, match="memory_budget_mb: expected a value >= 0"):
        probe.validate_params({"memory_budget_mb": -1})


def test_declared_precisions_are_the_kernels_precisions():
    """The probe declares its `precision` choices without importing torch; they must be the kernels' dtypes."""
    from model_audit_probes.entk import kernels
    from model_audit_probes.entk.probe import PRECISIONS

    assert set(PRECISIONS) == set(kernels.PRECISIONS)
