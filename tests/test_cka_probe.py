"""The `cka` probe through a hand-made Context: no CLI, no catalog."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from audit.api.context import Context, DatasetHandle, ModelHandle
from audit.api.errors import ProbeInputError
from model_audit_probes.cka.hsic import MinibatchCKA
from model_audit_probes.cka.probe import CKAProbe


def mlp(seed: int, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, out)).eval()


def data(name: str, x: np.ndarray, y: np.ndarray | None, task: str | None) -> DatasetHandle:
    def batches(bs, device):  # onto the job's device, as the runner's datasets do
        for s in range(0, len(x), bs):
            yield (
                torch.from_numpy(x[s : s + bs]).to(device),
                None if y is None else torch.from_numpy(y[s : s + bs]).to(device),
            )

    return DatasetHandle(name, name, len(x), task, y is not None, batches)


def ctx(models, datasets, device="cpu") -> Context:
    handles = [ModelHandle(f"m{i}", f"fp{i}", (lambda m=m: m.to(device))) for i, m in enumerate(models)]
    return Context(handles, datasets, torch.device(device), seed=0)


def run(models, datasets, device="cpu", **params):
    probe = CKAProbe()
    return probe.run(ctx(models, datasets, device), probe.validate_params(params))


def metrics(result, dataset=None, model=None):
    return {m.name: m.value for m in result.metrics if m.dataset == dataset and m.model == model}


RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 5)).astype(np.float32)
Y_CLS = RNG.integers(0, 3, size=300)


def test_single_model_matrix_equals_direct_accumulation_of_its_layers(device):
    model = mlp(0)
    result = run(
        [model], [data("d", X, Y_CLS, "classification")], device, batch_size=64, gram_dtype="float64"
    )
    layers = list(result.arrays["layers"])
    assert layers == ["0", "2", "4", "output"]
    acc = MinibatchCKA(4, gram_dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, 300, 64):
            xb = torch.from_numpy(X[s : s + 64]).to(device)
            h0 = model[0](xb)
            h2 = model[2](model[1](h0))
            h4 = model[4](model[3](h2))
            acc.update([h0, h2, h4, h4])
    np.testing.assert_allclose(result.arrays["matrix"], acc.matrix(), rtol=1e-9)
    assert result.arrays["matrix"][2, 3] == pytest.approx(1.0)  # last Linear is the output
    m = metrics(result)
    assert m["layers"] == 4 and m["examples_used"] == 300
    with torch.no_grad():
        expected_acc = (model(torch.from_numpy(X).to(device)).argmax(1).cpu().numpy() == Y_CLS).mean()
    assert m["accuracy"] == pytest.approx(expected_acc)
    assert np.all(np.isfinite(result.arrays["eigenvalues"]))


def test_id_ood_pair_stores_both_matrices_and_their_contrast(device):
    ood = (X * 3 + 1).astype(np.float32)
    result = run(
        [mlp(0)],
        [data("id", X, Y_CLS, "classification"), data("ood", ood, Y_CLS, "classification")],
        device,
        batch_size=100,
    )
    assert {"matrix_id", "matrix_ood", "eigenvalues_id", "eigenvalues_ood"} <= set(result.arrays)
    mid, mood, joint = metrics(result, "id"), metrics(result, "ood"), metrics(result)
    assert joint["delta_offdiag_mean"] == pytest.approx(mood["offdiag_mean"] - mid["offdiag_mean"])
    assert joint["delta_eig_1"] == pytest.approx(mood["eig_1"] - mid["eig_1"])
    diff = result.arrays["matrix_ood"] - result.arrays["matrix_id"]
    assert joint["frobenius_delta"] == pytest.approx(np.sqrt((diff**2).sum()) / 4)
    assert "accuracy" in mid and "accuracy" in mood


def test_model_against_itself_has_unit_diagonal_and_against_another_does_not(device):
    same = run([mlp(0), mlp(0)], [data("d", X, None, None)], device, batch_size=64)
    np.testing.assert_allclose(np.diag(same.arrays["matrix"]), 1.0, atol=1e-6)
    assert metrics(same)["cross_diag_mean"] == pytest.approx(1.0, abs=1e-6)
    other = run([mlp(0), mlp(1)], [data("d", X, None, None)], device, batch_size=64)
    assert metrics(other)["cross_diag_mean"] < 0.99
    assert list(other.arrays["layers_a"]) == list(other.arrays["layers_b"])


def test_regression_targets_give_r2_per_target(device):
    y = (X[:, :2] * [1.0, -2.0]).astype(np.float32)
    result = run(
        [mlp(0, out=2)], [data("d", X, y, "regression")], device, batch_size=64, layers=["0", "output"]
    )
    m = metrics(result)
    assert {"r2_0", "r2_1", "r2_mean"} <= set(m)
    assert list(result.arrays["layers"]) == ["0", "output"]


def test_dead_layer_is_flagged_by_name(device):
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(1.0)
    result = run([model], [data("d", X, None, None)], device, batch_size=64)
    # layer 0 is constant, so is everything after it: all three flagged, deterministically
    assert metrics(result)["nonpositive_self_hsic_layers"] == 3
    assert any("layer(s) 0, 1, output" in w for w in result.warnings)
    assert np.isnan(result.arrays["matrix"]).all()


def test_small_but_real_variation_is_not_mistaken_for_a_dead_layer(device):
    x = (1.0 + 1e-3 * RNG.normal(size=(64, 5))).astype(np.float32)
    result = run(
        [nn.Sequential(nn.Identity(), nn.Linear(5, 2))], [data("d", x, None, None)], device, layers=["0", "1"]
    )
    assert metrics(result)["nonpositive_self_hsic_layers"] == 0
    assert result.arrays["matrix"][0, 0] == pytest.approx(1.0)


def test_too_few_examples_and_bad_layer_patterns_are_input_errors():
    with pytest.raises(ProbeInputError, match="at least 4"):
        run([mlp(0)], [data("tiny", X[:3], None, None)])
    with pytest.raises(ProbeInputError, match="matches no module"):
        run([mlp(0)], [data("d", X, None, None)], layers=["encoder.*"])


def test_two_models_and_two_datasets_is_refused_at_planning_time():
    assert "not both" in CKAProbe().check_job(2, 2)
    assert CKAProbe().check_job(1, 2) is None
