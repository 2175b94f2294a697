"""The two classifiers of example 03, as audit.toml's ``factories:mlp`` and ``factories:cnn`` build them.

Both read an 8×8 digit as a flat row of 64 pixels in [0, 1] (the dataset files hold one layout for both) and
output two logits (even, odd). They are small on purpose: the `entk` probe computes the exact trace eNTK over
every parameter, n × n for all train and test digits, and the kGLM surrogate fits on it.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Two hidden ReLU layers: the "MLP on MNIST2" of Engel et al., scaled to 8×8 digits."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))


class CNN(nn.Module):
    """Two 3×3 convolutions (zero padding, so the probe's Conv2d route applies), average pooling, a dense head."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        c = channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.pool = nn.AvgPool2d(2)  # 8×8 → 4×4
        self.fc = nn.Linear(2 * c * 16, 64)
        self.out = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.reshape(x.shape[0], 1, 8, 8)))
        h = self.pool(torch.relu(self.conv2(h)))
        return self.out(torch.relu(self.fc(h.flatten(1))))


def mlp(width: int = 128) -> nn.Module:
    """Factory named in audit.toml."""
    return MLP(width)


def cnn(channels: int = 16) -> nn.Module:
    """Factory named in audit.toml."""
    return CNN(channels)
