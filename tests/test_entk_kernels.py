"""eNTK kernels against closed forms and against the plain per-sample-Jacobian computation, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_audit_probes.entk import kernels
from model_audit_probes.entk.kernels import (
    conjugate_kernel,
    empirical_ntk,
    kernel_from_features,
    normalise,
    ntk_diagonal,
    plan_routes,
    projected_gradients,
    structured_layers,
    subsampled_gradients,
)


def reference_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor, output="trace") -> torch.Tensor:
    """Written from the definition: full Jacobians by one backward per (example, output), then J1 J2ᵀ."""

    def jac(x):
        rows = []
        for i in range(x.shape[0]):
            out = model(x[i : i + 1]).reshape(-1)
            outs = {"trace": out, "sum": out.sum().reshape(1)}.get(
                output, out[output : output + 1] if isinstance(output, int) else None
            )
            per_out = []
            for c in range(outs.shape[0]):
                g = torch.autograd.grad(outs[c], list(model.parameters()), retain_graph=True)
                per_out.append(torch.cat([t.reshape(-1) for t in g]))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)  # (n, C', P)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("aop,bop->ab", j1, j2)


def mlp(seed=0, out=3, width=7):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, width), nn.Tanh(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out)
    ).double()


class Mixed(nn.Module):
    """A conv front end (generic route), a dense layer used twice (generic), then dense layers (structured)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv1d(1, 2, 3)
        self.norm = nn.LayerNorm(8)
        self.shared = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.conv(x.unsqueeze(1)).flatten(1)  # (n, 2·4)
        h = self.norm(h)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.head(h)


X = torch.from_numpy(np.random.default_rng(0).normal(size=(9, 4)))
X2 = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 4)))
X6 = torch.from_numpy(np.random.default_rng(2).normal(size=(7, 6)))


def test_linear_model_ntk_is_the_input_gram_plus_one():
    lin = nn.Linear(4, 1).double()
    np.testing.assert_allclose(empirical_ntk(lin, X), X @ X.T + 1, atol=1e-12)
    nob = nn.Linear(4, 3, bias=False).double()
    np.testing.assert_allclose(empirical_ntk(nob, X), 3 * (X @ X.T), atol=1e-12)  # trace: sum over 3 outputs
    np.testing.assert_allclose(empirical_ntk(nob, X, output=1), X @ X.T, atol=1e-12)


def test_two_layer_closed_form_matches_autograd_to_1e10():
    """f(x) = vᵀφ(Wx)/√h: K = (XXᵀ) ⊙ (φ'(U) diag(v)² φ'(U)ᵀ)/h + φ(U)φ(U)ᵀ/h, U = XWᵀ (standard params)."""
    d, h = 4, 11

    class TwoLayer(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(5)
            self.w = nn.Linear(d, h, bias=False)
            self.v = nn.Linear(h, 1, bias=False)

        def forward(self, x):
            return self.v(torch.tanh(self.w(x))) / h**0.5

    net = TwoLayer().double()
    w, v = net.w.weight.detach(), net.v.weight.detach().reshape(-1)
    u = X @ w.T
    dphi = 1 - torch.tanh(u) ** 2
    closed = (X @ X.T) * ((dphi * v**2) @ dphi.T) / h + torch.tanh(u) @ torch.tanh(u).T / h
    for method in ("auto", "jacobian"):
        np.testing.assert_allclose(empirical_ntk(net, X, method=method), closed, rtol=0, atol=1e-10)


@pytest.mark.parametrize("output", ["trace", "sum", 2])
def test_structured_and_jacobian_routes_equal_the_definition(output):
    net = mlp()
    ref = reference_ntk(net, X, X2, output)
    for method in ("auto", "jacobian"):
        np.testing.assert_allclose(empirical_ntk(net, X, X2, output=output, method=method), ref, atol=1e-10)
    assert structured_layers(net, X) == ["0", "2", "4"]


def test_mixed_model_uses_both_routes_and_matches_the_definition():
    net = Mixed().double()
    assert structured_layers(net, X6) == ["head"]  # `shared` is called twice: the generic route takes it
    ref = reference_ntk(net, X6, X6)
    np.testing.assert_allclose(empirical_ntk(net, X6), ref, atol=1e-10)
    np.testing.assert_allclose(empirical_ntk(net, X6, chunk_size=2, method="jacobian"), ref, atol=1e-10)


def test_kernel_is_symmetric_psd_and_chunking_changes_nothing():
    net = mlp(out=4)
    k = empirical_ntk(net, X)
    np.testing.assert_allclose(k, k.T, atol=1e-12)
    assert torch.linalg.eigvalsh(k).min() > -1e-10 * k.diagonal().max()
    np.testing.assert_allclose(empirical_ntk(net, X, chunk_size=2), k, atol=1e-12)
    np.testing.assert_allclose(empirical_ntk(net, X, method="jacobian", memory_budget=1), k, atol=1e-10)
    np.testing.assert_allclose(ntk_diagonal(net, X), k.diagonal(), atol=1e-12)


def test_trntk_normalisation_has_a_unit_diagonal_and_cross_blocks_agree():
    net = mlp()
    k = empirical_ntk(net, torch.cat([X, X2]))
    tr = normalise(k, k.diagonal())
    np.testing.assert_allclose(tr.diagonal(), 1.0, atol=1e-12)
    cross = normalise(empirical_ntk(net, X, X2), ntk_diagonal(net, X), ntk_diagonal(net, X2))
    np.testing.assert_allclose(cross, tr[:9, 9:], atol=1e-12)
    assert tr.abs().max() <= 1 + 1e-12  # Cauchy–Schwarz


def test_projected_kernel_is_within_the_johnson_lindenstrauss_error():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 3)).double()
    exact = empirical_ntk(net, X)
    scale = exact.diagonal().mean()
    errors = []
    for k in (64, 1024):
        f = projected_gradients(net, X, k, seed=1)
        errors.append(float((kernel_from_features(f) - exact).abs().max() / scale))
    assert errors[1] < 4 / 1024**0.5  # JL: relative error ~ 1/√k
    assert errors[1] < errors[0]
    again = projected_gradients(net, X, 64, seed=1)  # the projection is a function of the seed
    np.testing.assert_array_equal(again, projected_gradients(net, X, 64, seed=1))
    f1, f2 = projected_gradients(net, X, 256, seed=3), projected_gradients(net, X2, 256, seed=3)
    cross = kernel_from_features(f1, f2) / empirical_ntk(net, X, X2).abs().max()
    assert (cross - empirical_ntk(net, X, X2) / empirical_ntk(net, X, X2).abs().max()).abs().max() < 0.5


def test_subsampled_kernel_is_unbiased_and_exact_when_all_parameters_are_kept():
    net = mlp()
    exact = empirical_ntk(net, X)
    n_params = sum(p.numel() for p in net.parameters())
    full = subsampled_gradients(net, X, k=10**6, seed=0)
    assert full.shape == (9, 3, n_params)
    np.testing.assert_allclose(kernel_from_features(full), exact, atol=1e-10)
    mean = sum(kernel_from_features(subsampled_gradients(net, X, k=60, seed=s)) for s in range(200)) / 200
    assert float((mean - exact).abs().max() / exact.abs().max()) < 0.15


def test_conjugate_kernel_is_the_gram_of_the_last_dense_layers_inputs():
    net = mlp()
    with torch.no_grad():
        h = net[3](net[2](net[1](net[0](X))))
    np.testing.assert_allclose(conjugate_kernel(net, X), h @ h.T, atol=1e-12)
    with torch.no_grad():
        h2 = net[3](net[2](net[1](net[0](X2))))
    np.testing.assert_allclose(conjugate_kernel(net, X, X2), h @ h2.T, atol=1e-12)


def test_bad_output_selection_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        empirical_ntk(mlp(), X, output=5)
    with pytest.raises(ValueError, match="'trace', 'sum'"):
        empirical_ntk(mlp(), X, output="mean")


class SmallCNN(nn.Module):
    """Conv2d layers of every unfold-able kind (stride, dilation, 'same', no bias), one grouped conv (generic
    route), a BatchNorm (generic route) and a dense head (structured route)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        torch.manual_seed(5)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, dilation=1, padding=(1, 0), bias=False)
        self.c3 = nn.Conv2d(4, 6, 2, padding="valid")
        self.c4 = nn.Conv2d(6, 6, 3, padding="same", dilation=2)
        self.grouped = nn.Conv2d(6, 6, 1, groups=2)
        self.norm = nn.BatchNorm2d(6).eval()
        self.head = nn.Linear(6 * 2 * 2, classes)

    def forward(self, x):
        h = torch.tanh(self.c1(x))
        h = torch.relu(self.c2(h))
        h = torch.tanh(self.c4(self.c3(h)))
        h = self.norm(self.grouped(h))
        return self.head(h.flatten(1))


XC = torch.from_numpy(np.random.default_rng(4).normal(size=(7, 2, 6, 7)))
XC2 = torch.from_numpy(np.random.default_rng(5).normal(size=(4, 2, 6, 7)))


def test_conv_layers_take_the_gemm_route_and_match_the_definition():
    net = SmallCNN().double()
    routes = plan_routes(net, XC)
    assert routes.conv == ("c1", "c2", "c3", "c4") and routes.dense == ("head",)
    assert set(routes.generic) == {"grouped.weight", "grouped.bias", "norm.weight", "norm.bias"}
    ref = reference_ntk(net, XC, XC)
    np.testing.assert_allclose(empirical_ntk(net, XC), ref, atol=1e-10)
    for output in ("sum", 1):
        np.testing.assert_allclose(
            empirical_ntk(net, XC, XC2, output=output), reference_ntk(net, XC, XC2, output), atol=1e-10
        )
    np.testing.assert_allclose(ntk_diagonal(net, XC), ref.diagonal(), atol=1e-10)


@pytest.mark.parametrize("budget", [1, 3_000, 20_000, 10**9])
def test_uneven_blocking_covers_every_pair_once(budget):
    # budgets from one example per block to everything at once, symmetric and cross kernels
    net = SmallCNN().double()
    xs = torch.cat([XC, XC2, XC])
    ref = reference_ntk(net, xs, xs)
    np.testing.assert_allclose(empirical_ntk(net, xs, memory_budget=budget), ref, atol=1e-10)
    np.testing.assert_allclose(empirical_ntk(net, xs[:5], xs, memory_budget=budget), ref[:5], atol=1e-10)


def test_projection_with_every_coordinate_kept_is_exact():
    # k = m (the padded length) keeps every coordinate of an orthogonal transform: the kernel is exact
    net = SmallCNN().double()
    n_params = sum(p.numel() for p in net.parameters())
    m = 1 << (n_params - 1).bit_length()
    f = projected_gradients(net, XC, m, seed=2)
    np.testing.assert_allclose(kernel_from_features(f), reference_ntk(net, XC, XC), atol=1e-9)
    sub = subsampled_gradients(net, XC, k=10**6)
    np.testing.assert_allclose(kernel_from_features(sub), reference_ntk(net, XC, XC), atol=1e-10)


@pytest.mark.parametrize("penalty", [0, 10**12])
def test_conv_pair_route_and_explicit_route_agree_with_the_definition(monkeypatch, penalty):
    # penalty 0: every conv layer as explicit per-sample gradients; 10**12: every one in the pair form
    monkeypatch.setattr(kernels, "EXPLICIT_PENALTY", penalty)
    net = SmallCNN().double()
    pairs = kernels._pair_route_convs(net, XC, plan_routes(net, XC).conv, 3)
    assert pairs == ([] if penalty == 0 else ["c1", "c2", "c3", "c4"])
    xs = torch.cat([XC, XC2])
    ref = reference_ntk(net, xs, xs)
    for budget in (1, 10**9):
        np.testing.assert_allclose(empirical_ntk(net, xs, memory_budget=budget), ref, atol=1e-10)
        np.testing.assert_allclose(empirical_ntk(net, XC2, xs, memory_budget=budget), ref[7:], atol=1e-10)
    np.testing.assert_allclose(
        empirical_ntk(net, xs, output=2, chunk_size=3), reference_ntk(net, xs, xs, 2), atol=1e-10
    )


def test_a_layer_vmap_cannot_batch_falls_back_to_one_example_at_a_time():
    """nn.GRU writes its hidden state in place, which vmap's batching rules refuse: the per-sample
    Jacobians are then taken one example at a time and still equal the definition."""

    class GRUClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 5)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            out, _ = self.rnn(x.transpose(0, 1))
            return self.head(out[-1])

    torch.manual_seed(0)
    model = GRUClassifier().double().eval()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    got = empirical_ntk(model, x, output="trace")
    torch.testing.assert_close(got, reference_ntk(model, x, x), rtol=1e-10, atol=1e-12)
