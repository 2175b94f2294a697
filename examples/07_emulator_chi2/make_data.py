"""Example 07: simulate the toy boxes, fit a random forest, train a CNN and a ResNet-style MLP emulator.

The "simulation" is ``model_audit_probes.emulator.toy``: four galaxy–halo parameters θ → the stellar mass
function (SMF) in 14 bins, measured in each box with correlated noise of 0.02–0.12 dex. Written here:

    data/train_boxes.npz     2000 noisy boxes (seed 1000, the toy's training seed): what every emulator learns from
    data/test_boxes.npz      1000 fresh noisy boxes (seed 0), with the noiseless ``truth`` beside the ``targets``
    data/realisations.npy    400 boxes at the fiducial θ (seed 1): the covariance is estimated from them
    models/random_forest.safetensors   the forest's node arrays (see factories.py: exported, never pickled)
    models/cnn.safetensors, models/resnet.safetensors   the two neural emulators

The networks are trained as the toy trains its own (full-batch Adam, cosine schedule, MSE in log10 φ, seeded).

    python make_data.py            # 3000 epochs each (about a minute on 2 CPU cores)
    python make_data.py --quick    # 600 epochs each, for the test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from model_audit_probes.emulator.toy import smf_boxes, smf_realisations

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from factories import ForestEmulator, cnn, resnet  # noqa: E402

N_TRAIN = 2000
TREES, MAX_LEAVES = 100, 1024  # max_nodes = 2·leaves − 1 = 2047 (audit.toml's kwargs)


def fit_network(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-2
) -> torch.nn.Module:
    """The toy's recipe (toy.smf_emulator): full-batch Adam with a cosine schedule on the MSE in log10 φ."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    for _ in range(epochs):
        opt.zero_grad()
        torch.mean((model(xt) - yt) ** 2).backward()
        opt.step()
        sched.step()
    return model.eval()


def save(model: torch.nn.Module, name: str) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(HERE / "models" / f"{name}.safetensors"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="600 training epochs per network (for the test)")
    ap.add_argument("--epochs", type=int, default=3000)
    args = ap.parse_args(argv)
    epochs = 600 if args.quick else args.epochs
    (HERE / "data").mkdir(exist_ok=True)
    (HERE / "models").mkdir(exist_ok=True)

    train = smf_boxes(N_TRAIN, seed=1000)
    np.savez(HERE / "data" / "train_boxes.npz", **train)
    np.savez(HERE / "data" / "test_boxes.npz", **smf_boxes(1000, seed=0))
    np.save(HERE / "data" / "realisations.npy", smf_realisations(400, seed=1)["inputs"])
    x, y = train["inputs"], train["targets"]

    from sklearn.ensemble import RandomForestRegressor

    t0 = time.perf_counter()
    forest = RandomForestRegressor(n_estimators=TREES, max_leaf_nodes=MAX_LEAVES, random_state=0, n_jobs=1)
    forest.fit(x, y)
    module = ForestEmulator(TREES, 2 * MAX_LEAVES - 1)
    module.load_state_dict(
        {k: torch.from_numpy(v) for k, v in ForestEmulator.arrays_of(forest, 2 * MAX_LEAVES - 1).items()}
    )
    probe = smf_boxes(500, seed=7)["inputs"]
    gap = float(np.abs(module.predict_numpy(probe) - forest.predict(probe)).max())
    if gap > 1e-9:
        raise SystemExit(f"the exported forest disagrees with scikit-learn's predict by {gap:.2e}")
    save(module, "random_forest")
    took = time.perf_counter() - t0
    print(f"random_forest: {TREES} trees fitted and exported in {took:.1f} s (max |Δ| vs sklearn {gap:.1e})")

    for name, factory in (("cnn", cnn), ("resnet", resnet)):
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = fit_network(factory(), x, y, epochs)
        save(model, name)
        with torch.no_grad():
            mse = float(torch.mean((model(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2))
        n_params = sum(p.numel() for p in model.parameters())
        took = time.perf_counter() - t0
        print(
            f"{name}: {n_params:,} parameters, {epochs} epochs in {took:.1f} s (training MSE {mse:.2e} dex²)"
        )
    print("wrote data/*.npz, data/realisations.npy and models/*.safetensors")


if __name__ == "__main__":
    main()
