"""Empirical neural tangent kernels, the conjugate kernel, and projected/subsampled gradient features.

Conventions (stated once, used everywhere):

* **Parametrisation**: the network as PyTorch builds it (standard parametrisation); no 1/√width factors
  are added. A layer's NTK-scaled kernel differs by the constant factors of that scaling.
* **Outputs**: ``output="trace"`` gives the trace NTK K_tr(x, x') = Σ_c ⟨∇θ f_c(x), ∇θ f_c(x')⟩, the SUM
  over classes (neural-tangents' ``trace_axes`` returns the mean: divide by C to compare); ``output=c``
  (an int) the single-output eNTK of logit c; ``output="sum"`` the pNTK, the eNTK of Σ_c f_c.
* **trNTK** (Engel et al. 2024): K_tr(x, x') / √(K_tr(x, x) K_tr(x', x')), see :func:`normalise`.

Where the speed comes from ("structured derivatives", Novak et al. 2022):

* **dense layers** z = aWᵀ + b with a 2-D input: the layer's contribution factorises as
  (A Aᵀ + 1) ⊙ (Σ_c G_c G_cᵀ), with A the layer inputs and G_c the gradients of output c with respect to
  the layer outputs. That costs n²·(in + C·out) instead of the n²·C·in·out of contracting per-sample
  Jacobians, and needs only the n×(in + C·out) factors in memory.
* **Conv2d layers** (groups 1, zero padding): per-sample weight gradients are G_c Uᵀ, with U the unfolded
  input — one batched GEMM after one forward and one class-batched backward per chunk, instead of
  ``vmap(jacrev)``'s per-sample re-run of the network. (The factorised pair form costs positions²·(in·k² +
  C·out) per pair, more than the explicit gradients' C·in·k²·out for any realistic layer, so the kernel
  is the Gram of the explicit gradients.)
* every other parameter (norms, embeddings, layers called more than once or on other input ranks) goes
  through per-sample Jacobians from ``torch.func`` (``functional_call`` + ``vmap(jacrev)``).

Per-sample gradients are computed in chunks sized from a memory budget so that no n×P Jacobian is ever
materialised whole: most of the budget holds an outer block of rows while small inner chunks stream past
it (:func:`_blocked_gram`), so recomputation — not the Gram — stays the smaller cost. The budget defaults
from the device (:func:`default_budget`): a share of the free memory on CUDA, :data:`DEFAULT_BUDGET` on the CPU.

Precision (``precision=`` of every public function): ``"float32"`` or ``"float64"`` is the dtype the model is
run in and the Jacobians are contracted in. A model whose floating parameters and buffers have another dtype
is deep-copied and converted (:func:`at_precision`; the caller's module is never changed), and floating inputs
are cast. None (the default of the functions) keeps a float64 or float32 model's own dtype and runs anything
else (float16, bfloat16) in float32. A float32 kernel on CUDA is computed with TF32 off for matmuls and cuDNN
convolutions (:func:`ieee_float32`); cuDNN's convolution algorithms still leave it ~1e-4 off the float64
kernel there (against ~1e-7 on the CPU), which is what ``"float64"`` is for.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn import functional as F

Output = str | int
_T = TypeVar("_T")
DEFAULT_BUDGET = 1 << 30  # bytes for one chunk of per-sample Jacobians (or projections) on the CPU
MIN_BUDGET = 64 << 20  # the least a budget taken from a device's free memory is
CUDA_BUDGET_SHARE = 4  # the budget is 1/4 of a CUDA device's free memory (see default_budget)
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


# ---------------------------------------------------------------- precision and memory budget


def resolve_precision(model: nn.Module, precision: str | None) -> torch.dtype:
    """The dtype a kernel of `model` is computed in: "float32"/"float64", or for None the dtype of the
    model's trainable parameters when that is float32 or float64, else float32 (half precision is never
    used to contract Jacobians)."""
    if precision is None:
        dtype = next((p.dtype for p in model.parameters() if p.requires_grad), torch.float32)
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return PRECISIONS[precision]


def at_precision(model: nn.Module, precision: str | None) -> nn.Module:
    """`model` itself when every floating parameter and buffer already has the dtype of `precision`
    (:func:`resolve_precision`), else a deep copy converted to it: the caller's module is never modified.

    Integer buffers (BatchNorm's step counter, index tables) keep their dtype; ties between parameters
    survive the copy. The copy costs the model's memory again, in the new dtype.
    """
    dtype = resolve_precision(model, precision)
    floating = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in floating):
        return model
    try:
        converted = copy.deepcopy(model)
    except Exception as e:
        raise ValueError(
            f"precision {precision!r}: the model cannot be copied to convert it to {dtype} "
            f"({type(e).__name__}: {e}); pass a model already converted (model.to({dtype}))"
        ) from None
    return converted.to(dtype)


def cast_inputs(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Floating inputs in `dtype`; integer inputs (token ids, indices) as they are."""
    return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x


@contextlib.contextmanager
def ieee_float32(device: torch.device | str):
    """TF32 off for matmuls and cuDNN convolutions inside the block, on a CUDA device (a no-op elsewhere);
    the previous settings are restored after it. TF32 rounds float32 products to a 10-bit mantissa (~1e-3)."""
    if torch.device(device).type != "cuda":
        yield
        return
    matmul = torch.get_float32_matmul_precision()
    with warnings.catch_warnings():  # newer torch deprecates allow_tf32 for fp32_precision
        warnings.simplefilter("ignore")
        try:
            conv = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
        except (AttributeError, RuntimeError):
            conv = None
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        if conv is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.cudnn.allow_tf32 = conv


def default_budget(device: torch.device | str) -> int:
    """The default memory budget (bytes) for per-sample gradients on `device`.

    CPU: :data:`DEFAULT_BUDGET` (1 GiB). CUDA: 1/:data:`CUDA_BUDGET_SHARE` of the memory this process can
    still use there — the device's free memory plus what PyTorch's caching allocator holds unused — and at
    least :data:`MIN_BUDGET`. The budget bounds the per-sample gradients alone; the rest covers autograd's
    intermediates (``vmap(jacrev)`` needs a few times its output), the block products, the dense layers'
    factors and the n×n kernel. Measured on an H200 (issue 17): 16 GiB ran the 982k-parameter CNN's
    n = 1024 trace kernel in 0.70 s, 1 GiB in 0.88 s.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return DEFAULT_BUDGET
    free, _total = torch.cuda.mem_get_info(device)
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(MIN_BUDGET, int(free + max(0, unused)) // CUDA_BUDGET_SHARE)


def _prepared(
    model: nn.Module, xs: tuple[torch.Tensor | None, ...], precision: str | None, budget: int | None
) -> tuple[nn.Module, list[torch.Tensor | None], int]:
    """The model at the requested precision, the inputs cast to it, and the memory budget resolved."""
    model = at_precision(model, precision)
    dtype = resolve_precision(model, None)
    cast = [None if x is None else cast_inputs(x, dtype) for x in xs]
    first = next(x for x in xs if x is not None)
    return model, cast, default_budget(first.device) if budget is None else int(budget)


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
        # normalised first: a negative index as a slice start, out[:, -1:0], would select nothing
        return out.narrow(1, output % out.shape[1], 1)
    raise ValueError(f"output must be 'trace', 'sum' or a logit index, got {output!r}")


def normalise(k: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor | None = None) -> torch.Tensor:
    """trNTK normalisation K(x, x') / √(K(x, x) K(x', x')) (NaN where a self-kernel is not positive)."""
    d1 = torch.where(diag1 > 0, diag1, torch.nan)
    d2 = d1 if diag2 is None else torch.where(diag2 > 0, diag2, torch.nan)
    return k / torch.sqrt(d1[:, None] * d2[None, :])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ---------------------------------------------------------------- which route each parameter takes


@dataclass(frozen=True)
class Routes:
    """How each trainable parameter reaches the kernel.

    dense: nn.Linear modules called once on a 2-D input (the kernel factorises); conv: nn.Conv2d modules
    called once (per-sample weight gradients are one batched GEMM of unfolded inputs and output gradients,
    from a single forward and one class-batched backward per chunk); generic: every other trainable
    parameter, by name (``vmap(jacrev)`` per-sample Jacobians).
    """

    dense: tuple[str, ...]
    conv: tuple[str, ...]
    generic: tuple[str, ...]


def _call_dims(model: nn.Module, probe_x: torch.Tensor, kinds: tuple[type, ...]) -> dict[str, list[int]]:
    """Input rank of every call of each module of the given kinds during one forward of two examples."""
    calls: dict[str, list[int]] = {}
    handles = [
        module.register_forward_hook(
            lambda _m, inputs, _o, name=name: calls.setdefault(name, []).append(inputs[0].dim())
        )
        for name, module in model.named_modules()
        if isinstance(module, kinds)
    ]
    try:
        with torch.no_grad():
            model(probe_x[:2])
    finally:
        for h in handles:
            h.remove()
    return calls


def _fully_trainable(module: nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters(recurse=False))


def structured_layers(model: nn.Module, probe_x: torch.Tensor) -> list[str]:
    """Names of the nn.Linear modules whose kernel factorises: called once per forward on a 2-D input."""
    modules = dict(model.named_modules())
    return [
        name
        for name, dims in _call_dims(model, probe_x, (nn.Linear,)).items()
        if dims == [2] and _fully_trainable(modules[name])
    ]


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """The conv's padding as F.unfold takes it, or None where unfold cannot reproduce it."""
    if conv.padding_mode != "zeros" or conv.groups != 1:
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def conv_layers(model: nn.Module, probe_x: torch.Tensor) -> list[str]:
    """Names of the nn.Conv2d modules with a GEMM route: called once on a 4-D input, groups 1, zero padding."""
    modules = dict(model.named_modules())
    return [
        name
        for name, dims in _call_dims(model, probe_x, (nn.Conv2d,)).items()
        if dims == [4] and _fully_trainable(modules[name]) and _conv_padding(modules[name]) is not None
    ]


def plan_routes(model: nn.Module, probe_x: torch.Tensor, method: str = "auto") -> Routes:
    if method not in ("auto", "jacobian"):
        raise ValueError(f"method must be 'auto' or 'jacobian', got {method!r}")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: its NTK is zero")
    if method == "jacobian":
        return Routes((), (), tuple(trainable))
    dense, conv = structured_layers(model, probe_x), conv_layers(model, probe_x)
    modules = dict(model.named_modules())
    covered = {
        f"{name}.{p}" if name else p
        for name in dense + conv
        for p, _ in modules[name].named_parameters(recurse=False)
    }
    return Routes(tuple(dense), tuple(conv), tuple(name for name in trainable if name not in covered))


def _route_param_count(model: nn.Module, routes: Routes, include_dense: bool) -> int:
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    layers = (routes.dense if include_dense else ()) + routes.conv
    return sum(p.numel() for name in layers for p in modules[name].parameters(recurse=False)) + sum(
        params[name].numel() for name in routes.generic
    )


# ---------------------------------------------------------------- taps immune to later in-place writes

_Tap = tuple[str, str]  # (layer name, "in" or "out")


def _version(t: torch.Tensor) -> int | None:
    """The tensor's version counter (bumped by every in-place write to it or to a view of its storage);
    None for an inference tensor, which has none."""
    return None if t.is_inference() else t._version


@dataclass
class _Taps:
    """Forward hooks that keep the inputs (and, with `outputs`, the outputs) of some layers, immune to
    in-place writes later in the forward.

    An in-place op after a layer (``nn.ReLU(inplace=True)``, ``out += identity``, ``x.relu_()``) overwrites
    a kept tensor's values, and autograd rebases a kept output onto that op, so a gradient taken with
    respect to it silently skips the op's Jacobian (the ReLU mask). Copying every tap would cost time and
    memory on the models that have no such op, so each forward instead compares the version counters of
    what it kept before and after, and only the taps that were written to are copied, on a repeated
    forward: an input is cloned when the hook sees it; for an output the hook hands the model a clone to
    continue on, so the kept output keeps its own autograd node. `copies` persists across the chunks of a
    call, so the repeated forward is paid once per call, and not at all where nothing is written in place.
    """

    layers: list[str]
    outputs: bool = True
    copies: set[_Tap] = field(default_factory=set)

    def run(
        self, model: nn.Module, forward: Callable[[], _T]
    ) -> tuple[_T, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """forward() with the hooks in place: its result and the layers' inputs and outputs (by name)."""
        while True:
            result, inputs, outputs, written = self._once(model, forward)
            if not written:
                return result, inputs, outputs
            if written <= self.copies:  # cannot happen for a module that keeps no reference to its output
                raise RuntimeError(
                    f"layer inputs/outputs {sorted(written)} are written in place even when copied"
                )
            self.copies |= written
            del result, inputs, outputs  # free the first graph before the repeated forward

    def _once(self, model: nn.Module, forward: Callable[[], _T]):
        """One hooked forward: its result, the kept inputs and outputs, and the taps written in place after
        they were kept (version counter changed; an inference tensor, uncounted, is always copied)."""
        modules = dict(model.named_modules())
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        kept: dict[_Tap, tuple[torch.Tensor, int | None]] = {}

        def hook(name: str):
            def fn(_m, ins, out):
                a = ins[0].detach()
                if (name, "in") in self.copies or a.is_inference():
                    a = a.clone()
                inputs[name] = a
                kept[(name, "in")] = (a, _version(a))
                if not self.outputs:
                    return None
                outputs[name] = out
                kept[(name, "out")] = (out, _version(out))
                return out.clone() if (name, "out") in self.copies else None

            return fn

        handles = [modules[name].register_forward_hook(hook(name)) for name in self.layers]
        try:
            result = forward()
        finally:
            for h in handles:
                h.remove()
        written = {tap for tap, (t, v) in kept.items() if v is not None and _version(t) != v}
        return result, inputs, outputs, written


# ---------------------------------------------------------------- one forward, one class-batched backward


def _capture(
    model: nn.Module, x: torch.Tensor, layers: list[str], output: Output, taps: _Taps | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each layer's input, and the gradients of every selected output w.r.t. its output: (C', b, *out).

    `taps` (for these layers) carries what an earlier chunk learnt about in-place writes, see :class:`_Taps`.
    """
    taps = taps or _Taps(list(layers))
    with torch.enable_grad():
        sel, inputs, outputs = taps.run(model, lambda: select_outputs(model(x), output))
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
    return inputs, {name: g.detach() for name, g in zip(layers, grads, strict=True)}


def _stored_factors(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[str],
    output: Output,
    chunk: int,
    explicit: list[str] = (),
    taps: _Taps | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
    """For all of x, one capture per chunk for every layer: the factors of `layers` and the per-sample
    gradients of the conv layers in `explicit` (a list of (n, C', P_i)).

    Factors of a dense layer: inputs (n, in) and output gradients (n, C'·out); of a conv layer: inputs
    (n, in, H, W) and output gradients (n, L, C'·out) for its L output positions. `taps` (for `layers` +
    `explicit`) may be shared with another call on the same model, see :class:`_Taps`.
    """
    modules = dict(model.named_modules())
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in layers}
    feats: list[list[torch.Tensor]] = []
    taps = taps or _Taps(list(layers) + list(explicit))
    for s in _chunks(x.shape[0], chunk):
        inputs, grads = _capture(model, x[s], list(layers) + list(explicit), output, taps)
        for name in layers:
            g = grads[name]
            c, b = g.shape[:2]
            if g.dim() == 3:  # dense (C', b, out)
                g = g.permute(1, 0, 2).reshape(b, -1)
            else:  # conv (C', b, out, H', W')
                g = g.reshape(c, b, g.shape[2], -1).permute(1, 3, 0, 2).reshape(b, -1, c * g.shape[2])
            parts[name].append((inputs[name], g))
        feats.append(
            [f for name in explicit for f in _conv_gradients(modules[name], inputs[name], grads[name])]
        )
    factors = {
        name: (torch.cat([a for a, _ in p]), torch.cat([g for _, g in p])) for name, p in parts.items()
    }
    return factors, [torch.cat(fs) for fs in zip(*feats, strict=True)] if explicit else []


def _conv_gradients(conv: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Per-sample gradients of a Conv2d's weight (and bias), (b, C', P_layer) each, from its input a and
    output gradients g (C', b, out, H', W'): ∂f_c/∂W = G_c Uᵀ with U the unfolded input (in·kh·kw × H'W')."""
    u = F.unfold(a, conv.kernel_size, dilation=conv.dilation, padding=_conv_padding(conv), stride=conv.stride)
    c, b, out = g.shape[:3]
    gg = g.reshape(c, b, out, -1).transpose(0, 1)  # (b, C', out, L)
    w = torch.bmm(gg.reshape(b, c * out, -1), u.transpose(1, 2))  # (b, C'·out, in·kh·kw)
    grads = [w.reshape(b, c, -1)]
    if conv.bias is not None:
        grads.append(gg.sum(dim=3))
    return grads


def _jacobian_fn(model: nn.Module, names: list[str] | tuple[str, ...], output: Output) -> Callable:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    frozen = {k: v.detach() for k, v in params.items() if k not in names}

    def f(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),))
        return select_outputs(out, output).squeeze(0)

    per_sample = jacrev(f)
    batched = vmap(per_sample, in_dims=(None, 0))

    def jacobians(p: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """vmap over the examples; where a layer has no batching rule for what it does (``nn.GRU`` writes
        its hidden state in place), one example at a time: slower, the same Jacobians."""
        if not state["loop"]:
            try:
                with warnings.catch_warnings():  # vmap's "performance drop" notes for unbatched kernels
                    warnings.filterwarnings("ignore", message="There is a performance drop")
                    return batched(p, x)
            except RuntimeError:
                state["loop"] = True
        rows = [per_sample(p, x[i]) for i in range(x.shape[0])]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    state = {"loop": False}
    return jacobians


def _gradient_fn(
    model: nn.Module, routes: Routes, output: Output, include_dense: bool
) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """x (b, ...) → per-sample gradients of the routed parameters, a list of (b, C', P_i) in a fixed order."""
    modules = dict(model.named_modules())
    layers = list(routes.dense if include_dense else ()) + list(routes.conv)
    generic = {name: p.detach() for name, p in model.named_parameters() if name in routes.generic}
    jac = _jacobian_fn(model, routes.generic, output) if generic else None
    taps = _Taps(layers)  # shared by every chunk: in-place writes are found once per call

    def fn(x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        if layers:
            inputs, grads = _capture(model, x, layers, output, taps)
            for name in layers:
                module, a, g = modules[name], inputs[name], grads[name]
                if isinstance(module, nn.Conv2d):
                    feats += _conv_gradients(module, a, g)
                else:  # dense: ∂f_c/∂W = g_c ⊗ a
                    gb = g.transpose(0, 1)  # (b, C', out)
                    feats.append(
                        (gb[:, :, :, None] * a[:, None, None, :]).reshape(a.shape[0], gb.shape[1], -1)
                    )
                    if module.bias is not None:
                        feats.append(gb)
        if jac is not None:
            feats += [j.reshape(j.shape[0], j.shape[1], -1) for j in jac(generic, x).values()]
        return feats

    return fn


def _n_outputs(model: nn.Module, x: torch.Tensor, output: Output) -> int:
    with torch.no_grad():
        return select_outputs(model(x[:1]), output).shape[1]


# ---------------------------------------------------------------- the pair route of convolutions

# Explicit per-sample gradients stream through memory at a few flops per byte once they no longer fit
# the budget; the pair form is large compute-bound GEMMs. Measured on the benchmark CNN (2 cores), the
# explicit route ran about 4× below the GEMM peak, hence this weight in the choice between the two.
EXPLICIT_PENALTY = 4


def _conv_positions(model: nn.Module, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, int]:
    """Output positions H'·W' of each conv layer (one forward of one example)."""
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-2] * out.shape[-1])
        )
        for name in layers
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return sizes


def _pair_route_convs(model: nn.Module, x: torch.Tensor, layers: tuple[str, ...], c_out: int) -> list[str]:
    """Conv layers whose kernel is cheaper in the pair form than as a Gram of explicit gradients.

    Pair form per pair of examples: L²·(C'·out + in·k²) multiply-adds (L output positions); explicit:
    C'·out·in·k², weighted by EXPLICIT_PENALTY. Deep layers on small feature maps (L = 49 on 7×7) take
    the pair form, early layers on large maps the explicit one.
    """
    if not layers:
        return []
    modules = dict(model.named_modules())
    positions = _conv_positions(model, x, layers)
    chosen = []
    for name in layers:
        conv = modules[name]
        patch = conv.in_channels * math.prod(conv.kernel_size)
        pair = positions[name] ** 2 * (c_out * conv.out_channels + patch)
        if pair < EXPLICIT_PENALTY * c_out * conv.out_channels * patch:
            chosen.append(name)
    return chosen


def _conv_pair_kernel(f1, f2, modules, layers, symmetric, budget, chunk_size, out: torch.Tensor) -> None:
    """Adds the pair-form kernel of the given conv layers (factors from :func:`_stored_factors`) into `out`.

    ⟨∂f/∂W(x_i), ∂f/∂W(x_j)⟩ = Σ_{p,q} ⟨G_ip, G_jq⟩·⟨U_ip, U_jq⟩ with G_ip the output gradients at position p
    (over classes and channels) and U_ip the input patch there (plus 1 for the bias): two GEMMs over
    blocks of (example, position) rows, a Hadamard product and a sum over the position pairs. Memory: the
    layers' inputs and output gradients for all examples (n·(in·H·W + L·C'·out)) plus two block products.
    """
    elem = out.element_size()
    for name in layers:
        conv = modules[name]
        a1, g1 = f1[name]
        a2, g2 = f2[name]
        positions = g1.shape[1]
        block = chunk_size or max(1, math.isqrt(budget // (4 * elem * positions * positions)))
        if symmetric and not chunk_size:
            # quarter blocks: 10 of 16 block products for a symmetric kernel, with ≥ 512 rows per GEMM
            block = min(block, max(-(-512 // positions), -(-a1.shape[0] // 4)))

        def patches(a: torch.Tensor, conv=conv) -> torch.Tensor:
            u = F.unfold(
                a, conv.kernel_size, dilation=conv.dilation, padding=_conv_padding(conv), stride=conv.stride
            )
            return u.transpose(1, 2).reshape(-1, u.shape[1])

        for si in _chunks(a1.shape[0], block):
            ui, gi = patches(a1[si]), g1[si].reshape(-1, g1.shape[2])
            start = si.start if symmetric else 0
            for sj in _chunks(a2.shape[0] - start, block):
                sj = slice(sj.start + start, sj.stop + start)
                uj = ui if (symmetric and sj == si) else patches(a2[sj])
                gj = gi if (symmetric and sj == si) else g2[sj].reshape(-1, g2.shape[2])
                m = ui @ uj.T
                if conv.bias is not None:
                    m += 1
                m *= gi @ gj.T
                blk = m.reshape(si.stop - si.start, positions, sj.stop - sj.start, positions).sum((1, 3))
                out[si, sj] += blk
                if symmetric and sj != si:
                    out[sj, si] += blk.T


# ---------------------------------------------------------------- blocked Gram of per-sample gradients


def _gram(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Σ_l A_l B_lᵀ over the per-parameter blocks, without concatenating them."""
    k = None
    for fa, fb in zip(a, b, strict=True):
        blk = fa.reshape(fa.shape[0], -1) @ fb.reshape(fb.shape[0], -1).T
        k = blk if k is None else k.add_(blk)
    assert k is not None
    return k


def _features_of(fn: Callable, x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """fn over x in chunks of `size`, written into preallocated per-parameter buffers (no concatenation)."""
    if x.shape[0] <= size:
        return fn(x)
    buffers: list[torch.Tensor] = []
    for s in _chunks(x.shape[0], size):
        part = fn(x[s])
        if not buffers:
            buffers = [p.new_empty((x.shape[0], *p.shape[1:])) for p in part]
        for buf, p in zip(buffers, part, strict=True):
            buf[s] = p
    return buffers


def _blocked_gram(
    fn: Callable,
    x1: torch.Tensor,
    x2: torch.Tensor | None,
    per_sample: int,
    budget: int,
    chunk_size: int | None,
    out: torch.Tensor,
) -> None:
    """Adds Σ_l F_l(x1) F_l(x2)ᵀ into `out` with at most ~`budget` bytes of gradients alive.

    Most of the budget holds an outer block of rows; a small inner chunk streams past it, so each
    inner example is recomputed n1/outer times (not n1/chunk) — recomputation, not the Gram, is what an
    even split wastes. A symmetric kernel computes only the upper block triangle and mirrors it.
    """
    symmetric = x2 is None
    xb = x1 if x2 is None else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    if chunk_size:
        outer = inner = chunk_size
    else:
        fits = budget // max(1, per_sample)
        if fits >= n1 + (0 if symmetric else n2):
            outer, inner = n1, max(n2, 1)
        else:
            outer = max(1, (3 * fits) // 4)
            inner = max(1, fits - outer)
    for si in _chunks(n1, outer):
        fi = _features_of(fn, x1[si], inner)
        start = si.start
        if symmetric:
            out[si, si] += _gram(fi, fi)
            start = si.stop
        else:
            start = 0
        for sj in _chunks(n2 - start, inner):
            sj = slice(sj.start + start, sj.stop + start)
            blk = _gram(fi, fn(xb[sj]))
            out[si, sj] += blk
            if symmetric:
                out[sj, si] += blk.T
        del fi


# ---------------------------------------------------------------- kernels


def empirical_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    output: Output = "trace",
    method: str = "auto",
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Exact empirical NTK K(x1, x2) (n1×n2; x2 None: the symmetric n1×n1 kernel), in the dtype of `precision`.

    ``method="auto"`` factorises dense layers, takes Conv2d layers through unfold GEMMs and everything else
    through per-sample Jacobians; ``"jacobian"`` uses per-sample Jacobians for every parameter (the
    reference, and slower). `memory_budget` (bytes; None: :func:`default_budget` of x1's device) bounds the
    per-sample gradients alive at once. `precision`: "float32", "float64" or None (the model's own float32
    or float64), see the module docstring.
    """
    model, (x1, x2), budget = _prepared(model, (x1, x2), precision, memory_budget)
    with ieee_float32(x1.device):
        return _empirical_ntk(model, x1, x2, output, method, budget, chunk_size)


def _empirical_ntk(model, x1, x2, output, method, memory_budget, chunk_size) -> torch.Tensor:
    routes = plan_routes(model, x1, method)
    symmetric = x2 is None
    xb = x1 if symmetric else x2
    dtype = next(p for p in model.parameters() if p.requires_grad).dtype
    k = torch.zeros(x1.shape[0], xb.shape[0], dtype=dtype, device=x1.device)
    c_out = _n_outputs(model, x1, output)
    pairs = _pair_route_convs(model, x1, routes.conv, c_out)
    explicit = [name for name in routes.conv if name not in pairs]
    per_sample = (
        c_out * _route_param_count(model, replace(routes, conv=tuple(explicit)), False) * k.element_size()
    )
    fits = per_sample * (x1.shape[0] + (0 if symmetric else xb.shape[0])) <= memory_budget
    inline = explicit if fits and not routes.generic else []  # their gradients come from the same pass
    stored = list(routes.dense) + pairs
    if stored or inline:  # one capture pass per dataset for the dense and conv layers together
        chunk = chunk_size or min(x1.shape[0], 256)
        taps = _Taps(stored + inline)
        f1, g1 = _stored_factors(model, x1, stored, output, chunk, inline, taps)
        f2, g2 = (f1, g1) if symmetric else _stored_factors(model, xb, stored, output, chunk, inline, taps)
        modules = dict(model.named_modules())
        for name in routes.dense:
            k += _dense_kernel(f1[name], f2[name], modules[name].bias is not None)
        _conv_pair_kernel(f1, f2, modules, pairs, symmetric, memory_budget, chunk_size, k)
        if inline:
            k += _gram(g1, g2)
        del f1, f2, g1, g2
        routes = replace(routes, conv=tuple(name for name in explicit if name not in inline))
    if routes.conv or routes.generic:
        per_sample = c_out * _route_param_count(model, routes, False) * k.element_size()
        fn = _gradient_fn(model, routes, output, include_dense=False)
        _blocked_gram(fn, x1, x2, per_sample, memory_budget, chunk_size, k)
    return k


def _dense_kernel(f1, f2, bias: bool) -> torch.Tensor:
    """A dense layer's kernel from its factors: (A1 A2ᵀ + 1) ⊙ (G1 G2ᵀ)."""
    inputs = f1[0] @ f2[0].T
    if bias:
        inputs += 1
    return inputs.mul_(f1[1] @ f2[1].T)


def ntk_diagonal(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: Output = "trace",
    method: str = "auto",
    memory_budget: int | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """K(x_i, x_i) for every i, without the off-diagonal (for the trNTK normalisation of a cross-kernel)."""
    model, (x,), memory_budget = _prepared(model, (x,), precision, memory_budget)
    with ieee_float32(x.device):
        routes = plan_routes(model, x, method)
        dtype = next(p for p in model.parameters() if p.requires_grad).dtype
        diag = torch.zeros(x.shape[0], dtype=dtype, device=x.device)
        if routes.dense:
            modules = dict(model.named_modules())
            for name, (a, g) in _stored_factors(model, x, list(routes.dense), output, 1024)[0].items():
                diag += (a.square().sum(1) + (modules[name].bias is not None)) * g.square().sum(1)
        if routes.conv or routes.generic:
            c_out = _n_outputs(model, x, output)
            per_sample = c_out * _route_param_count(model, routes, False) * diag.element_size()
            fn = _gradient_fn(model, routes, output, include_dense=False)
            for s in _chunks(x.shape[0], _chunk_size(per_sample, memory_budget, x.shape[0])):
                for f in fn(x[s]):
                    diag[s] += f.reshape(f.shape[0], -1).square().sum(1)
        return diag


def _chunk_size(per_sample_bytes: int, budget: int, n: int) -> int:
    return max(1, min(n, budget // max(1, per_sample_bytes)))


# ---------------------------------------------------------------- projected and subsampled features


def _per_sample_gradients(
    model, x, output, budget, chunk_size, overhead: int = 1
) -> Iterator[tuple[slice, list[torch.Tensor]]]:
    """Per-sample gradients of every trainable parameter, chunk by chunk: (slice, [(b, C', P_i)])."""
    routes = plan_routes(model, x)
    fn = _gradient_fn(model, routes, output, include_dense=True)
    elem = next(p for p in model.parameters() if p.requires_grad).element_size()
    per_sample = overhead * _n_outputs(model, x, output) * _route_param_count(model, routes, True) * elem
    size = chunk_size or _chunk_size(per_sample, budget, x.shape[0])
    for s in _chunks(x.shape[0], size):
        yield s, fn(x[s])


def _srft_plan(p: int, k: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Random signs (p,), the gather index into view_as_real(rfft) and its scale, and the padded length m.

    The real DFT with norm="ortho" read as [Re X_0, √2 Re X_1.., Re X_{m/2}, √2 Im X_1..] is orthogonal, so
    sign-flipping, transforming and keeping k of the m coordinates scaled by √(m/k) preserves every
    inner product in expectation (the subsampled randomised Fourier transform of Ailon & Chazelle).
    """
    m = 1 << max(1, (max(p, k) - 1).bit_length())
    g = torch.Generator().manual_seed(seed)
    signs = (torch.randint(0, 2, (p,), generator=g) * 2 - 1).to(device)
    coords = torch.randperm(m, generator=g)[:k]
    half = m // 2
    real = coords <= half  # coordinates 0..m/2 are the real parts of frequencies 0..m/2
    freq = torch.where(real, coords, coords - half)
    gather = 2 * freq + (~real).long()  # index into view_as_real(X).reshape(-1): (re, im) pairs
    scale = torch.where(real & ((freq == 0) | (freq == half)), 1.0, math.sqrt(2.0)) * math.sqrt(m / k)
    return signs, gather.to(device), scale.to(device), m


def projected_gradients(
    model: nn.Module,
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    output: Output = "trace",
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Per-sample gradients randomly projected to k dimensions: (n, C', k), with E[F Fᵀ] = K.

    The projection is a subsampled randomised Fourier transform (random signs, an orthogonal real FFT
    over the P parameters zero-padded to a power of two m, k coordinates kept and scaled by √(m/k)): it
    costs O(P log P) per gradient, is never stored, and is a function of (seed, P) alone, so train and test
    features of the same model share it. Relative error ~ 1/√k (Johnson–Lindenstrauss); memory O(n·C'·k)
    plus one budget-bounded chunk of per-sample gradients (and its transform).
    """
    model, (x,), memory_budget = _prepared(model, (x,), precision, memory_budget)
    feats = []
    plan = None
    with ieee_float32(x.device):
        for _, grads in _per_sample_gradients(model, x, output, memory_budget, chunk_size, overhead=3):
            b, c = grads[0].shape[:2]
            flat = torch.cat([g.reshape(b * c, -1) for g in grads], dim=1)
            if plan is None:
                plan = _srft_plan(flat.shape[1], k, seed, flat.device)
            signs, gather, scale, m = plan
            spec = torch.fft.rfft(flat * signs.to(flat.dtype), n=m, dim=1, norm="ortho")
            del flat
            f = torch.view_as_real(spec).reshape(b * c, -1)[:, gather] * scale.to(spec.real.dtype)
            feats.append(f.reshape(b, c, k))
    return torch.cat(feats)


def subsampled_gradients(
    model: nn.Module,
    x: torch.Tensor,
    k: int = 500_000,
    *,
    seed: int = 0,
    output: Output = "trace",
    memory_budget: int | None = None,
    chunk_size: int | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Per-sample gradients restricted to a seeded subset of k parameters (Campbell et al.), (n, C', k').

    Scaled by √(P/k') so that E[F Fᵀ] = K (a uniform subset S has E[K_S] = (|S|/P)·K); k' = min(k, P).
    The subset is drawn on the CPU from `seed` (the same on every device) and each parameter's share of it
    is moved to the gradients' device once.
    """
    model, (x,), memory_budget = _prepared(model, (x,), precision, memory_budget)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kk = min(k, total)
    g = torch.Generator().manual_seed(seed)
    chosen = torch.sort(torch.randperm(total, generator=g)[:kk]).values
    index: list[torch.Tensor] = []  # per parameter block: its chosen coordinates, on the gradients' device
    feats = []
    with ieee_float32(x.device):
        for _, grads in _per_sample_gradients(model, x, output, memory_budget, chunk_size):
            if not index:
                offset = 0
                for grad in grads:
                    size = math.prod(grad.shape[2:])
                    lo, hi = (int(i) for i in torch.searchsorted(chosen, torch.tensor([offset, offset + size])))
                    index.append((chosen[lo:hi] - offset).to(grad.device))
                    offset += size
            parts = [
                grad.reshape(grad.shape[0], grad.shape[1], -1)[:, :, idx]
                for grad, idx in zip(grads, index, strict=True)
            ]
            feats.append(torch.cat(parts, dim=2) * math.sqrt(total / kk))
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
    """The (flattened) inputs of module `layer` for every example of x, batch by batch under no_grad
    (copied where the model later writes them in place, see :class:`_Taps`)."""
    taps = _Taps([layer], outputs=False)
    captured: list[torch.Tensor] = []
    with torch.no_grad():
        for s in _chunks(x.shape[0], batch_size):
            a = taps.run(model, lambda s=s: model(x[s]))[1][layer]
            captured.append(a.reshape(a.shape[0], -1))
    return torch.cat(captured)


def conjugate_kernel(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    layer: str | None = None,
    *,
    precision: str | None = None,
):
    """Gram of the penultimate features (the inputs of the last dense layer, or of `layer`), in the dtype
    of `precision` (see the module docstring)."""
    model, (x1, x2), _ = _prepared(model, (x1, x2), precision, 0)
    layer = layer or penultimate_layer(model)
    with ieee_float32(x1.device):
        a = layer_inputs(model, x1, layer)
        b = a if x2 is None else layer_inputs(model, x2, layer)
        return a @ b.T
