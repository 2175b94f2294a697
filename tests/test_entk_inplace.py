"""eNTK kernels on models that write layer outputs (or inputs) in place, against independent float64
references: the same weights with every in-place write made out of place, and per-sample torch.func
Jacobians (``method="jacobian"``).

Why: the fast routes keep each dense/conv layer's output from a forward hook and differentiate with respect
to it; an in-place op after the layer (``nn.ReLU(inplace=True)``, ``out += identity``, ``x.relu_()``) used
to rebase that tensor onto the op, dropping its Jacobian (the ReLU mask) — 1–45 % off, silently.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model_audit_probes.entk import kernels
from model_audit_probes.entk.kernels import (
    conjugate_kernel,
    empirical_ntk,
    kernel_from_features,
    ntk_diagonal,
    plan_routes,
    projected_gradients,
    select_outputs,
    subsampled_gradients,
)
from model_audit_probes.entk.probe import ENTKProbe, _parse_output

RESNET_PATH = Path(__file__).resolve().parents[1] / "examples" / "08_resnet_cka_ood" / "resnet.py"
TOL = 1e-10  # float64, relative (Frobenius)


def _load_resnet():
    spec = importlib.util.spec_from_file_location("entk_inplace_resnet", RESNET_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


resnet = _load_resnet()


class OutOfPlaceBlock(resnet.BasicBlock):
    """torchvision's BasicBlock with the residual add written out of place (and ReLUs made out of place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)  # called in torchvision's order
        return torch.relu(out + identity)


def out_of_place(model: nn.Module) -> nn.Module:
    """The independent reference: a deep copy with every `inplace` flag off and out-of-place residual adds."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
        if type(m) is resnet.BasicBlock:
            m.__class__ = OutOfPlaceBlock
    return twin


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


# ---------------------------------------------------------------- small models, one in-place pattern each


class LinearReLU(nn.Module):
    """Linear → ReLU(inplace=True): the ReLU overwrites the first layer's output."""

    def __init__(self):
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


class ConvReLU(nn.Module):
    """Conv2d → ReLU(inplace=True) twice (a VGG-style stack without normalisation)."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, stride=2)
        self.act, self.fc = nn.ReLU(inplace=True), nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        return self.fc(self.act(self.c2(self.act(self.c1(x)))).flatten(1))


class Residual(nn.Module):
    """A residual block whose conv output takes `out += identity`, then a functional in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.inplace = True
        self.c1, self.c2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        out = self.c2(torch.tanh(self.c1(x)))
        if self.inplace:
            out += x
            out = out.relu_()
        else:
            out = torch.relu(out + x)
        return self.fc(out.flatten(1))


class BatchNormReLU(nn.Module):
    """Conv2d → BatchNorm2d (eval, non-trivial statistics) → ReLU(inplace=True)."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.act, self.fc = nn.ReLU(inplace=True), nn.Linear(3 * 5 * 5, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


def _build(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().double().eval()


SMALL = {
    "linear-relu": (LinearReLU, (5,)),
    "conv-relu": (ConvReLU, (2, 5, 5)),
    "residual": (Residual, (2, 5, 5)),
    "batchnorm-relu": (BatchNormReLU, (2, 5, 5)),
}


def _inputs(shape: tuple[int, ...], n: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, *shape)))


@pytest.fixture(params=list(SMALL), name="small")
def _small(request):
    cls, shape = SMALL[request.param]
    model = _build(cls)
    return model, out_of_place(model), _inputs(shape, 6, 0), _inputs(shape, 4, 1)


def test_the_small_models_take_the_fast_routes(small):
    model, _, x, _ = small
    routes = plan_routes(model, x)
    assert routes.dense or routes.conv


@pytest.mark.parametrize("output", ["trace", 1, "sum"])
def test_kernel_and_diagonal_equal_the_out_of_place_jacobian_reference(small, output):
    model, twin, x1, x2 = small
    ref = empirical_ntk(twin, torch.cat([x1, x2]), output=output, method="jacobian")
    assert rel(empirical_ntk(model, torch.cat([x1, x2]), output=output), ref) < TOL
    assert rel(empirical_ntk(model, x1, x2, output=output), ref[:6, 6:]) < TOL
    assert rel(empirical_ntk(model, x1, output=output, chunk_size=2), ref[:6, :6]) < TOL
    assert rel(ntk_diagonal(model, x1, output=output), ref.diagonal()[:6]) < TOL
    # the in-place model's own Jacobian route agrees too (torch.func differentiates through in-place ops)
    assert rel(empirical_ntk(model, x1, x2, output=output, method="jacobian"), ref[:6, 6:]) < TOL


def test_explicit_and_pair_conv_routes_both_survive_in_place_writes(small, monkeypatch):
    model, twin, x1, _ = small
    ref = empirical_ntk(twin, x1, method="jacobian")
    for penalty in (0, 10**12):  # every conv layer explicit / every one in the pair form
        monkeypatch.setattr(kernels, "EXPLICIT_PENALTY", penalty)
        for budget in (1, 10**9):  # gradients streamed (generic pass) / inline in the capture pass
            assert rel(empirical_ntk(model, x1, memory_budget=budget), ref) < TOL


def test_feature_maps_equal_the_out_of_place_ones(small):
    model, twin, x1, _ = small
    n_params = sum(p.numel() for p in model.parameters())
    ref = empirical_ntk(twin, x1, method="jacobian")
    # every parameter kept: the √(P/k) scale is 1 and the kernel is exact
    sub = subsampled_gradients(model, x1, k=n_params, chunk_size=4)
    assert rel(kernel_from_features(sub), ref) < TOL
    for seed, k in ((1, n_params // 3), (2, 64)):
        f, g = subsampled_gradients(model, x1, k, seed=seed), subsampled_gradients(twin, x1, k, seed=seed)
        assert rel(f, g) < TOL
        f, g = projected_gradients(model, x1, k, seed=seed), projected_gradients(twin, x1, k, seed=seed)
        assert rel(f, g) < TOL  # same seed, same P: the same projection of the same gradients


def test_the_in_place_writes_are_found_once_per_call(monkeypatch):
    # the second forward that copies the written taps is paid on the first chunk only
    model, x = _build(LinearReLU), _inputs((5,), 9, 2)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: calls.append(x.shape[0]) or forward(x))
    kernels.subsampled_gradients(model, x, 10, chunk_size=3)
    assert calls.count(3) == 3 + 1  # three chunks, and the first one again with the copies


def test_models_without_in_place_writes_copy_nothing():
    model = out_of_place(_build(ConvReLU))
    routes = plan_routes(model, _inputs((2, 5, 5), 2, 0))
    taps = kernels._Taps(list(routes.dense + routes.conv))
    kernels._capture(model, _inputs((2, 5, 5), 3, 0), taps.layers, "trace", taps)
    assert taps.copies == set()
    taps = kernels._Taps(list(routes.dense + routes.conv))
    kernels._capture(_build(ConvReLU), _inputs((2, 5, 5), 3, 0), taps.layers, "trace", taps)
    assert taps.copies == {("c1", "out"), ("c2", "out")}


class HeadInputWritten(nn.Module):
    """Inference code that reuses the penultimate buffer after the head read it (no autograd involved)."""

    def __init__(self):
        super().__init__()
        self.inplace = True
        self.body, self.head = nn.Linear(5, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        y = self.head(h)
        if self.inplace:
            h.zero_()
        return y


def test_conjugate_kernel_inputs_written_in_place_later_are_copied():
    model, x = _build(HeadInputWritten), _inputs((5,), 7, 3)
    with torch.no_grad():
        h = torch.tanh(model.body(x))
    ref = h @ h.T
    assert rel(conjugate_kernel(model, x), ref) < TOL
    assert rel(kernels.layer_inputs(model, x, "head", batch_size=3), h) < TOL
    with torch.inference_mode():  # inference tensors carry no version counter: always copied
        assert rel(conjugate_kernel(model, x), ref) < TOL


# ---------------------------------------------------------------- ResNet-18 as torchvision defines it


@pytest.fixture(scope="module", name="resnet18")
def _resnet18():
    torch.manual_seed(0)
    model = resnet.resnet18(num_classes=10).double().eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # eval-mode BatchNorm that is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g, dtype=torch.float64))
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    x = torch.from_numpy(np.random.default_rng(7).normal(size=(4, 3, 32, 32)))
    return model, out_of_place(model), x


@pytest.mark.slow
def test_resnet18_kernel_and_diagonal_equal_the_out_of_place_jacobian(resnet18):
    model, twin, x = resnet18
    assert type(model.layer1[0]) is resnet.BasicBlock and type(twin.layer1[0]) is OutOfPlaceBlock
    ref = empirical_ntk(twin, x, output=3, method="jacobian")
    assert rel(empirical_ntk(model, x, output=3), ref) < TOL
    assert rel(ntk_diagonal(model, x, output=3), ref.diagonal()) < TOL


@pytest.mark.slow
def test_resnet18_features_equal_the_out_of_place_ones(resnet18):
    model, twin, x = resnet18
    f = subsampled_gradients(model, x, 100_000, seed=3, output=-1)
    assert rel(f, subsampled_gradients(twin, x, 100_000, seed=3, output=9)) < TOL
    # the projection costs O(P log P) per row: project a copy whose deep stages are frozen (P ≈ 160k)
    shallow = copy.deepcopy(model)
    for stage in (shallow.layer2, shallow.layer3, shallow.layer4):
        stage.requires_grad_(False)
    f = projected_gradients(shallow, x, 256, seed=3, output=-1)
    assert rel(f, projected_gradients(out_of_place(shallow), x, 256, seed=3, output=9)) < TOL
    assert rel(conjugate_kernel(model, x), conjugate_kernel(twin, x)) < TOL


# ---------------------------------------------------------------- negative logit indices


def test_negative_output_index_selects_from_the_end():
    out = torch.arange(12.0).reshape(3, 4)
    for i in range(-4, 4):
        np.testing.assert_array_equal(select_outputs(out, i), out[:, [i]])
    with pytest.raises(ValueError, match="out of range"):
        select_outputs(out, -5)


@pytest.mark.parametrize("mode", ["exact", "projected", "subsampled"])
def test_probe_output_minus_one_is_the_last_logit(small, mode):
    model, _, x, _ = small
    params = {
        "mode": mode,
        "memory_budget_mb": 16,
        "projection_dim": 32,
        "subsample_params": 40,
        "precision": "float64",  # the models here are float64: the kernels stay in it
    }
    assert _parse_output("-1") == -1
    last = ENTKProbe._kernel(model, x, _parse_output("-1"), params, 5)
    assert last.shape == (6, 6) and last.diagonal().min() > 0
    np.testing.assert_allclose(last, ENTKProbe._kernel(model, x, 2, params, 5), rtol=1e-12, atol=0)
    jac = empirical_ntk(model, x, output=-1, method="jacobian")
    if mode == "exact":
        assert rel(last, jac) < TOL
