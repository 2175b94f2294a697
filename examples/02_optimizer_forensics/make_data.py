"""Example 02: train the two-layer student of Wang et al. four ways and save the four checkpoints.

The teacher, the student, the optimizers and their step sizes are those of ``python forensics.py``
(``model_audit_probes.entk.forensics``): one GLM teacher y = tanh(x·β) + τ(‖x‖²/d − 1) + ε, one initialisation
W0, then GD, small-step SGD, large-step SGD and Adam for the same number of steps. Each trained student is saved
as ``models/optimizer/<name>.safetensors`` (W, the fixed read-out, and ΔW = W − W0 for the spectrum of the
update; see factories.py) and the training set as ``data/train.npz``, so that ``audit run`` (the `entk` probe)
measures every spectrum from the checkpoints alone, as one would for a network found in the wild.

    python make_data.py            # d = h = n = 1000, 600 steps (about a minute on 2 CPU cores)
    python make_data.py --quick    # d = h = n = 400 (the size of `python forensics.py`), for the test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from model_audit_probes.entk.forensics import OPTIMIZERS, TwoLayer, teacher_student_data, train

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="d = h = n = 400: the reduced version for the test")
    ap.add_argument(
        "--seed", type=int, default=0, help="seed of the data (the init uses seed + 1, the batches seed + 2)"
    )
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args(argv)
    size = 400 if args.quick else 1000
    d = h = n = size

    (HERE / "data").mkdir(exist_ok=True)
    out = HERE / "models" / "optimizer"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):  # a previous run of the other size must not be mixed in
        old.unlink()

    # exactly run_experiment's recipe (forensics.py), keeping the checkpoints instead of only the statistics
    x, y, beta = teacher_student_data(n, d, seed=args.seed)
    np.savez(HERE / "data" / "train.npz", x=x.numpy(), y=y.numpy(), beta=beta.numpy())
    init = TwoLayer(d, h, seed=args.seed + 1)
    w0 = init.hidden.weight.detach().clone()
    (HERE / "models" / "sizes.json").write_text(
        json.dumps({"d": d, "h": h, "n": n, "steps": args.steps, "seed": args.seed}) + "\n"
    )
    for name in OPTIMIZERS:
        t0 = time.perf_counter()
        trained = train(init, x, y, name, args.steps, seed=args.seed + 2)
        state = {k: v.detach().contiguous() for k, v in trained.state_dict().items()}
        state["update"] = (state["hidden.weight"] - w0).contiguous()
        save_file(state, str(out / f"{name}.safetensors"))
        with torch.no_grad():
            loss = 0.5 * float(((trained(x) - y) ** 2).mean())
        print(f"{name:10s} trained in {time.perf_counter() - t0:5.1f} s (training loss {loss:.2e})")
    print(f"wrote data/train.npz and models/optimizer/*.safetensors (d = h = n = {size}, {args.steps} steps)")


if __name__ == "__main__":
    main()
