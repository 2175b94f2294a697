"""Example 05: a seed ensemble of one digits classifier, held-out seeds, and candidates that differ on purpose.

Everything is `audit demo`'s recipe (``audit.face.demo``: scikit-learn's bundled 8×8 digits, the same seeded 70/30
split, the same minibatch training loop), scaled up: 20 reference seeds instead of 10, ten held-out seeds instead
of one, and five candidates that each change one thing — the optimizer (SGD), the length of training (3 epochs,
or 40), the labels (30 % replaced at random), the width (256 instead of 64). Weights are saved as safetensors:

    models/seed/seed_<k>.safetensors       the reference ensemble (seeds 100–119)
    models/heldout/seed_<k>.safetensors    the same recipe, seeds never in the reference (200–209)
    models/cand_<change>.safetensors       one deliberate change each

    python make_data.py            # 20 + 10 + 5 networks (about 10 s on 2 CPU cores)
    python make_data.py --quick    # 8 reference seeds, 3 held-out seeds, the 5 candidates (for the test)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from audit.face.demo import _digits, _split, _train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from factories import mlp  # noqa: E402

RECIPE = {"width": 64, "depth": 2, "epochs": 20, "optimizer": "adam", "label_noise": 0.0}
CANDIDATES = {
    "cand_sgd": {"seed": 301, "optimizer": "sgd"},
    "cand_short": {"seed": 302, "epochs": 3},
    "cand_long": {"seed": 303, "epochs": 40},
    "cand_noisy": {"seed": 304, "label_noise": 0.3},
    "cand_wide": {"seed": 305, "width": 256},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 reference and 3 held-out seeds (for the test)")
    args = ap.parse_args(argv)
    n_ref, n_heldout = (8, 3) if args.quick else (20, 10)

    x, y = _digits()
    xtr, ytr, xte, yte = _split(x, y)
    (HERE / "data").mkdir(exist_ok=True)
    np.savez(HERE / "data" / "digits_train.npz", x=xtr, y=ytr)
    np.savez(HERE / "data" / "digits_test.npz", x=xte, y=yte)

    jobs: dict[str, dict] = {}
    for folder, seeds in (("seed", range(100, 100 + n_ref)), ("heldout", range(200, 200 + n_heldout))):
        (HERE / "models" / folder).mkdir(parents=True, exist_ok=True)
        for old in (HERE / "models" / folder).glob("*.safetensors"):  # no leftovers of a bigger run
            old.unlink()
        jobs.update({f"{folder}/seed_{s}": {**RECIPE, "seed": s} for s in seeds})
    jobs.update({name: {**RECIPE, **change} for name, change in CANDIDATES.items()})

    t_all = time.perf_counter()
    for name, recipe in jobs.items():
        t0 = time.perf_counter()
        model = _train(mlp, xtr, ytr, **recipe)
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(HERE / "models" / f"{name}.safetensors"))
        print(f"{name:20s} trained in {time.perf_counter() - t0:4.1f} s, test accuracy {acc:.3f}")
    print(f"{len(jobs)} networks in {time.perf_counter() - t_all:.0f} s; data in data/, weights in models/")


if __name__ == "__main__":
    main()
