"""Architectures users audit, small enough for a test: ResNet-18 as torchvision defines it, a transformer
encoder, recurrent classifiers, and Hugging Face models built offline from small configs with random weights.

Each builder seeds torch itself, so a model is the same in every test that builds it. ``out_of_place`` gives
the independent reference the capture and kernel tests compare against: the same weights with every
in-place flag off and the residual ``+=`` written out of place.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


resnet = _load(EXAMPLES / "08_resnet_cka_ood" / "resnet.py", "audit_tests_resnet")


def resnet18(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """torchvision's ResNet-18 (random weights, BatchNorm statistics perturbed so eval mode is not identity)."""
    torch.manual_seed(seed)
    model = resnet.resnet18(num_classes=num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(1 + 0.2 * torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


class _OutOfPlaceBlock(resnet.BasicBlock):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + identity)


def out_of_place(model: nn.Module) -> nn.Module:
    """A copy of `model` with every ``inplace`` flag off and ResNet blocks adding out of place."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
        if type(m) is resnet.BasicBlock:
            m.__class__ = _OutOfPlaceBlock
    return ref


class LinearReLU(nn.Module):
    """Linear → ReLU(inplace=True) → Linear: the smallest model whose capture in-place writes break."""

    def __init__(self, d_in: int = 8, hidden: int = 16, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBNReLU(nn.Module):
    """Conv → BatchNorm → ReLU(inplace=True), a residual block with ``+=`` and a ``relu_()`` call."""

    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn(self.conv(x)))
        out = self.conv2(h)
        out += h
        out.relu_()
        return self.head(out.mean(dim=(2, 3)))


class TransformerClassifier(nn.Module):
    """nn.TransformerEncoder (sequence-first, as torch's default) over (n, tokens, features) inputs."""

    def __init__(
        self, features: int = 6, d_model: int = 16, heads: int = 2, layers: int = 2, classes: int = 3
    ):
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=32, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x).transpose(0, 1))  # (tokens, n, d)
        return self.head(h.mean(dim=0))


class RecurrentClassifier(nn.Module):
    """An LSTM or GRU (sequence-first) over (n, tokens, features) inputs, classifying from the last step."""

    def __init__(self, kind: str = "lstm", features: int = 6, hidden: int = 12, classes: int = 3):
        super().__init__()
        cell = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cell(features, hidden, num_layers=2)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.transpose(0, 1))  # (tokens, n, hidden)
        return self.head(out[-1])


def seeded(build, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build(**kwargs).eval()


# ---------------------------------------------------------------- Hugging Face, small configs


def hf_models(seed: int = 0) -> dict[str, nn.Module]:
    """Small random-weight Hugging Face models of the architectures users audit (needs transformers)."""
    import transformers as tf

    torch.manual_seed(seed)
    vit = dict(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return {
        "hf_resnet": tf.ResNetForImageClassification(
            tf.ResNetConfig(
                num_channels=3,
                embedding_size=16,
                hidden_sizes=[16, 32],
                depths=[1, 1],
                layer_type="basic",
                num_labels=3,
            )
        ).eval(),
        "hf_vit_model": tf.ViTModel(tf.ViTConfig(**vit)).eval(),
        "hf_vit_classifier": tf.ViTForImageClassification(tf.ViTConfig(**vit, num_labels=3)).eval(),
        "hf_bert": tf.BertModel(
            tf.BertConfig(
                vocab_size=50,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
                max_position_embeddings=32,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
            )
        ).eval(),
    }
