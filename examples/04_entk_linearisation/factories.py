"""The network of example 04: a ReLU MLP on 8×8 digits with a 5-way head.

audit.toml names ``factories:mlp``; model-audit builds the module and loads the safetensors weights into it.
The same architecture serves every stage (pretrained, linear probe, fine-tuned, untrained control), so the
`entk` probe computes each one's kernel the same way (dense layers: the exact factorised eNTK).
"""

from __future__ import annotations

from torch import nn


def mlp(inputs: int = 64, width: int = 256, classes: int = 5) -> nn.Sequential:
    """Two hidden ReLU layers; module ``4`` is the head that the linear probe retrains."""
    return nn.Sequential(
        nn.Linear(inputs, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )
