"""The CNN of example 01: a small convolutional regressor of (Ω_m, σ_8) from a 32×32 map.

audit.toml names ``factories:cnn``; model-audit builds the module and loads the safetensors weights into it.
Each convolution and its ReLU is one named module (``conv1`` … ``conv8``) so that the `cka` probe hooks the
post-activation output of every stage (``layers = ["conv?", "fc1", "output"]``): the representations
Gondhalekar et al. compare layer by layer.
"""

from __future__ import annotations

import torch
from torch import nn

# The network predicts standardised parameters and maps them back here, so the stored outputs are (Ω_m, σ_8)
# in physical units and the `cka` probe's R² is computed on what the README quotes. Centres and widths are
# those of the uniform priors (Ω_m ∈ [0.1, 0.5], σ_8 ∈ [0.6, 1.0]): std of U(a, b) = (b − a)/√12.
PARAM_CENTRE = (0.3, 0.8)
PARAM_SCALE = (0.4 / 12**0.5, 0.4 / 12**0.5)


def _conv(c_in: int, c_out: int) -> nn.Sequential:
    """3×3 convolution with circular padding (the maps are periodic), then ReLU: one hooked stage."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, padding_mode="circular"), nn.ReLU())


class FieldCNN(nn.Module):
    """Eight conv stages in four resolutions (32², 16², 8², 4²; average pooling between), two dense layers."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.conv1, self.conv2 = _conv(1, w), _conv(w, w)
        self.conv3, self.conv4 = _conv(w, 2 * w), _conv(2 * w, 2 * w)
        self.conv5, self.conv6 = _conv(2 * w, 4 * w), _conv(4 * w, 4 * w)
        self.conv7, self.conv8 = _conv(4 * w, 4 * w), _conv(4 * w, 4 * w)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 64), nn.ReLU())
        self.fc2 = nn.Linear(64, 2)
        self.register_buffer("centre", torch.tensor(PARAM_CENTRE), persistent=False)
        self.register_buffer("scale", torch.tensor(PARAM_SCALE), persistent=False)
        # He initialisation: with PyTorch's default (variance-shrinking) init the signal of this ReLU stack
        # fades, and a short training run on some seeds stays stuck at predicting the mean (R² ≈ 0).
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output: (Ω_m, σ_8) in units of their prior's standard deviation."""
        h = self.pool(self.conv2(self.conv1(x)))  # 16×16
        h = self.pool(self.conv4(self.conv3(h)))  # 8×8
        h = self.pool(self.conv6(self.conv5(h)))  # 4×4
        h = self.conv8(self.conv7(h))
        return self.fc2(self.fc1(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardised(x) * self.scale + self.centre


def cnn(width: int = 16) -> nn.Module:
    """Factory named in audit.toml."""
    return FieldCNN(width=width)
