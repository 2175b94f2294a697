"""Generate example 04 offline: a pretrain-then-adapt experiment on scikit-learn's bundled 8×8 digits.

* **Pretraining** (the "foundation model"): an MLP learns digits 0–4 from a broad source distribution, the
  upright digits plus the same digits rotated by 30°. Its pretraining data thus covers the shift the target
  task meets later, as large pretraining corpora cover many domains.
* **Target task**: digits 5–9 (relabelled 0–4), a new task for the network, with few labels. A seeded half
  of the 5–9 digits is the fixed test set: upright in distribution (``target_test``), rotated by 30° out of
  distribution (``target_rotated``). From the other half each replicate k draws its own 25 upright examples
  per class (``target_train_k``).
* **Three ways to adapt** the pretrained network (weights saved as safetensors, one family per way):
  ``lp/…`` linear probe — a new head trained on frozen features; ``ft/…`` fine-tuning — a new head and every
  layer trained; ``pre/…`` the pretrained network itself, on which `audit run` computes the eNTK kernel
  regression (the linearised model around the pretrained weights, Campbell et al.'s surrogate of
  fine-tuning). ``init/…``: untrained networks of the same architecture, a control for what pretraining
  adds to the kernel.
* Five replicates k = 0…4, each with its own training split and seed (pretraining, head initialisation,
  minibatch order), so that the README can give the spread; a single few-shot split decides a lot out of
  distribution (the eNTK − fine-tuning OOD gap ranged from −0.05 to +0.15 over the 15 replicates of seeds 0–2).

Usage: ``python make_data.py`` (the full example) or ``python make_data.py --quick`` (the same five
replicates with shorter training: the reduced version the test runs).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from factories import mlp
from scipy.ndimage import rotate
from torch import nn

HERE = Path(__file__).resolve().parent
ANGLE = 30.0  # degrees: the distribution shift
PER_CLASS = 25  # labelled target examples per class
REPLICATES = 5
FULL = {"pretrain_epochs": 40, "probe_epochs": 200, "finetune_epochs": 60}
QUICK = {"pretrain_epochs": 20, "probe_epochs": 100, "finetune_epochs": 40}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 bundled 8×8 digits as (n, 64) float32 in [0, 1] and int64 labels (no download)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def rotated(x: np.ndarray, angle: float = ANGLE) -> np.ndarray:
    """Each 8×8 image rotated by `angle` degrees about its centre (bilinear, zeros outside), clipped to [0, 1]."""
    images = x.reshape(-1, 8, 8)
    out = np.stack([rotate(im, angle, reshape=False, order=1, mode="constant") for im in images])
    return np.clip(out, 0, 1).reshape(len(x), 64).astype(np.float32)


def split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Source (0–4, upright + rotated), the fixed target test sets and one training split per replicate."""
    x, y = digits()
    source = y < 5
    xs, ys = x[source], y[source]
    xt, yt = x[~source], y[~source] - 5
    order = np.random.default_rng(seed).permutation(len(xt))
    test, pool = order[: len(order) // 2], order[len(order) // 2 :]
    out = {
        "source": (np.concatenate([xs, rotated(xs)]), np.concatenate([ys, ys])),
        "target_test": (xt[test], yt[test]),
        "target_rotated": (rotated(xt[test]), yt[test]),
    }
    for k in range(REPLICATES):
        drawn = np.random.default_rng([seed, k]).permutation(pool)
        train = np.concatenate([drawn[yt[drawn] == c][:PER_CLASS] for c in range(5)])
        out[f"target_train_{k}"] = (xt[train], yt[train])
    return out


def fit(
    model: nn.Module, params, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int
) -> nn.Module:
    """Adam on the cross-entropy, minibatches of 32 in a seeded order; only `params` are updated."""
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 32):
            idx = perm[i : i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Share of correct argmax predictions (printed as a check; the catalog gets the probe's own numbers)."""
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def adapt(source: tuple, train: tuple, seed: int, cfg: dict) -> dict[str, nn.Module]:
    """One replicate: pretrain on the source, then linear probe and fine-tune on `train`; and the untrained net."""
    torch.manual_seed(seed)
    init = mlp()
    pre = copy.deepcopy(init)
    fit(pre, pre.parameters(), *source, cfg["pretrain_epochs"], 1e-3, seed)

    torch.manual_seed(10_000 + seed)  # the new head: the same initialisation for the probe and the fine-tune
    head = nn.Linear(pre[4].in_features, 5)
    lp = copy.deepcopy(pre)
    lp[4] = copy.deepcopy(head)
    fit(lp, lp[4].parameters(), *train, cfg["probe_epochs"], 1e-2, seed)
    ft = copy.deepcopy(pre)
    ft[4] = copy.deepcopy(head)
    fit(ft, ft.parameters(), *train, cfg["finetune_epochs"], 1e-3, seed)
    return {"pre": pre, "lp": lp, "ft": ft, "init": init.eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced version the test runs")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the test split, the training splits and the models"
    )
    args = parser.parse_args()
    cfg = QUICK if args.quick else FULL
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    data = split(args.seed)
    (HERE / "data").mkdir(exist_ok=True)
    for name, (x, y) in data.items():
        if name != "source":
            np.savez(HERE / "data" / f"{name}.npz", x=x, y=y)
    for k in range(REPLICATES):
        train = data[f"target_train_{k}"]
        models = adapt(data["source"], train, seed=args.seed * 1000 + k, cfg=cfg)
        for kind, model in models.items():
            path = HERE / "models" / kind / f"seed_{k}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({n: v.contiguous() for n, v in model.state_dict().items()}, str(path))
        scores = {
            kind: (
                accuracy(models[kind], *data["target_test"]),
                accuracy(models[kind], *data["target_rotated"]),
            )
            for kind in ("lp", "ft")
        }
        line = ", ".join(f"{kind} {a:.3f} ID / {b:.3f} OOD" for kind, (a, b) in scores.items())
        print(f"replicate {k}: {line}")
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
