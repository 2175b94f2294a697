"""Model factories of the model-audit demo project (written by `audit demo`).

audit.toml names a factory as ``module:function`` plus a weights file; the factory builds the module and
model-audit loads the weights into it (safetensors: nothing is unpickled).
"""

from torch import nn


def mlp(inputs: int = 64, width: int = 128, depth: int = 6, classes: int = 10) -> nn.Module:
    """A plain ReLU MLP: `depth` hidden Linear layers of `width`, then a Linear classifier."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)
