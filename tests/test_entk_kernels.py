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
def test_structured_and_jacobian_routes_equal_the_definition(output, device):
    net, x, x2 = mlp().to(device), X.to(device), X2.to(device)
    ref = reference_ntk(net, x, x2, output).cpu()
    for method in ("auto", "jacobian"):
        k = empirical_ntk(net, x, x2, output=output, method=method)
        assert k.device == x.device
        np.testing.assert_allclose(k.cpu(), ref, atol=1e-10)
    assert structured_layers(net, x) == ["0", "2", "4"]


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


def test_conv_layers_take_the_gemm_route_and_match_the_definition(device):
    net, xc, xc2 = SmallCNN().double().to(device), XC.to(device), XC2.to(device)
    routes = plan_routes(net, xc)
    assert routes.conv == ("c1", "c2", "c3", "c4") and routes.dense == ("head",)
    assert set(routes.generic) == {"grouped.weight", "grouped.bias", "norm.weight", "norm.bias"}
    ref = reference_ntk(net, xc, xc).cpu()
    np.testing.assert_allclose(empirical_ntk(net, xc).cpu(), ref, atol=1e-10)
    for output in ("sum", 1):
        np.testing.assert_allclose(
            empirical_ntk(net, xc, xc2, output=output).cpu(),
            reference_ntk(net, xc, xc2, output).cpu(),
            atol=1e-10,
        )
    np.testing.assert_allclose(ntk_diagonal(net, xc).cpu(), ref.diagonal(), atol=1e-10)


@pytest.mark.parametrize("budget", [1, 3_000, 20_000, 10**9])
def test_uneven_blocking_covers_every_pair_once(budget):
    # budgets from one example per block to everything at once, symmetric and cross kernels
    net = SmallCNN().double()
    xs = torch.cat([XC, XC2, XC])
    ref = reference_ntk(net, xs, xs)
    np.testing.assert_allclose(empirical_ntk(net, xs, memory_budget=budget), ref, atol=1e-10)
    np.testing.assert_allclose(empirical_ntk(net, xs[:5], xs, memory_budget=budget), ref[:5], atol=1e-10)


def test_projection_with_every_coordinate_kept_is_exact(device):
    # k = m (the padded length) keeps every coordinate of an orthogonal transform: the kernel is exact
    net, xc = SmallCNN().double().to(device), XC.to(device)
    n_params = sum(p.numel() for p in net.parameters())
    m = 1 << (n_params - 1).bit_length()
    ref = reference_ntk(net, xc, xc).cpu()
    f = projected_gradients(net, xc, m, seed=2)
    assert f.device == xc.device
    np.testing.assert_allclose(kernel_from_features(f).cpu(), ref, atol=1e-9)
    sub = subsampled_gradients(net, xc, k=10**6)
    np.testing.assert_allclose(kernel_from_features(sub).cpu(), ref, atol=1e-10)


def test_projections_and_subsets_are_the_same_on_every_device(device):
    """The projection and the parameter subset are drawn on the CPU from the seed: the features on any
    device equal the CPU's up to float64 rounding (so train and test features computed on different
    machines share them)."""
    net = SmallCNN().double()
    cpu_p = projected_gradients(net, XC, 64, seed=4)
    cpu_s = subsampled_gradients(net, XC, k=50, seed=4)
    net, xc = net.to(device), XC.to(device)
    np.testing.assert_allclose(projected_gradients(net, xc, 64, seed=4).cpu(), cpu_p, rtol=0, atol=1e-10)
    np.testing.assert_allclose(subsampled_gradients(net, xc, k=50, seed=4).cpu(), cpu_s, rtol=0, atol=1e-10)


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


# ---------------------------------------------------------------- precision and the memory budget

# Tolerances of a float32 kernel against the float64 reference, relative to max |K|. On the CPU: float32's
# unit roundoff is 2⁻²⁴ ≈ 6e-8 and a kernel entry is a sum of a few hundred products of gradients that
# each went through ~6 layers forward and back, so random-sign rounding leaves ~1e-7 (measured 1–2e-7 here
# and on the 982k-parameter CNN of benchmarks/bench_entk.py); 1e-5 leaves a margin of 50 and still catches a
# half-precision or TF32 contraction (≥ 5e-4). On CUDA, cuDNN's convolution algorithms left every float32
# kernel 2e-4 off the float64 one even with TF32 off (measured on an H200, issue 17): 1e-3 there.
FLOAT32_TOL = {"cpu": 1e-5, "cuda": 1e-3}
FLOAT64_TOL = 1e-12  # the same arithmetic in float64: rounding of ~1e-16 summed over a few hundred terms


def max_rel(k: torch.Tensor, ref: torch.Tensor) -> float:
    return float((k.double().cpu() - ref.cpu()).abs().max() / ref.abs().max())


def test_float32_and_float64_precision_against_a_float64_jacobian_reference(device):
    """A float32 model (as users load them): precision="float64" runs a converted copy and contracts in
    float64, precision="float32" runs it as it is; both against the float64 per-sample-Jacobian route."""
    torch.manual_seed(0)
    net = SmallCNN().to(device)  # float32 weights
    before = {k: v.clone() for k, v in net.state_dict().items()}
    xc, xc2 = XC.float().to(device), XC2.float().to(device)
    ref = empirical_ntk(net, xc, method="jacobian", precision="float64")
    ref_cross = empirical_ntk(net, xc, xc2, method="jacobian", precision="float64")
    assert ref.dtype == torch.float64 and ref.device == xc.device
    k32 = empirical_ntk(net, xc, precision="float32")
    k64 = empirical_ntk(net, xc, precision="float64")
    assert k32.dtype == torch.float32 and k64.dtype == torch.float64
    assert empirical_ntk(net, xc).dtype == torch.float32  # None: the model's own float32
    err32, err64 = max_rel(k32, ref), max_rel(k64, ref)
    assert err64 < FLOAT64_TOL
    assert err32 < FLOAT32_TOL[torch.device(device).type]
    assert err32 > err64  # float32 is measurably coarser: the comparison is not vacuous
    assert max_rel(empirical_ntk(net, xc, xc2, precision="float64"), ref_cross) < FLOAT64_TOL
    diag = ntk_diagonal(net, xc, precision="float64")
    assert diag.dtype == torch.float64 and max_rel(diag, ref.diagonal()) < FLOAT64_TOL
    # the other kernels take it too
    assert projected_gradients(net, xc, 16, precision="float64").dtype == torch.float64
    assert subsampled_gradients(net, xc, k=20, precision="float64").dtype == torch.float64
    assert conjugate_kernel(net, xc, precision="float64").dtype == torch.float64
    # the user's model is never converted in place
    assert all(p.dtype == torch.float32 for p in net.parameters())
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_at_precision_copies_only_when_the_dtype_differs():
    net64 = mlp()  # float64
    assert kernels.at_precision(net64, "float64") is net64
    assert kernels.at_precision(net64, None) is net64  # None keeps a float64 model's dtype
    as32 = kernels.at_precision(net64, "float32")
    assert as32 is not net64 and all(p.dtype == torch.float32 for p in as32.parameters())
    assert all(p.dtype == torch.float64 for p in net64.parameters())
    half = nn.Linear(3, 2).half()
    assert kernels.resolve_precision(half, None) == torch.float32  # never contracted in float16
    up = kernels.at_precision(half, None)
    assert up.weight.dtype == torch.float32 and half.weight.dtype == torch.float16
    bn = nn.BatchNorm1d(3)
    assert kernels.at_precision(bn, "float64").num_batches_tracked.dtype == torch.int64  # ints stay
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    copy64 = kernels.at_precision(tied, "float64")
    assert copy64[1].weight is copy64[0].weight  # a tie survives the copy
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'float64'"):
        empirical_ntk(net64, X, precision="float16")
    ids = torch.tensor([[1, 2]])
    assert kernels.cast_inputs(ids, torch.float64) is ids  # integer inputs (token ids) are not cast


def test_the_default_budget_comes_from_the_device(monkeypatch):
    assert kernels.default_budget("cpu") == kernels.DEFAULT_BUDGET == 1 << 30
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * gib)
    # free memory plus what the caching allocator holds unused, a quarter of it
    assert kernels.default_budget("cuda:0") == (40 + 4) * gib // 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 << 20, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    assert kernels.default_budget(torch.device("cuda")) == kernels.MIN_BUDGET  # never below the floor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_default_budget_of_a_real_gpu_is_a_share_of_its_memory():
    _free, total = torch.cuda.mem_get_info()
    assert kernels.MIN_BUDGET <= kernels.default_budget("cuda") <= total


def test_float32_kernels_switch_tf32_off_on_cuda_only_and_restore_it():
    before = torch.get_float32_matmul_precision()
    conv = torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("high")  # TF32 allowed, as a user may have set it
        torch.backends.cudnn.allow_tf32 = True
        with kernels.ieee_float32("cpu"):
            assert torch.get_float32_matmul_precision() == "high"  # the CPU has no TF32: untouched
        with kernels.ieee_float32("cuda:0"):
            assert torch.get_float32_matmul_precision() == "highest"
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(before)
        torch.backends.cudnn.allow_tf32 = conv
