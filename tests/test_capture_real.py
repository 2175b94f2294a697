"""Capture on the architectures users audit: in-place writes, modules that never run, sequence-first
layers, structured outputs. Every activation is compared with an independent float64 path: the same
weights with every in-place flag off and residual adds written out of place (tests/architectures.py)."""

from __future__ import annotations

import pytest
import torch
from architectures import (
    ConvBNReLU,
    LinearReLU,
    RecurrentClassifier,
    TransformerClassifier,
    out_of_place,
    resnet18,
    seeded,
)
from torch import nn

from audit.api.capture import (
    OUTPUT,
    Capture,
    features,
    pick_output,
    select_output,
    stream_activations,
    survey,
)
from audit.api.errors import ProbeInputError
from model_audit_probes.cka.hsic import MinibatchCKA

ATOL = 1e-10  # float64 throughout: the same arithmetic in the same order, so agreement to rounding


def batches_of(x: torch.Tensor, size: int):
    return [(x[i : i + size], None) for i in range(0, x.shape[0], size)]


def captured(model: nn.Module, x: torch.Tensor, layers: list[str], size: int = 8):
    axes = survey(model, x).axes(layers)
    acts = [a for a, _, _ in stream_activations(model, batches_of(x, size), layers, axes)]
    return [torch.cat([batch[i] for batch in acts]) for i in range(len(layers))]


def reference_outputs(model: nn.Module, x: torch.Tensor, layers: list[str]) -> list[torch.Tensor]:
    """Each module's output from the out-of-place copy, whole batch, hooks that copy (nothing overwrites)."""
    ref = out_of_place(model)
    modules = dict(ref.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [
        modules[n].register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o.clone()))
        for n in layers
        if n != OUTPUT
    ]
    with torch.no_grad():
        out = ref(x)
    for h in handles:
        h.remove()
    return [out if n == OUTPUT else seen[n] for n in layers]


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor], layers: list[str]) -> None:
    for name, g, w in zip(layers, got, want, strict=True):
        assert g.shape == w.shape, name
        assert torch.allclose(g, w, rtol=0, atol=ATOL * max(1.0, float(w.abs().max()))), name


# ---------------------------------------------------------------- in-place writes


def test_linear_then_inplace_relu_keeps_the_pre_relu_values(device):
    model = seeded(LinearReLU).double().to(device)
    x = torch.randn(32, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    layers = ["fc1", "act", "fc2", OUTPUT]
    got = captured(model, x, layers)
    assert_same(got, reference_outputs(model, x, layers), layers)
    assert (got[0] < 0).any()  # the pre-activation, not the ReLU's output


def test_conv_bn_inplace_relu_residual_add_and_relu_(device):
    model = seeded(ConvBNReLU).double().to(device)
    model.bn.running_mean.fill_(0.3)
    x = torch.randn(16, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    layers = ["conv", "bn", "conv2", "head", OUTPUT]
    assert_same(captured(model, x, layers, size=5), reference_outputs(model, x, layers), layers)


def test_cka_of_a_layer_before_an_inplace_relu_is_not_one(device):
    """The reported failure: Linear → ReLU(inplace) gave CKA 1.000 between the two instead of < 1."""
    model = seeded(LinearReLU).double().to(device)
    x = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    layers = ["fc1", "act"]
    acc, ref = (
        MinibatchCKA(2, None, "unbiased", torch.float64),
        MinibatchCKA(2, None, "unbiased", torch.float64),
    )
    for acts, _, _ in stream_activations(model, batches_of(x, 16), layers):
        acc.update(acts)
    for i in range(0, 64, 16):
        acts = reference_outputs(model, x[i : i + 16], layers)
        ref.update(acts)
    got, want = acc.matrix(), ref.matrix()
    assert abs(got[0, 1] - want[0, 1]) < 1e-12
    assert got[0, 1] < 0.99  # pre- and post-ReLU differ


@pytest.fixture(scope="module")
def resnet_and_data():
    model = resnet18(num_classes=10).double()
    x = torch.randn(24, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return model, x


def test_resnet18_default_layers_are_every_conv_bn_and_fc_plus_output(resnet_and_data):
    model, x = resnet_and_data
    layers = survey(model, x).default_layers()
    convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    assert layers == [*convs, OUTPUT]
    assert len(layers) == 42  # 20 convs, 20 BatchNorms, fc, output


def test_resnet18_activations_equal_the_out_of_place_reference(resnet_and_data):
    model, x = resnet_and_data
    layers = survey(model, x).default_layers()
    assert_same(captured(model, x, layers, size=8), reference_outputs(model, x, layers), layers)


def test_only_layers_written_in_place_are_copied(resnet_and_data):
    model, x = resnet_and_data
    layers = survey(model, x).default_layers()
    with Capture(model, layers) as cap:
        cap.forward(x[:4])
        # every BatchNorm output on the main path is written in place (by the ReLU, or by `out += identity`);
        # no conv output is, nor a shortcut's BatchNorm (`identity` is added, not added to)
        bns = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        assert cap.copied == {n for n in bns if "downsample" not in n}
        cap.forward(x[4:8])
        assert {n for n, s in cap.slots.items() if s.copy is not None} == cap.copied
    ref = out_of_place(model)
    with Capture(ref, layers) as cap:
        cap.forward(x[:4])
        cap.forward(x[4:8])
        assert cap.copied == set()
        assert all(s.copy is None for s in cap.slots.values())  # no copies where nothing writes in place


class SometimesInPlace(nn.Module):
    """Writes its hidden layer in place only for batches whose first input is positive (a data-dependent path)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x):
        h = self.fc1(x)
        h = h.relu_() if x[0, 0] > 0 else torch.relu(h)
        return self.fc2(h)


def test_a_layer_written_in_place_only_on_a_later_batch_is_recaptured(device):
    torch.manual_seed(0)
    model = SometimesInPlace().double().eval().to(device)
    x = torch.randn(12, 3, dtype=torch.float64).to(device)
    x[0, 0], x[4, 0], x[8, 0] = -1.0, -1.0, 1.0  # only the third batch takes the in-place path
    got = captured(model, x, ["fc1"], size=4)[0]
    with torch.no_grad():
        assert torch.allclose(got, model.fc1(x), rtol=0, atol=ATOL)


# ---------------------------------------------------------------- which modules run, where the batch is


def test_transformer_defaults_skip_attention_out_proj_and_are_batch_first():
    model = seeded(TransformerClassifier).double()
    x = torch.randn(10, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    found = survey(model, x)
    layers = found.default_layers()
    assert "encoder.layers.0.self_attn.out_proj" not in layers  # never called: attention reads its weight
    assert "encoder.layers.0.self_attn" in layers  # owns in_proj_weight and runs
    assert found.layers["encoder.layers.0.linear1"].batch_axis == 1  # (tokens, n, d) inside the encoder
    acts = captured(model, x, layers, size=4)
    shapes = dict(zip(layers, (a.shape for a in acts), strict=True))
    assert shapes["embed"] == (10, 7, 16)
    assert shapes["encoder.layers.1.linear1"] == (10, 7, 32)  # handed out batch-first
    assert shapes[OUTPUT] == (10, 3)
    with torch.no_grad():  # the captured encoder layer equals a manual pass, batch-first
        h = model.embed(x).transpose(0, 1)
        first = model.encoder.layers[0](h)
        assert torch.allclose(acts[layers.index("encoder.layers.0.norm2")], first.transpose(0, 1), atol=1e-12)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_layers_are_found_and_handed_out_batch_first(kind):
    model = seeded(RecurrentClassifier, kind=kind).double()
    x = torch.randn(9, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    layers = survey(model, x).default_layers()
    assert layers == ["rnn", "head", OUTPUT]
    (rnn_out, _, _) = captured(model, x, layers, size=4)
    with torch.no_grad():
        want, _ = model.rnn(x.transpose(0, 1))
    assert rnn_out.shape == (9, 5, 12)
    assert torch.allclose(rnn_out, want.transpose(0, 1), atol=1e-12)


class WithPositions(nn.Module):
    """A token model with a position embedding (no batch axis) and a constant segment embedding."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(20, 8)
        self.positions = nn.Embedding(10, 8)
        self.segments = nn.Embedding(2, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        pos = self.positions(torch.arange(ids.shape[1]).unsqueeze(0))  # (1, T, d): broadcast over the batch
        seg = self.segments(torch.zeros_like(ids))  # the same for every example
        return self.head((self.tokens(ids) + pos + seg).mean(dim=1))


def test_defaults_leave_out_lookups_that_cannot_depend_on_the_example():
    torch.manual_seed(0)
    model = WithPositions().eval()
    ids = torch.randint(0, 20, (6, 5), generator=torch.Generator().manual_seed(6))
    found = survey(model, ids)
    assert found.default_layers() == ["tokens", "head", OUTPUT]
    assert found.layers["positions"].batch_axis is None
    assert found.layers["segments"].fixed_lookup and not found.layers["tokens"].fixed_lookup
    with pytest.raises(ProbeInputError, match=r"output \(1, 5, 8\) without a batch axis"):
        found.axes(["positions"])


# ---------------------------------------------------------------- structured outputs, feature rows


def test_pick_output_rules():
    t, u = torch.ones(2, 3), torch.zeros(2, 4)
    assert pick_output(t) is t
    assert pick_output((u, t)) is u
    assert pick_output({"hidden": u, "logits": t}) is t  # logits first
    assert pick_output({"last_hidden_state": u, "pooler_output": t}) is t
    assert pick_output({"a": [1], "b": u}) is u
    assert pick_output({"hidden_states": (t, u)}, "hidden_states.-1") is u
    assert pick_output({"hidden_states": (t, u)}, "hidden_states[0]") is t
    assert pick_output((t, u), 1) is u
    with pytest.raises(ProbeInputError, match=r"without 'logits' \(it has: a\)"):
        pick_output({"a": t}, "logits")
    with pytest.raises(ProbeInputError, match="holds no tensor"):
        pick_output({"a": 1})


def test_select_output_narrows_the_call_and_keeps_names_and_functional_call():
    class Structured(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.fc(x)
            return {"logits": h, "hidden": torch.tanh(h)}

    torch.manual_seed(0)
    model = select_output(Structured(), "hidden")
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.allclose(model(x), torch.tanh(model.fc(x)))
    assert [n for n, _ in model.named_modules()] == ["", "fc"]
    params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    assert torch.equal(torch.func.functional_call(model, params, (x,)), torch.zeros(4, 2))
    select_output(model, "auto")  # replaces the rule: the mapping's logits
    with torch.no_grad():
        assert torch.allclose(model(x), model.fc(x))
    assert len(model._forward_hooks) == 1


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("flatten", (4, 15)), ("mean", (4, 5)), ("first", (4, 5)), ("last", (4, 5))],
)
def test_feature_rows_of_token_sequences(rule, expected):
    t = torch.arange(60.0).reshape(4, 3, 5)
    f = features(t, rule)
    assert f.shape == expected
    if rule == "first":
        assert torch.equal(f, t[:, 0])
    if rule == "mean":
        assert torch.allclose(f, t.mean(dim=1))
    assert features(torch.ones(4, 2, 3, 3), rule).shape == (4, 18)  # conv maps: always flattened
    assert features(torch.ones(4, 7), rule).shape == (4, 7)
