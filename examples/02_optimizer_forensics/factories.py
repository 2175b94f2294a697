"""The student network of example 02, as audit.toml's ``factories:student`` builds it.

It is the two-layer network of ``model_audit_probes.entk.forensics`` (f(x) = vᵀ tanh(Wx)/√h, only W trained)
plus one frozen parameter, ``update``, that holds ΔW = W − W0, the change training made to W. The network
never uses it; it is there because the `entk` probe measures the spectrum of *every* weight matrix of a model
and knows nothing of the initialisation. Carrying ΔW in the checkpoint lets one `audit run` store both
statistics Wang et al. read the optimizer from: the spectrum of W (spikes past the Marchenko–Pastur edge, tail
exponent) and the rank of the update (``w[update].stable_rank``: ≈ 1.5 for GD, tens for Adam).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from model_audit_probes.entk.forensics import TwoLayer


class Student(TwoLayer):
    """TwoLayer with ΔW attached as a frozen, unused parameter (frozen: it adds nothing to the eNTK)."""

    def __init__(self, d: int, h: int, activation: str = "tanh") -> None:
        super().__init__(d, h, seed=0, activation=activation)  # the weights file replaces this init
        self.update = nn.Parameter(torch.zeros(h, d), requires_grad=False)


SIZES = Path(__file__).resolve().parent / "models" / "sizes.json"


def student(activation: str = "tanh") -> nn.Module:
    """Factory named in audit.toml. The sizes d and h are read from models/sizes.json, written by make_data.py
    beside the weights, so that one audit.toml serves the full run and the reduced ``--quick`` one."""
    sizes = json.loads(SIZES.read_text())
    return Student(int(sizes["d"]), int(sizes["h"]), activation=activation)
