"""Empirical neural tangent kernels, the conjugate kernel, and projected/subsampled gradient features.

Conventions (stated once, used everywhere):

* **Parametrisation**: the network as PyTorch builds it (standard parametrisation); no 1/√width factors
  are added. A layer's NTK-scaled kernel differs by the constant factors of that scaling.
* **Outputs**: ``output="trace"`` gives the trace NTK K_tr(x, x') = Σ_c ⟨∇θ f_c(x), ∇θ f_c(x')⟩, the SUM
  over classes (neural-tangents' ``trace_axes`` returns the mean: divide by C to compare); ``output=c``
  (an int) the single-output eNTK of logit c; ``output="sum"`` the pNTK, the eNTK of Σ_c f_c.
* **trNTK** (Engel et al. 2024): K_tr(x, x') / √(K_tr(x, x) K_tr(x', x')), see :func:`normalise`.

Where the speed comes from ("structured derivatives", Novak et al. 2022): for a dense layer z = aWᵀ + b
with a 2-D input, the layer's contribution to the kernel factorises as (A Aᵀ + 1) ⊙ (Σ_c G_c G_cᵀ), with
A the layer inputs and G_c the gradients of output c with respect to the layer outputs. That costs
n²·(in + C·out) instead of the n²·C·in·out of contracting per-sample Jacobians, and needs only the
n×(in + C·out) factors in memory. Every other parameter (convolutions, norms, embeddings, dense layers
called more than once or on >2-D inputs) goes through per-sample Jacobians from ``torch.func``
(``functional_call`` + ``vmap(jacrev)``), computed in chunks sized from a memory budget so that no n×P
Jacobian is ever materialised whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

Output = str | int
DEFAULT_BUDGET = 1 << 30  # bytes for one chunk of per-sample Jacobians (or projections)


def select_outputs(out: torch.Tensor, output: Output) -> torch.Tensor:
    """(n, C) network outputs → (n, C') outputs whose gradients the kernel sums over."""
    out = out.reshape(out.shape[0], -1)
    if output == "trace":
        return out
    if output == "sum":
        return out.sum(dim=1, keepdim=True)
    if isinstance(output, int) and not isinstance(output, bool):
        if not -out.shape[1] <= output < out.shape[1]:
            raise ValueError(f"output index {output} out of range for {out.shape[1]} outputs")
        return out[:, output : output + 1]
    raise ValueError(f"output must be 'trace', 'sum' or a logit index, got {output!r}")


def normalise(k: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor | None = None) -> torch.Tensor:
    """trNTK normalisation K(x, x') / √(K(x, x) K(x', x')) (NaN where a self-kernel is not positive)."""
    d1 = torch.where(diag1 > 0, diag1, torch.nan)
    d2 = d1 if diag2 is None else torch.where(diag2 > 0, diag2, torch.nan)
    return k / torch.sqrt(d1[:, None] * d2[None, :])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ---------------------------------------------------------------- the structured (dense-layer) route


@dataclass
class _DenseFactors:
    """Per dense layer: inputs A (n×in) and output gradients G (n×C'·out), plus the bias flag."""

    a: torch.Tensor
    g: torch.Tensor
    bias: bool


def structured_layers(model: nn.Module, probe_x: torch.Tensor) -> list[str]:
    """Names of the nn.Linear modules whose kernel factorises: called once per forward on a 2-D input."""
    calls: dict[str, list[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(
                module.register_forward_hook(
                    lambda _m, inputs, _o, name=name: calls.setdefault(name, []).append(inputs[0].dim())
                )
            )
    try:
        with torch.no_grad():
            model(probe_x[:2])
    finally:
        for h in handles:
            h.remove()
    return [name for name, dims in calls.items() if dims == [2]]


def _dense_factors(
    model: nn.Module, x: torch.Tensor, layers: list[str], output: Output
) -> list[_DenseFactors]:
    modules = dict(model.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m, ins, out):
            inputs[name] = ins[0].detach()
            outputs[name] = out

        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in layers]
    try:
        with torch.enable_grad():
            sel = select_outputs(model(x), output)
            zs = [outputs[name] for name in layers]
            c = sel.shape[1]
            eye = torch.eye(c, dtype=sel.dtype, device=sel.device)
            try:  # all classes in one vmapped backward
                grad_outputs = eye[:, None, :].expand(c, sel.shape[0], c)
                grads = torch.autograd.grad(sel, zs, grad_outputs=grad_outputs, is_grads_batched=True)
            except RuntimeError:  # an op without a batching rule: one backward per class
                per_class = [
                    torch.autograd.grad(sel, zs, grad_outputs=eye[k].expand_as(sel), retain_graph=True)
                    for k in range(c)
                ]
                grads = tuple(torch.stack([pc[i] for pc in per_class]) for i in range(len(zs)))
    finally:
        for h in handles:
            h.remove()
    factors = []
    for name, g in zip(layers, grads, strict=True):
        n = g.shape[1]
        factors.append(
            _DenseFactors(
                inputs[name], g.permute(1, 0, 2).reshape(n, -1).detach(), modules[name].bias is not None
            )
        )
    return factors


# ---------------------------------------------------------------- the generic (per-sample Jacobian) route


def _jacobian_fn(model: nn.Module, names: list[str], output: Output) -> Callable:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    frozen = {k: v.detach() for k, v in params.items() if k not in names}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),))
        return select_outputs(out, output).squeeze(0)

    return vmap(jacrev(f), in_dims=(None, 0))


def _flat_jacobian(fn: Callable, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Per-sample Jacobians of a chunk, flattened to (chunk, C', P_generic)."""
    jac = fn(p, x)
    return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)


def _chunk_size(per_sample_bytes: int, budget: int, n: int) -> int:
    return max(1, min(n, budget // max(1, per_sample_bytes)))


# ---------------------------------------------------------------- kernels


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    output: Output = "trace",
    method: str = "auto",
    memory_budget: int = DEFAULT_BUDGET,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact empirical NTK K(x1, x2) (n1×n2; x2 None: the symmetric n1×n1 kernel), in the params' dtype.

    ``method="auto"`` uses the dense-layer factorisation where it holds and per-sample Jacobians for the
    rest; ``"jacobian"`` uses per-sample Jacobians for every parameter (the reference, and slower).
    """
    if method not in ("auto", "jacobian"):
        raise ValueError(f"method must be 'auto' or 'jacobian', got {method!r}")
    params = {k: v for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters: its NTK is zero")
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    dtype = next(iter(params.values())).dtype
    k = torch.zeros(x1.shape[0], xb.shape[0], dtype=dtype, device=x1.device)

    dense = structured_layers(model, x1) if method == "auto" else []
    covered = {f"{name}.{p}" if name else p for name in dense for p in ("weight", "bias")}
    if dense:
        k += _structured_kernel(
            model, x1, None if symmetric else x2, dense, output, memory_budget, chunk_size
        )
    generic = [name for name in params if name not in covered]
    if generic:
        k += _jacobian_kernel(
            model, x1, None if symmetric else x2, generic, output, memory_budget, chunk_size
        )
    return k


def _structured_kernel(model, x1, x2, layers, output, budget, chunk_size) -> torch.Tensor:
    f1 = _factors_chunked(model, x1, layers, output, budget, chunk_size)
    f2 = f1 if x2 is None else _factors_chunked(model, x2, layers, output, budget, chunk_size)
    k = torch.zeros(f1[0].a.shape[0], f2[0].a.shape[0], dtype=f1[0].a.dtype, device=f1[0].a.device)
    for a, b in zip(f1, f2, strict=True):
        inputs = a.a @ b.a.T
        if a.bias:
            inputs += 1
        k += inputs * (a.g @ b.g.T)
    return k


def _factors_chunked(model, x, layers, output, budget, chunk_size) -> list[_DenseFactors]:
    """Dense factors of all of x, computed a chunk at a time (memory O(n·(in + C'·out)) in the end)."""
    size = chunk_size or min(x.shape[0], 1024)
    parts = [_dense_factors(model, x[s], layers, output) for s in _chunks(x.shape[0], size)]
    return [
        _DenseFactors(
            torch.cat([p[i].a for p in parts]), torch.cat([p[i].g for p in parts]), parts[0][i].bias
        )
        for i in range(len(layers))
    ]


def _jacobian_kernel(model, x1, x2, names, output, budget, chunk_size) -> torch.Tensor:
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    fn = _jacobian_fn(model, names, output)
    c_out = select_outputs(model(x1[:1]).detach(), output).shape[1]
    n_params = sum(p.numel() for p in params.values())
    elem = next(iter(params.values())).element_size()
    size = chunk_size or _chunk_size(2 * c_out * n_params * elem, budget, x1.shape[0])
    xb = x1 if x2 is None else x2
    k = torch.zeros(x1.shape[0], xb.shape[0], dtype=next(iter(params.values())).dtype, device=x1.device)
    for si in _chunks(x1.shape[0], size):
        ji = _flat_jacobian(fn, params, x1[si])
        for sj in _chunks(xb.shape[0], size):
            if x2 is None and sj.start < si.start:
                continue  # the lower triangle is mirrored below
            jj = ji if (x2 is None and sj == si) else _flat_jacobian(fn, params, xb[sj])
            k[si, sj] = torch.einsum("aop,bop->ab", ji, jj)
            if x2 is None and sj != si:
                k[sj, si] = k[si, sj].T
    return k


def ntk_diagonal(
    model: nn.Module, x: torch.Tensor, *, output: Output = "trace", memory_budget: int = DEFAULT_BUDGET
) -> torch.Tensor:
    """K(x_i, x_i) for every i without the off-diagonal (for the trNTK normalisation of a cross-kernel)."""
    out = torch.empty(x.shape[0], dtype=next(model.parameters()).dtype, device=x.device)
    size = 64
    for s in _chunks(x.shape[0], size):
        out[s] = empirical_ntk(model, x[s], output=output, memory_budget=memory_budget).diagonal()
    return out


# ---------------------------------------------------------------- projected and subsampled features


def _per_sample_gradients(
    model, x, output, budget, chunk_size
) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    fn = _jacobian_fn(model, list(params), output)
    c_out = select_outputs(model(x[:1]).detach(), output).shape[1]
    n_params = sum(p.numel() for p in params.values())
    elem = next(iter(params.values())).element_size()
    size = chunk_size or _chunk_size(c_out * n_params * elem, budget, x.shape[0])
    for s in _chunks(x.shape[0], size):
        yield s, fn(params, x[s])


def _gaussian_block(shape: tuple[int, int], seed: int, dtype, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype).to(device=device)


def projected_gradients(
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    output: Output = "trace",
    memory_budget: int = DEFAULT_BUDGET,
    chunk_size: int | None = None,
    block: int = 8192,
) -> torch.Tensor:
    """Per-sample gradients projected to k dimensions: (n, C', k), with R ~ N(0, 1/k) entries.

    R is generated block by block from (seed, parameter, block) so it never exists whole and is the same
    for every call with the same seed (so train and test features share it). E[F Fᵀ] = K, relative error
    ~ 1/√k (Johnson–Lindenstrauss); memory O(n·C'·k) plus one chunk of per-sample gradients.
    """
    feats = []
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for _, grads in _per_sample_gradients(model, x, output, memory_budget, chunk_size):
        first = grads[names[0]]
        f = torch.zeros(first.shape[0], first.shape[1], k, dtype=first.dtype, device=first.device)
        for pi, name in enumerate(names):
            g = grads[name].reshape(first.shape[0], first.shape[1], -1)
            for bi, b in enumerate(_chunks(g.shape[2], block)):
                r = _gaussian_block(
                    (b.stop - b.start, k), seed * 1_000_003 + pi * 10_007 + bi, g.dtype, g.device
                )
                f += g[:, :, b] @ r
        feats.append(f / math.sqrt(k))
    return torch.cat(feats)


def subsampled_gradients(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 500_000,
    *,
    seed: int = 0,
    output: Output = "trace",
    memory_budget: int = DEFAULT_BUDGET,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-sample gradients restricted to a seeded subset of k parameters (Campbell et al.), (n, C', k').

    Scaled by √(P/k') so that E[F Fᵀ] = K (a uniform subset S has E[K_S] = (|S|/P)·K); k' = min(k, P).
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kk = min(k, total)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.sort(torch.randperm(total, generator=g)[:kk]).values
    feats = []
    for _, grads in _per_sample_gradients(model, x, output, memory_budget, chunk_size):
        flat = torch.cat([grads[n].reshape(grads[n].shape[0], grads[n].shape[1], -1) for n in names], dim=2)
        feats.append(flat[:, :, chosen.to(flat.device)] * math.sqrt(total / kk))
    return torch.cat(feats)


def kernel_from_features(f1: torch.Tensor, f2: torch.Tensor | None = None) -> torch.Tensor:
    """K = Σ_c F1_c F2_cᵀ from (n, C', k) features: one matrix product."""
    a = f1.reshape(f1.shape[0], -1)
    b = a if f2 is None else f2.reshape(f2.shape[0], -1)
    return a @ b.T


# ---------------------------------------------------------------- the conjugate kernel


def penultimate_layer(model: nn.Module) -> str:
    """The last nn.Linear module: its input is the penultimate representation."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layer; name the conjugate-kernel layer explicitly")
    return names[-1]


def layer_inputs(model: nn.Module, x: torch.Tensor, layer: str, batch_size: int = 1024) -> torch.Tensor:
    """The (flattened) inputs of module `layer` for every example of x, batch by batch under no_grad."""
    module = dict(model.named_modules())[layer]
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda _m, ins, _o: captured.append(ins[0].detach().reshape(ins[0].shape[0], -1))
    )
    try:
        with torch.no_grad():
            for s in _chunks(x.shape[0], batch_size):
                model(x[s])
    finally:
        handle.remove()
    return torch.cat(captured)


def conjugate_kernel(
    model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, layer: str | None = None
):
    """Gram of the penultimate features (the inputs of the last dense layer, or of `layer`)."""
    layer = layer or penultimate_layer(model)
    a = layer_inputs(model, x1, layer)
    b = a if x2 is None else layer_inputs(model, x2, layer)
    return a @ b.T
