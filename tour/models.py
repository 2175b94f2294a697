"""Factories of the repository's own audit.toml: the digits data and a seeded MLP trained on it.

Each factory is deterministic on the CPU (seeded initialisation, minibatch order and data split; torch on
one thread while training), so a rerun builds the same network and the stored results describe it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

TRAIN_SHARE = 0.7  # of scikit-learn's 1,797 digits: 1,257 to train on, 540 held out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(
            "the repository's audit.toml uses the digits bundled with scikit-learn: pip install -e '.[demo]'"
        ) from None
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = _digits()
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(TRAIN_SHARE * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def digits(shift: str = "none") -> dict[str, np.ndarray]:
    """The held-out digits (8×8 images flattened to 64 values in [0, 1]) with their labels.

    ``shift = "rotated"``: the same digits rotated by 90° with Gaussian pixel noise (σ = 0.1) — a covariate
    shift the models never saw, for the out-of-distribution half of the CKA comparison.
    """
    _, _, x, y = _split()
    if shift == "rotated":
        x = np.rot90(x.reshape(-1, 8, 8), k=1, axes=(1, 2)).reshape(len(x), 64)
        x = np.clip(x + np.random.default_rng(1).normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    elif shift != "none":
        raise ValueError(f"shift: expected 'none' or 'rotated', got {shift!r}")
    return {"x": np.ascontiguousarray(x, dtype=np.float32), "y": y}


def digits_mlp(seed: int = 0, width: int = 64, depth: int = 3, epochs: int = 15) -> nn.Module:
    """A ReLU MLP (``depth`` hidden layers of ``width``) trained with Adam on the training digits."""
    x, y, _, _ = _split()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same floating-point sums on every machine
    try:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        size = 64
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        model = nn.Sequential(*layers, nn.Linear(size, 10))
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=order)
            for i in range(0, len(xt), 64):
                idx = perm[i : i + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
