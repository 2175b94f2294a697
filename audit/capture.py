"""Layer activations by module name or glob, captured with forward hooks one batch at a time.

Nothing is kept across batches: each batch's activations are handed to the caller and dropped, so
memory follows the batch size. Activations stay on the model's device; the pseudo-layer ``output``
is the model's own output.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from audit.errors import ProbeInputError

OUTPUT = "output"


def default_layers(model: torch.nn.Module) -> list[str]:
    """Every leaf module that owns parameters, in registration order, plus the model's output."""
    names = [
        name
        for name, module in model.named_modules()
        if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False))
    ]
    return [*names, OUTPUT]


def resolve_layers(model: torch.nn.Module, patterns: list[str] | None) -> list[str]:
    """Module names matching the patterns (names or fnmatch globs), in module order; ``output`` allowed.

    An empty or missing pattern list means :func:`default_layers`. A pattern that matches nothing is an error
    that lists a few of the model's module names, since a typo would otherwise silently drop a layer.
    """
    if not patterns:
        return default_layers(model)
    modules = [name for name, _ in model.named_modules() if name]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [OUTPUT] if pattern == OUTPUT else [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            sample = ", ".join(modules[:8]) + (" …" if len(modules) > 8 else "")
            raise ProbeInputError(f"layer pattern {pattern!r} matches no module (modules: {sample})")
        chosen.extend(m for m in matched if m not in chosen)
    order = {n: i for i, n in enumerate(modules)}
    return sorted(chosen, key=lambda n: order.get(n, len(order)))


def _first_tensor(value: object) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


@contextmanager
def hooked(model: torch.nn.Module, layers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Register forward hooks on the named modules; the yielded dict holds the latest batch's outputs."""
    store: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            t = _first_tensor(output)
            if t is None:
                raise ProbeInputError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            store[name] = t.detach()

        return hook

    try:
        for name in layers:
            if name == OUTPUT:
                continue
            if name not in modules:
                raise ProbeInputError(f"the model has no module named {name!r}")
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def stream_activations(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    layers: list[str],
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
    """Yield (activations in ``layers`` order, model output, targets) for each batch; forwards run under no_grad.

    The grad mode is switched around each forward only, never across a ``yield``: a context manager held
    open by a suspended generator would leak into the caller (and two interleaved streams would restore
    each other's state in the wrong order, leaving autograd off for the rest of the process).
    """
    with hooked(model, layers) as store:
        for x, y in batches:
            store.clear()
            with torch.no_grad():
                out = _first_tensor(model(x))
            if out is None:
                raise ProbeInputError("the model's output is not a tensor")
            missing = [n for n in layers if n != OUTPUT and n not in store]
            if missing:
                raise ProbeInputError(f"layer(s) {', '.join(missing)} were not called in the forward pass")
            acts = [out.detach() if name == OUTPUT else store[name] for name in layers]
            yield acts, out.detach(), y
