"""The emulators of example 07, as audit.toml's factories build them (θ → log10 SMF in 14 bins).

* ``cnn`` — a 1-D convolutional emulator over the 14 stellar-mass bins: θ is lifted to a (channels × 14) map,
  refined by residual 3-tap convolutions (neighbouring bins share information, as the SMF is smooth), read out
  to one value per bin, plus a linear skip from θ.
* ``resnet`` — the toy's own MLP with a linear skip (``model_audit_probes.emulator.toy.SMFEmulator``).
* ``random_forest`` — scikit-learn's RandomForestRegressor, **exported as arrays, not pickled**: make_data.py
  fits the forest and saves every tree's node arrays (feature, threshold, children, leaf values) into a
  safetensors file; :class:`ForestEmulator` holds them as buffers and walks the trees in numpy exactly as
  scikit-learn's ``predict`` does (make_data.py checks the two agree). Loading it runs no code from the file,
  and the catalog fingerprints the trees themselves. (The alternative, refitting in the factory from the
  training data and a seed, would make the model's fingerprint blind to the forest.)
* ``exact`` — the toy's noiseless truth (no parameters): the perfect emulator, the χ² floor set by the noise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_audit_probes.emulator.toy import N_BINS, PARAMETERS, SMFEmulator, _Standardise, true_log_smf


class ConvEmulator(nn.Module):
    """θ (n, 4) → log10 φ (n, 14): lift to channels × bins, residual Conv1d blocks, 1×1 read-out, linear skip."""

    def __init__(self, channels: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.standardise = _Standardise()
        self.channels = channels
        self.lift = nn.Linear(len(PARAMETERS), channels * N_BINS)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(channels, channels, 3, padding=1),
                nn.SiLU(),
                nn.Conv1d(channels, channels, 3, padding=1),
            )
            for _ in range(blocks)
        )
        self.readout = nn.Conv1d(channels, 1, 1)
        self.linear = nn.Linear(len(PARAMETERS), N_BINS)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        z = self.standardise(theta)
        h = torch.nn.functional.silu(self.lift(z)).reshape(-1, self.channels, N_BINS)
        for block in self.blocks:
            h = h + block(torch.nn.functional.silu(h))
        return self.linear(z) + self.readout(h).squeeze(1)


class ForestEmulator(nn.Module):
    """A random forest held as padded node arrays (trees × max_nodes); prediction = mean of the trees' leaves.

    Node arrays follow scikit-learn's ``tree_``: ``left``/``right`` children (−1 at a leaf), the split
    ``feature`` and ``threshold`` (go left when x[feature] ≤ threshold, compared in float64 on float32 inputs,
    as scikit-learn does), and ``value`` (the leaf means, one per output). Unused padding nodes are leaves.
    """

    def __init__(self, trees: int, max_nodes: int, outputs: int = N_BINS) -> None:
        super().__init__()
        self.register_buffer("left", torch.full((trees, max_nodes), -1, dtype=torch.int64))
        self.register_buffer("right", torch.full((trees, max_nodes), -1, dtype=torch.int64))
        self.register_buffer("feature", torch.zeros((trees, max_nodes), dtype=torch.int64))
        self.register_buffer("threshold", torch.zeros((trees, max_nodes), dtype=torch.float64))
        self.register_buffer("value", torch.zeros((trees, max_nodes, outputs), dtype=torch.float64))

    @staticmethod
    def arrays_of(forest, max_nodes: int) -> dict[str, np.ndarray]:
        """The padded node arrays of a fitted sklearn forest (the state dict make_data.py saves)."""
        trees = forest.estimators_
        out = {
            "left": np.full((len(trees), max_nodes), -1, dtype=np.int64),
            "right": np.full((len(trees), max_nodes), -1, dtype=np.int64),
            "feature": np.zeros((len(trees), max_nodes), dtype=np.int64),
            "threshold": np.zeros((len(trees), max_nodes), dtype=np.float64),
            "value": np.zeros((len(trees), max_nodes, forest.n_outputs_), dtype=np.float64),
        }
        for t, est in enumerate(trees):
            tree = est.tree_
            k = tree.node_count
            if k > max_nodes:
                raise ValueError(f"tree {t} has {k} nodes > max_nodes = {max_nodes}: cap max_leaf_nodes")
            out["left"][t, :k] = tree.children_left
            out["right"][t, :k] = tree.children_right
            out["feature"][t, :k] = np.maximum(tree.feature, 0)  # leaves carry −2; never read
            out["threshold"][t, :k] = tree.threshold
            out["value"][t, :k] = tree.value[:, :, 0]
        return out

    def predict_numpy(self, x: np.ndarray) -> np.ndarray:
        """Walk every tree for every row at once (one step per level), then average the leaves."""
        x = np.asarray(x, dtype=np.float32).astype(np.float64)
        left, right = self.left.cpu().numpy(), self.right.cpu().numpy()
        feature, threshold = self.feature.cpu().numpy(), self.threshold.cpu().numpy()
        trees = np.arange(left.shape[0])[:, None]
        rows = np.arange(x.shape[0])[None, :]
        node = np.zeros((left.shape[0], x.shape[0]), dtype=np.int64)
        while True:
            child_l = left[trees, node]
            inner = child_l >= 0
            if not inner.any():
                break
            go_left = x[rows, feature[trees, node]] <= threshold[trees, node]
            node = np.where(inner, np.where(go_left, child_l, right[trees, node]), node)
        return self.value.cpu().numpy()[trees, node].mean(axis=0)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        pred = self.predict_numpy(theta.detach().cpu().numpy())
        return torch.as_tensor(pred, dtype=torch.float32, device=theta.device)


class Exact(nn.Module):
    """The toy's noiseless truth as an 'emulator': the best any emulator can do against noisy boxes."""

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        pred = true_log_smf(theta.detach().cpu().numpy())
        return torch.as_tensor(pred, dtype=torch.float32, device=theta.device)


def cnn(channels: int = 16, blocks: int = 2) -> nn.Module:
    return ConvEmulator(channels, blocks)


def resnet(hidden: int = 64, depth: int = 2) -> nn.Module:
    return SMFEmulator(hidden, depth)


def random_forest(trees: int = 100, max_nodes: int = 2047) -> nn.Module:
    return ForestEmulator(trees, max_nodes)


def exact() -> nn.Module:
    return Exact()
