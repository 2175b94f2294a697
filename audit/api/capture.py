"""Layer activations by module name or glob, captured with forward hooks one batch at a time.

Nothing is kept across batches: each batch's activations are handed to the caller and dropped, so
memory follows the batch size. Activations stay on the model's device; the pseudo-layer ``output``
is the model's own output.

Three things real architectures do that this module is built around:

* **In-place operations.** ``nn.ReLU(inplace=True)``, ``out += identity`` in a residual block or
  ``x.relu_()`` overwrite the tensor a forward hook just saw: a plain ``output.detach()`` would later
  hold the post-ReLU values (every torchvision ResNet, VGG, DenseNet and MobileNet does this). Each hooked
  tensor's version counter is read when the hook runs and again after the forward pass: a layer whose
  output was written in place is captured as a copy from then on (on the first batch every layer is
  copied, so that batch needs no second forward). A layer without an in-place successor costs nothing.
* **Which modules run.** The default layers are found from one real batch (:func:`survey`): the modules
  that own parameters *and that the forward pass calls* (``MultiheadAttention.out_proj`` never is: the
  attention reads its weight directly), once, with an output that has a batch axis (a position embedding
  looked up as (1, tokens) has none; one looked up with the same ids for every example is left out too).
* **Where the batch axis is.** ``nn.LSTM``/``nn.GRU`` and ``nn.TransformerEncoder`` without ``batch_first``
  produce (tokens, batch, d). The survey runs two forwards of different batch sizes and records, per layer,
  the axis that follows the batch; activations are handed out batch-first.

A model whose forward returns a ``dict``/``ModelOutput`` (Hugging Face) or a tuple is read through
:func:`select_output`, so that every probe sees one tensor per example.

torch is imported by the functions that use it: a probe declares ``choices=SEQUENCE_RULES`` without it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.api.errors import ProbeInputError, UsageError

if TYPE_CHECKING:
    import torch

OUTPUT = "output"

# the output a structured model result is read from when the config names none, in this order
AUTO_OUTPUT_KEYS = ("logits", "pooler_output", "last_hidden_state")

# how a (batch, tokens, d) activation becomes one feature vector per example (see `features`)
SEQUENCE_RULES = ("flatten", "mean", "first", "last")

SURVEY_EXAMPLES = 8  # examples of the first batch used to find the layers a forward pass calls


# ---------------------------------------------------------------- model outputs


def _path_parts(rule: str) -> list[str]:
    return [p for p in rule.replace("[", ".").replace("]", "").split(".") if p]


def pick_output(value: object, rule: str | int | None = None, where: str = "the model") -> torch.Tensor:
    """The tensor a (possibly structured) forward result stands for.

    ``rule`` None/"auto": a tensor is itself; a mapping (``dict``, Hugging Face ``ModelOutput``) gives the
    first of :data:`AUTO_OUTPUT_KEYS` it holds, else its first tensor; a tuple/list its first tensor. A
    string names a key or a dotted path (``"logits"``, ``"hidden_states.-1"``); an int an element.
    """
    import torch

    if rule is None or rule == "auto":
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, Mapping):
            for key in AUTO_OUTPUT_KEYS:
                if isinstance(value.get(key), torch.Tensor):
                    return value[key]
            items = list(value.values())
        elif isinstance(value, (tuple, list)):
            items = list(value)
        else:
            items = []
        for item in items:
            if isinstance(item, torch.Tensor):
                return item
        raise ProbeInputError(f"{where} returned {type(value).__name__}, which holds no tensor")
    current = value
    for part in [rule] if isinstance(rule, int) else _path_parts(rule):
        try:
            if isinstance(current, Mapping):
                current = current[part]
            elif isinstance(current, (tuple, list)):
                current = current[int(part)]
            else:
                current = getattr(current, str(part))
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            available = ", ".join(map(str, current.keys())) if isinstance(current, Mapping) else ""
            hint = f" (it has: {available})" if available else ""
            raise ProbeInputError(
                f"output {rule!r}: {where} returned {type(current).__name__} without {part!r}{hint}"
            ) from None
    if not isinstance(current, torch.Tensor):
        raise ProbeInputError(f"output {rule!r} of {where} is {type(current).__name__}, not a tensor")
    return current


def select_output(model: torch.nn.Module, rule: str | int | None = None) -> torch.nn.Module:
    """Make ``model(x)`` return one tensor: the model's output read by `rule` (see :func:`pick_output`).

    Done with a forward hook on the model itself, so module names, parameters, ``torch.func.functional_call``
    and every probe see the model unchanged; only what a call returns is narrowed. Calling it again replaces
    the rule. Returns the model.
    """
    import torch

    old = getattr(model, "_audit_output_hook", None)
    if old is not None:
        old.remove()
    if isinstance(model, torch.jit.ScriptModule):  # scripted modules take no Python hooks
        if rule not in (None, "auto"):
            raise UsageError("output = ... cannot be applied to a TorchScript model; script the selection")
        return model

    def hook(_module, _inputs, out):
        return out if isinstance(out, torch.Tensor) and rule in (None, "auto") else pick_output(out, rule)

    model._audit_output_hook = model.register_forward_hook(hook)  # type: ignore[assignment]
    return model


def _first_tensor(value: object) -> torch.Tensor | None:
    """The tensor a module's output stands for (tuples: the first; mappings: as :func:`pick_output`)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    try:
        return pick_output(value)
    except ProbeInputError:
        return None


# ---------------------------------------------------------------- which layers run


@dataclass(frozen=True)
class LayerInfo:
    """What one forward pass showed of a module."""

    calls: int  # times the module ran per forward pass
    batch_axis: int | None  # axis of its output that follows the batch (None: none does, or no tensor)
    shape: tuple[int, ...] | None  # output shape on the survey batch
    # an embedding looked up with the same indices for every example (position or segment ids from a
    # buffer): its output cannot depend on the example, so it is no default layer
    fixed_lookup: bool = False


@dataclass(frozen=True)
class Survey:
    """Every named module of a model as seen by forwards of one real batch (see :func:`survey`)."""

    modules: tuple[str, ...]  # every named module, in registration order
    layers: Mapping[str, LayerInfo]  # the modules that ran
    owns_parameters: frozenset[str]

    def default_layers(self) -> list[str]:
        """Modules that own parameters, ran exactly once, and whose output has a batch axis — in registration
        order — plus ``output``; embeddings looked up with indices that are the same for every example
        (position ids) are left out. A layer that is constant because it is dead stays in: CKA flags it."""
        out = []
        for name in self.modules:
            info = self.layers.get(name)
            if name not in self.owns_parameters or info is None or info.fixed_lookup:
                continue
            if info.calls == 1 and info.batch_axis is not None:
                out.append(name)
        return [*out, OUTPUT]

    def check(self, name: str) -> str | None:
        """Why `name` cannot be captured, or None."""
        info = self.layers.get(name)
        if info is None:
            return f"layer {name!r} is never called in the forward pass"
        if info.calls > 1:
            return f"layer {name!r} runs {info.calls} times per forward pass; name a module that runs once"
        if info.shape is None:
            return f"layer {name!r} returns no tensor"
        if info.batch_axis is None:
            return f"layer {name!r} has an output {info.shape} without a batch axis"
        return None

    def resolve(self, patterns: Sequence[str] | None) -> list[str]:
        """Module names matching the patterns (names or fnmatch globs), in module order; ``output`` allowed.

        No pattern means :meth:`default_layers`. A pattern that matches no module is an error listing a few
        module names (a typo must not silently drop a layer); a glob drops the modules it matches that never
        run, run more than once or return no batch axis, and is an error only when none is left; a name
        matched exactly must be capturable.
        """
        if not patterns:
            return self.default_layers()
        modules = list(self.modules)
        chosen: list[str] = []
        for pattern in patterns:
            if pattern == OUTPUT:
                matched = [OUTPUT]
            else:
                matched = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
                if not matched:
                    sample = ", ".join(modules[:8]) + (" …" if len(modules) > 8 else "")
                    raise ProbeInputError(f"layer pattern {pattern!r} matches no module (modules: {sample})")
                usable = [n for n in matched if self.check(n) is None]
                if not usable:
                    raise ProbeInputError(f"{self.check(matched[0])} (matched by {pattern!r})")
                matched = usable
            chosen.extend(m for m in matched if m not in chosen)
        order = {n: i for i, n in enumerate(modules)}
        return sorted(chosen, key=lambda n: order.get(n, len(order)))

    def axes(self, layers: Sequence[str]) -> dict[str, int]:
        """The batch axis of each named layer's output (0 for ``output``); an error for one not capturable."""
        axes: dict[str, int] = {}
        for name in layers:
            if name == OUTPUT:
                axes[name] = 0
                continue
            problem = self.check(name)
            if problem:
                raise ProbeInputError(problem)
            axes[name] = self.layers[name].batch_axis  # type: ignore[assignment]
        return axes


def _batch_axis(big: tuple[int, ...] | None, small: tuple[int, ...] | None, b: int) -> int | None:
    """The axis that is b in `big` and b−1 in `small`, all others equal (None when no axis is)."""
    if big is None or small is None or len(big) != len(small):
        return None
    if b < 2:
        return 0 if big and big[0] == b else None
    axes = [i for i, (p, q) in enumerate(zip(big, small, strict=True)) if p != q]
    if len(axes) == 1 and big[axes[0]] == b and small[axes[0]] == b - 1:
        return axes[0]
    return None


def _same_for_every_example(t: torch.Tensor, batch: int) -> bool:
    """An index tensor whose rows are all equal (or that has no batch axis at all)."""
    if t.dim() == 0 or t.shape[0] != batch:
        return True
    return batch > 1 and bool((t == t[:1]).all())


def survey(model: torch.nn.Module, x: torch.Tensor) -> Survey:
    """Run the model on up to :data:`SURVEY_EXAMPLES` examples of `x`, and on one example fewer, with a hook
    on every named module: which modules run, how often, and which axis of each output follows the batch."""
    import torch

    x = x[:SURVEY_EXAMPLES]
    b = int(x.shape[0])
    modules = [(name, m) for name, m in model.named_modules() if name]
    shapes: dict[str, list[tuple[int, ...] | None]] = {}
    calls: dict[str, int] = {}
    fixed: set[str] = set()
    record = {"on": True}

    def make(name: str, lookup: bool):
        def hook(_m, inputs, out):
            t = _first_tensor(out)
            shapes.setdefault(name, []).append(None if t is None else tuple(t.shape))
            if record["on"]:
                calls[name] = calls.get(name, 0) + 1
                index = inputs[0] if lookup and inputs else None
                if isinstance(index, torch.Tensor) and _same_for_every_example(index, b):
                    fixed.add(name)

        return hook

    handles = [m.register_forward_hook(make(name, isinstance(m, torch.nn.Embedding))) for name, m in modules]
    try:
        with torch.no_grad():
            model(x)
            record["on"] = False
            if b >= 2:
                model(x[: b - 1])
    finally:
        for h in handles:
            h.remove()
    layers = {}
    for name, n_calls in calls.items():
        seen = shapes[name]
        big = seen[n_calls - 1]
        small = seen[n_calls] if len(seen) > n_calls else None
        axis = _batch_axis(big, small, b) if b >= 2 else (0 if big else None)
        layers[name] = LayerInfo(n_calls, axis, big, name in fixed)
    owners = frozenset(name for name, m in modules if any(True for _ in m.parameters(recurse=False)))
    return Survey(tuple(name for name, _ in modules), layers, owners)


def default_layers(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """The layers captured when none are named: see :meth:`Survey.default_layers`."""
    return survey(model, x).default_layers()


def resolve_layers(model: torch.nn.Module, patterns: Sequence[str] | None, x: torch.Tensor) -> list[str]:
    """:meth:`Survey.resolve` on a survey of `model` on the batch `x`."""
    return survey(model, x).resolve(patterns)


# ---------------------------------------------------------------- capture


def features(t: torch.Tensor, sequence: str = "flatten") -> torch.Tensor:
    """One feature row per example from a batch-first activation.

    (n, d) stays; (n, tokens, d) follows `sequence` — ``flatten`` (n, tokens·d), ``mean`` over tokens,
    ``first`` (a [CLS] token) or ``last`` token; every other rank (conv maps (n, C, H, W)) is flattened.
    """
    if t.dim() == 2:
        return t
    if t.dim() == 1:
        return t.reshape(-1, 1)
    if t.dim() == 3 and sequence != "flatten":
        if sequence == "mean":
            return t.mean(dim=1)
        if sequence == "first":
            return t[:, 0]
        if sequence == "last":
            return t[:, -1]
        raise ValueError(f"sequence rule must be one of {', '.join(SEQUENCE_RULES)}, got {sequence!r}")
    return t.reshape(t.shape[0], -1)


class _Slot:
    """One hooked output: the tensor as the model holds it, its version then, and a copy when taken."""

    __slots__ = ("copy", "tensor", "version")

    def __init__(self, tensor: torch.Tensor, copy: bool):
        self.tensor = tensor
        self.version = tensor._version
        self.copy = tensor.clone() if copy else None

    def overwritten(self) -> bool:
        return self.tensor._version != self.version

    def value(self) -> torch.Tensor:
        return self.copy if self.copy is not None else self.tensor


@dataclass
class Capture:
    """Forward hooks on named modules that keep each one's output of the latest forward pass, safe from
    later in-place writes (see the module docstring). ``copied`` names the layers found written in place."""

    model: torch.nn.Module
    layers: Sequence[str]

    def __post_init__(self) -> None:
        self.slots: dict[str, _Slot] = {}
        self.copied: set[str] = set()
        self.copy_all = True  # until one forward has shown which layers are written in place
        self._handles: list = []

    def __enter__(self) -> Capture:
        modules = dict(self.model.named_modules())
        unknown = [n for n in self.layers if n != OUTPUT and n not in modules]
        if unknown:
            raise ProbeInputError(f"the model has no module named {unknown[0]!r}")
        for name in self.layers:
            if name != OUTPUT:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            t = _first_tensor(output)
            if t is None:
                raise ProbeInputError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            if name in self.slots:
                raise ProbeInputError(f"layer {name!r} ran more than once in one forward pass")
            self.slots[name] = _Slot(t.detach(), self.copy_all or name in self.copied)

        return hook

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One forward pass under no_grad: ({layer: output as the layer produced it}, model output)."""
        import torch

        for attempt in range(2):
            self.slots.clear()
            with torch.no_grad():
                out = self.model(x)
            out = out if isinstance(out, torch.Tensor) else _first_tensor(out)
            if out is None:
                raise ProbeInputError("the model's output is not a tensor")
            missing = [n for n in self.layers if n != OUTPUT and n not in self.slots]
            if missing:
                raise ProbeInputError(f"layer(s) {', '.join(missing)} were not called in the forward pass")
            late = {n for n, s in self.slots.items() if s.overwritten() and s.copy is None}
            first = self.copy_all
            self.copied |= {n for n, s in self.slots.items() if s.overwritten()}
            self.copy_all = False
            if not late or first:
                break
            # a layer written in place that this batch did not copy (a data-dependent path): run it again
            self.copy_all = attempt == 0
        self.copy_all = False
        return {n: s.value() for n, s in self.slots.items()}, out.detach()


def stream_activations(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
    layers: list[str],
    axes: Mapping[str, int] | None = None,
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
    """Yield (activations in ``layers`` order, model output, targets) for each batch; forwards under no_grad.

    Activations are batch-first (`axes`: each layer's batch axis, from :func:`batch_axes`; default 0) and
    hold the values each layer produced, whatever the model later wrote in place. The grad mode is switched
    around each forward only, never across a ``yield``: a context manager held open by a suspended generator
    would leak into the caller (and two interleaved streams would restore each other's state in the wrong
    order, leaving autograd off for the rest of the process).
    """
    axes = axes or {}
    with Capture(model, layers) as cap:
        for x, y in batches:
            store, out = cap.forward(x)
            acts = []
            for name in layers:
                t = out if name == OUTPUT else store[name]
                axis = axes.get(name, 0)
                acts.append(t.movedim(axis, 0) if axis else t)
            yield acts, out, y
