"""The classifier of example 05, as audit.toml's ``factories:mlp`` builds it: the seed-ensemble recipe of
`audit demo` (a ReLU MLP on the 64 pixels of an 8×8 digit, ten logits)."""

from __future__ import annotations

from torch import nn


def mlp(inputs: int = 64, width: int = 64, depth: int = 2, classes: int = 10) -> nn.Module:
    """`depth` hidden Linear+ReLU layers of `width`, then a Linear classifier (the demo's ``mlp``)."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)
