"""Layer selection by name/glob and per-batch activation capture with forward hooks."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from audit.api import capture
from audit.api.capture import OUTPUT, default_layers, resolve_layers, stream_activations
from audit.api.errors import ProbeInputError


def mlp(device: torch.device | str = "cpu") -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    return model.to(device).eval()


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 4)  # registered, never called in forward

    def forward(self, x):
        return self.head(self.encoder(x))


def data(n: int = 10, batch_size: int = 4, with_targets: bool = True, device: torch.device | str = "cpu"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g).to(device)  # drawn on the CPU: the same values on every device
    y = (torch.arange(n) % 3).to(device)
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size] if with_targets else None)
        for i in range(0, n, batch_size)
    ]
    return x, y, batches


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- layer selection


X4 = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))


def test_default_layers_are_modules_with_parameters_plus_output():
    assert default_layers(mlp(), X4) == ["0", "2", "4", "output"]


def test_default_layers_leave_out_a_module_the_forward_pass_never_calls():
    assert default_layers(Nested(), X4) == ["encoder.0", "head", "output"]


def test_no_patterns_means_default_layers():
    model = mlp()
    assert resolve_layers(model, None, X4) == ["0", "2", "4", OUTPUT]
    assert resolve_layers(model, [], X4) == ["0", "2", "4", OUTPUT]


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["2"], ["2"]),
        (["4", "0"], ["0", "4"]),  # module order, not pattern order
        (["*"], ["0", "1", "2", "3", "4"]),  # every named module; the root ("") and output are not modules
        (["output", "0"], ["0", "output"]),  # output comes after every module
        (["0", "0", "[02]", "*"], ["0", "1", "2", "3", "4"]),  # no duplicates
        (["[13]"], ["1", "3"]),
        (["output"], ["output"]),
    ],
)
def test_resolve_layers(patterns, expected):
    assert resolve_layers(mlp(), patterns, X4) == expected


def test_resolve_layers_globs_on_nested_names():
    model = Nested()
    assert resolve_layers(model, ["encoder.*"], X4) == ["encoder.0", "encoder.1"]
    assert resolve_layers(model, ["head", "encoder"], X4) == ["encoder", "head"]
    assert resolve_layers(model, ["*0", OUTPUT, "head"], X4) == ["encoder.0", "head", OUTPUT]


def test_a_glob_drops_modules_that_never_run_and_an_exact_name_of_one_is_an_error():
    model = Nested()
    assert resolve_layers(model, ["*"], X4) == ["encoder", "encoder.0", "encoder.1", "head"]
    with pytest.raises(ProbeInputError) as info:
        resolve_layers(model, ["head", "unused"], X4)
    assert str(info.value) == "layer 'unused' is never called in the forward pass (matched by 'unused')"


def test_resolve_layers_is_case_sensitive_and_reports_a_pattern_matching_nothing():
    with pytest.raises(ProbeInputError) as info:
        resolve_layers(Nested(), ["encoder", "Head"], X4)
    assert str(info.value) == (
        "layer pattern 'Head' matches no module (modules: encoder, encoder.0, encoder.1, head, unused)"
    )


def test_unmatched_pattern_lists_at_most_eight_modules():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(ProbeInputError) as info:
        resolve_layers(model, ["fc*"], torch.randn(3, 2))
    assert str(info.value) == "layer pattern 'fc*' matches no module (modules: 0, 1, 2, 3, 4, 5, 6, 7 …)"


# ---------------------------------------------------------------- streaming


def manual_forward(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    acts = {}
    h = x
    for name, layer in model.named_children():
        h = layer(h)
        acts[name] = h
    acts[OUTPUT] = h
    return acts


def test_stream_activations_equal_a_manual_forward(device):
    model = mlp(device)
    _, y, batches = data(10, 4, device=device)
    layers = ["4", "0", OUTPUT, "3"]  # yielded in the requested order
    seen = list(stream_activations(model, batches, layers))
    assert len(seen) == 3
    with torch.no_grad():
        for (acts, out, targets), (xb, yb) in zip(seen, batches, strict=True):
            expected = manual_forward(model, xb)
            assert [a.shape for a in acts] == [expected[n].shape for n in layers]
            for name, act in zip(layers, acts, strict=True):
                assert torch.allclose(act, expected[name], atol=1e-6), name
            assert torch.equal(out, model(xb))
            assert torch.equal(acts[2], out)
            assert targets is yb
            assert not out.requires_grad and not any(a.requires_grad for a in acts)
    assert [acts[0].shape[0] for acts, _, _ in seen] == [4, 4, 2]
    assert torch.equal(torch.cat([t for _, _, t in seen]), y)
    assert no_hooks(model)


def test_stream_activations_without_targets():
    model = mlp()
    _, _, batches = data(5, 5, with_targets=False)
    ((acts, _, targets),) = list(stream_activations(model, batches, ["2"]))
    assert targets is None
    assert acts[0].shape == (5, 5)


def test_relu_activation_is_the_relu_output(device):
    model = mlp(device)
    x, _, batches = data(6, 6, device=device)
    ((acts, _, _),) = list(stream_activations(model, batches, ["1", "2"]))
    with torch.no_grad():
        pre = model[0](x)
        assert torch.equal(acts[0], torch.relu(pre))
        assert torch.allclose(acts[1], model[2](torch.relu(pre)), atol=1e-6)
    assert (acts[0] >= 0).all() and (acts[0] == 0).any()


def test_hooks_are_removed_when_the_generator_is_closed_early():
    model = mlp()
    _, _, batches = data(12, 4)
    stream = stream_activations(model, batches, ["0", "2"])
    next(stream)
    assert model[0]._forward_hooks and model[2]._forward_hooks  # installed while streaming
    stream.close()
    assert no_hooks(model)


def test_a_module_not_called_in_forward():
    model = Nested()
    _, _, batches = data(8, 4)
    with pytest.raises(ProbeInputError) as info:
        list(stream_activations(model, batches, ["head", "unused"]))
    assert str(info.value) == "layer(s) unused were not called in the forward pass"
    assert no_hooks(model)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)

    def forward(self, x):
        return self.shared(torch.tanh(self.shared(x)))


def test_a_module_run_twice_per_forward_is_refused_not_silently_overwritten():
    model = Twice()
    _, _, batches = data(4, 4)
    with pytest.raises(ProbeInputError, match=r"^layer 'shared' ran more than once in one forward pass$"):
        list(stream_activations(model, batches, ["shared"]))
    assert default_layers(model, X4) == [OUTPUT]
    with pytest.raises(ProbeInputError, match="runs 2 times per forward pass"):
        resolve_layers(model, ["shared"], X4)


def test_an_unknown_layer_name():
    model = mlp()
    _, _, batches = data(4, 4)
    with pytest.raises(ProbeInputError, match=r"^the model has no module named '9'$"):
        list(stream_activations(model, batches, ["0", "9"]))
    assert no_hooks(model)


class TupleOut(nn.Module):
    def forward(self, x):
        return x * 2, x * 3


class DictOut(nn.Module):
    def forward(self, x):
        return {"a": x}


class NoTensor(nn.Module):
    def forward(self, x):
        return "text"


class WithTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.pair = TupleOut()

    def forward(self, x):
        return self.pair(self.lin(x))[0]


def test_tuple_output_uses_the_first_tensor_and_non_tensors_are_refused():
    model = WithTuple()
    x, _, batches = data(4, 4)
    ((acts, out, _),) = list(stream_activations(model, batches, ["pair", OUTPUT]))
    with torch.no_grad():
        assert torch.equal(acts[0], model.lin(x) * 2)
    assert torch.equal(acts[1], out)

    keyed = nn.Sequential(nn.Linear(4, 4), DictOut())  # a mapping: its tensor (see pick_output)
    ((acts, out, _),) = list(stream_activations(keyed, batches, ["1", OUTPUT]))
    with torch.no_grad():
        assert torch.equal(acts[0], keyed[0](x)) and torch.equal(out, acts[0])

    bad = nn.Sequential(nn.Linear(4, 4), NoTensor())
    with pytest.raises(ProbeInputError, match=r"^layer '1' returned str, not a tensor$"):
        list(stream_activations(bad, batches, ["1"]))
    assert no_hooks(bad)
    with pytest.raises(ProbeInputError, match=r"^the model's output is not a tensor$"):
        list(stream_activations(bad, batches, ["0"]))
    assert no_hooks(bad)


def test_activations_stay_on_the_model_device_and_dtype(device):
    model = mlp(device).double()
    x, _, batches = data(4, 4, device=device)
    batches = [(xb.double(), yb) for xb, yb in batches]
    ((acts, out, _),) = list(stream_activations(model, batches, ["0", OUTPUT]))
    assert acts[0].dtype == torch.float64 and out.dtype == torch.float64
    assert acts[0].device == x.device == out.device
    assert acts[0].device.type == torch.device(device).type


# ---------------------------------------------------------------- memory: nothing kept across batches


def test_slots_hold_only_the_current_batch(monkeypatch, device):
    captures = []
    original = capture.Capture.__enter__

    def spy(self):
        captures.append(self)
        return original(self)

    monkeypatch.setattr(capture.Capture, "__enter__", spy)
    model = mlp(device)
    _, _, batches = data(10, 4, device=device)  # batch sizes 4, 4, 2
    layers = ["0", "2", "4", OUTPUT]
    sizes = []
    for acts, _out, _y in stream_activations(model, batches, layers):
        (cap,) = captures
        batch = acts[0].shape[0]
        sizes.append(batch)
        assert set(cap.slots) == {"0", "2", "4"}
        assert all(s.value().shape[0] == batch for s in cap.slots.values())
        # the slots' tensors are the ones handed out, not copies kept aside
        assert all(cap.slots[n].value() is a for n, a in zip(layers, acts, strict=True) if n != OUTPUT)
    assert sizes == [4, 4, 2]
    assert no_hooks(model)


def test_activations_of_a_batch_are_released_after_the_next_batch(device):
    model = mlp(device)
    _, _, batches = data(12, 4, device=device)
    stream = stream_activations(model, batches, ["0", "2", OUTPUT])
    acts, out, _ = next(stream)
    try:
        refs = [weakref.ref(t) for t in [*acts, out]]
    except TypeError:  # pragma: no cover - a torch without weak references to tensors
        pytest.skip("tensors do not support weak references in this torch")
    del acts, out
    gc.collect()
    assert all(r() is not None for r in refs[:2])  # still held by the slots while batch 0 is current
    next(stream)
    gc.collect()
    assert [r() for r in refs] == [None, None, None, None]
    stream.close()
    assert no_hooks(model)


def test_grad_mode_does_not_leak_out_of_suspended_or_interleaved_streams():
    """A partly consumed stream, or two interleaved ones (cka A vs B), must leave autograd as it was."""
    a = torch.nn.Sequential(torch.nn.Linear(3, 2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2))
    batches = [(torch.randn(4, 3), None), (torch.randn(4, 3), None)]
    sa = stream_activations(a, batches, ["0"])
    sb = stream_activations(b, batches, ["0"])
    acts, _, _ = next(sa)
    assert torch.is_grad_enabled() and not acts[0].requires_grad
    next(sb)
    assert torch.is_grad_enabled()
    for _ in sa:
        pass
    for _ in sb:
        pass
    assert torch.is_grad_enabled()
