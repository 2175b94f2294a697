"""The error of the eNTK's `precision` settings against an independent float64 reference.

The model and inputs are bench_entk.py's CNN (982 794 parameters, 98 % in convolutions) and seeded
``torch.randn`` inputs. The reference is ``empirical_ntk(method="jacobian", precision="float64")``: every
parameter through ``vmap(jacrev)`` per-sample Jacobians, contracted blockwise in float64 — a route that
shares nothing with the default one but the model. Measured: ``method="auto"`` (the default route) with
``precision="float32"`` and ``"float64"``; printed: max |K − K_ref| / max |K_ref| and the seconds of each.

    python benchmarks/entk_precision.py                       # n = 256 on the CPU: ~10 min on 1 core
    python benchmarks/entk_precision.py --n 64 --device cuda  # on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="examples (the kernel is n×n)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads on the CPU")
    parser.add_argument("--budget-mib", type=int, default=4096, help="memory budget of the reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    from bench_entk import build_inputs, build_model, load_kernels

    kernels = load_kernels()
    device = torch.device(args.device)
    model = build_model("cnn", args.seed).to(device)
    x = build_inputs("cnn", args.n, args.seed).to(device)

    def timed(**kw):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        k = kernels.empirical_ntk(model, x, output="trace", **kw)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return k, time.perf_counter() - t

    ref, t_ref = timed(method="jacobian", precision="float64", memory_budget=args.budget_mib << 20)
    scale = float(ref.abs().max())
    print(f"CNN trace eNTK, n = {args.n}, {device}, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"reference: method=jacobian, float64: {t_ref:.1f} s, max |K| = {scale:.4g}")
    print(f"{'precision':<10} {'seconds':>8} {'max rel. error':>15}")
    for precision in ("float32", "float64"):
        k, t = timed(precision=precision)
        err = float((k.double() - ref).abs().max()) / scale
        print(f"{precision:<10} {t:>8.2f} {err:>15.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
