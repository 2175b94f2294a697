"""Example 03: train a small MLP and a small CNN on binary digits (even vs odd) and save data and weights.

scikit-learn's bundled 8×8 digits (1,797 images, nothing downloaded), labelled 0 = even digit, 1 = odd digit:
a binary task like Engel et al.'s MNIST2, harder than 0-vs-1 (which any model solves perfectly, leaving no
mistakes to compare). A seeded 70/30 split gives ``data/train.npz`` and ``data/test.npz``; each network is
trained with Adam on the training split from three seeds and saved as ``models/<name>/seed_<k>.safetensors``
(a family per architecture: the spread of τ over seeds says how much one number means).

    python make_data.py            # all 1,797 digits, seeds 0-2 (about 15 s)
    python make_data.py --quick    # seed 0 only, for the test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from factories import cnn, mlp  # noqa: E402

MODELS = {"mlp": mlp, "cnn": cnn}


def digits_even_odd(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1] (float32), label = digit parity (int64)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = (d.target % 2).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.7 * len(x))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def train(name: str, x: np.ndarray, y: np.ndarray, seed: int, epochs: int) -> torch.nn.Module:
    """Adam (lr 1e-3), minibatches of 32, cross-entropy; seeded init and order."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="one network per architecture (seed 0), for the test"
    )
    ap.add_argument("--seeds", type=int, default=3, help="networks per architecture (seeds 0, 1, …)")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args(argv)
    xtr, ytr, xte, yte = digits_even_odd(seed=0)
    seeds = range(1 if args.quick else args.seeds)
    (HERE / "data").mkdir(exist_ok=True)
    np.savez(HERE / "data" / "train.npz", x=xtr, y=ytr)
    np.savez(HERE / "data" / "test.npz", x=xte, y=yte)
    for name in MODELS:
        folder = HERE / "models" / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.safetensors"):  # a previous run with more seeds must not be mixed in
            old.unlink()
        for seed in seeds:
            t0 = time.perf_counter()
            model = train(name, xtr, ytr, seed, args.epochs)
            with torch.no_grad():
                acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(folder / f"seed_{seed}.safetensors"))
            n_params = sum(p.numel() for p in model.parameters())
            print(
                f"{name}/seed_{seed}: {n_params:,} parameters, trained in {time.perf_counter() - t0:.1f} s, "
                f"test accuracy {acc:.3f}"
            )
    print(
        f"wrote data/train.npz ({len(xtr)} digits), data/test.npz ({len(xte)}) and models/*/seed_*.safetensors"
    )


if __name__ == "__main__":
    main()
